"""A ranged run in which some partitions fail: the others are delivered and recorded, Dagster
shows exactly the failed ones as failed, the failure sensor records and posts a row per failed
partition, and a retry of just those exports just those.

Ten customer-months (customers 1-5 x March, April 2025) of a SQL dataset that divides by a
column which is 0 for customers 2 and 4 in March: a permanent error for those two only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from export_pipeline.dagster_private import ranged_run_tags
from export_pipeline.defs.alerts import export_failure_sensor
from export_pipeline.defs.checks import check_names
from export_pipeline.defs.followup import build_partial_failure_sensor
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.io_managers.exports import FAILED_PARTITIONS
from export_pipeline.io_managers.metadata import export_asset_key, latest_records
from export_pipeline.resources.alerts import AlertWebhookResource
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.spec import Compression, CustomersSpec, DatasetSpec, ExportSpec, Format
from export_pipeline_tests.defs.run_helpers import failure_context
from export_pipeline_tests.defs.test_alerts import SECRET, receiver
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
)
from export_pipeline_tests.helpers import FILE_METADATA_KEYS

ITEMS = DatasetSpec(
    name="items",
    customer_column="customer_id",
    format=Format.PARQUET,
    compression=Compression.ZSTD,
    sql="SELECT id, customer_id, at, amount / divisor AS share FROM items "
    "WHERE customer_id = %(customer)s AND at >= %(month_start)s AND at < %(month_end)s",
)
SPEC = ExportSpec(
    customers=CustomersSpec("id", sql="SELECT 1 AS id"),
    months_start=date(2025, 1, 1),
    datasets={"items": ITEMS},
)
ITEMS_KEY = export_asset_key("items")
CHECKS = check_names(ITEMS)
ALL = [f"{c}|{m}" for c, m in itertools.product("12345", ["2025-03-01", "2025-04-01"])]
FAILING = ["2|2025-03-01", "4|2025-03-01"]
DELIVERED = [k for k in ALL if k not in FAILING]


@pytest.fixture
def source(scratch_dsn: str) -> str:
    """`items`: a row a week per customer 1-5 in March and April 2025; the divisor is 0 for
    customers 2 and 4 in March. The same database holds the exporter's state tables."""
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id serial, customer_id int, at date, amount int, divisor int)"
        )
        conn.execute(
            "INSERT INTO items (customer_id, at, amount, divisor) "
            "SELECT c, d, 10 * c, CASE WHEN c IN (2, 4) AND d < '2025-04-01' THEN 0 ELSE 1 END "
            "FROM generate_series(1, 5) AS c, "
            "generate_series('2025-03-01'::date, '2025-04-30', '7 days') AS d"
        )
    return scratch_dsn


def _failure_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT run_id, job_name, partition_key, customer, month, dataset, datasets, error, "
            "alert_status FROM export_failures ORDER BY partition_key"
        ).fetchall()


def test_two_of_ten_fail_the_rest_are_delivered_and_a_retry_exports_only_the_two(
    source: str, tmp_path: Path
) -> None:
    resources = export_resources(source, local_storage(tmp_path), state_dsn=source)
    defs = export_definitions(SPEC, resources)
    pdef = build_export_partitions_def(SPEC.months_start)
    with fresh_instance() as instance, receiver([]) as hook:
        add_customers(instance, ["1", "2", "3", "4", "5"])
        result = materialize(instance, defs, (ALL[0], ALL[-1]))
        assert not result.success
        run = result.dagster_run

        # The 8 are delivered and materialized, each with its own metadata.
        records = latest_records(instance, ITEMS_KEY, ALL)
        assert sorted(records) == DELIVERED
        for key, record in records.items():
            customer, month = key.split("|")
            path = tmp_path / f"exports/{customer}/{month[:7]}/items.parquet"
            assert record.run_id == run.run_id
            assert record.metadata["uri"] == str(path)
            assert record.metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert record.metadata["dagster/row_count"] > 0
            # the same record as a run without failures
            assert set(record.metadata) == FILE_METADATA_KEYS
        assert not (tmp_path / "exports/2/2025-03").exists()

        # Dagster's partition status: exactly the 2 are failed.
        status = instance.get_status_by_partition(ITEMS_KEY, ALL, pdef)
        assert status is not None
        assert {k for k, s in status.items() if s == dg.AssetPartitionStatus.FAILED} == set(FAILING)
        assert {k for k, s in status.items() if s == dg.AssetPartitionStatus.MATERIALIZED} == set(
            DELIVERED
        )

        # The step's failure names them, one row each.
        [failure] = result.get_step_failure_events()
        assert failure.step_key == "exports__items"
        user = failure.step_failure_data.user_failure_data
        assert user is not None and user.description is not None
        assert user.description.startswith("exports/items: 2 of 10 partitions failed, 8 delivered")
        rows = user.metadata[FAILED_PARTITIONS].value
        assert isinstance(rows, list)
        assert [
            (r["partition"], r["customer"], r["month"], r["dataset"], r["transient"], r["attempts"])
            for r in rows
        ] == [(key, key[0], "2025-03", "items", False, 1) for key in FAILING]
        assert all("division by zero" in r["error"] for r in rows)
        # Checks and manifest come after the exports: Dagster skips them in a failed run.
        assert result.get_asset_check_evaluations() == []
        assert instance.get_materialized_partitions(MANIFEST_ASSET_KEY) == set()

        # The failure sensor: a row per failed partition, and the webhook's `failures`.
        alerts = AlertWebhookResource(url=hook.url, secret=SECRET)
        sensor_resources = {"state": ExportStateResource(dsn=source), "alerts": alerts}
        export_failure_sensor(
            failure_context(instance, run, "export_failure_sensor", sensor_resources)
        )
        stored = _failure_rows(source)
        assert [row[:7] for row in stored] == [
            (run.run_id, "exports_job", key, key[0], "2025-03", "items", ["items"])
            for key in FAILING
        ]
        assert all("division by zero" in row[7] and row[8] == "sent" for row in stored)
        [(_, body)] = hook.received
        payload = json.loads(body)
        assert payload["run_id"] == run.run_id and payload["error"] == "2 exports failed"
        assert [
            (f["partition_key"], f["customer"], f["month"], f["dataset"])
            for f in payload["failures"]
        ] == [(key, key[0], "2025-03", "items") for key in FAILING]
        assert all("division by zero" in f["error"] for f in payload["failures"])

        # The follow-up: checks and manifests of the customer-months delivered completely,
        # ranged over customers contiguous in partition order, one month each.
        followup = build_partial_failure_sensor(SPEC, pdef)
        requests = followup(failure_context(instance, run, "partial_failure_sensor", {}))
        assert isinstance(requests, list)
        ranges = [(r.partition_key_range.start, r.partition_key_range.end) for r in requests]
        assert ranges == [
            ("1|2025-03-01", "1|2025-03-01"),
            ("3|2025-03-01", "3|2025-03-01"),
            ("5|2025-03-01", "5|2025-03-01"),
            ("1|2025-04-01", "5|2025-04-01"),
        ]
        assert all(r.asset_selection == [MANIFEST_ASSET_KEY] for r in requests)
        assert {k.name for r in requests for k in r.asset_check_keys or []} == set(CHECKS)
        assert len({r.run_key for r in requests}) == len(requests)
        job = dg.define_asset_job(
            "followup",
            selection=dg.AssetSelection.assets(MANIFEST_ASSET_KEY)
            | dg.AssetSelection.checks(*requests[0].asset_check_keys or []),
        )
        followup_defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
        for request in requests:
            done = followup_defs.resolve_job_def("followup").execute_in_process(
                instance=instance, tags=dict(request.tags)
            )
            assert done.success
            assert not done.get_asset_materialization_events() or all(
                e.asset_key == MANIFEST_ASSET_KEY for e in done.get_asset_materialization_events()
            )
        assert instance.get_materialized_partitions(MANIFEST_ASSET_KEY) == set(DELIVERED)
        evaluated = {
            (e.partition, e.check_name)
            for r in instance.get_runs(dg.RunsFilter(job_name="followup"))
            for e in (
                entry.dagster_event.event_specific_data
                for entry in instance.all_logs(
                    r.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
                )
                if entry.dagster_event is not None
            )
        }
        assert evaluated == {(key, name) for key in DELIVERED for name in CHECKS}

        # Fixed at the source; a run per failed partition exports exactly those two.
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("UPDATE items SET divisor = 1")
        before = {r.storage_id for r in instance.fetch_materializations(ITEMS_KEY, 100).records}
        retries = [materialize(instance, defs, key) for key in FAILING]
        assert all(r.success for r in retries)
        after = instance.fetch_materializations(ITEMS_KEY, 100).records
        new = [r for r in after if r.storage_id not in before]
        assert sorted((r.partition_key, r.run_id) for r in new) == [
            (key, r.run_id) for key, r in zip(FAILING, retries, strict=True)
        ]
        status = instance.get_status_by_partition(ITEMS_KEY, ALL, pdef)
        assert status == {key: dg.AssetPartitionStatus.MATERIALIZED for key in ALL}
        # ... and their manifests, which had none.
        assert instance.get_materialized_partitions(MANIFEST_ASSET_KEY) == set(ALL)


def reexecutable_job() -> dg.JobDefinition:
    """`exports_job` of SPEC on the source and storage named by the environment (a
    reconstructable job, for `dg.execute_job` re-executions)."""
    resources = export_resources(
        os.environ["PARTIAL_FAILURE_SOURCE"],
        local_storage(os.environ["PARTIAL_FAILURE_STORAGE"]),
    )
    defs = export_definitions(SPEC, resources, checks=False, manifest=False)
    return defs.resolve_job_def("exports_job")


def test_reexecution_from_failure_exports_only_the_failed_partitions(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's *Re-execute from failure* of a ranged run: the new run has the same range; it
    exports only the partitions its run group did not deliver, and records the others with
    what they recorded then."""
    monkeypatch.setenv("PARTIAL_FAILURE_SOURCE", source)
    monkeypatch.setenv("PARTIAL_FAILURE_STORAGE", str(tmp_path))
    job = dg.reconstructable(reexecutable_job)
    home = tmp_path / "home"
    home.mkdir()
    with fresh_instance(temp_dir=str(home)) as instance:
        add_customers(instance, ["1", "2", "3", "4", "5"])
        tags = ranged_run_tags(ALL[0], ALL[-1])
        with dg.execute_job(job, instance, tags=tags) as first:
            assert not first.success
        parent = first.run_id
        delivered = latest_records(instance, ITEMS_KEY, ALL)
        assert sorted(delivered) == DELIVERED
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute("UPDATE items SET divisor = 1")
        options = dg.ReexecutionOptions.from_failure(parent, instance)
        # The UI re-executes with the parent's tags (its range); execute_job takes them as given.
        with dg.execute_job(job, instance, reexecution_options=options, tags=tags) as again:
            assert again.success
            rerun = again.run_id
        assert instance.get_run_by_id(rerun).parent_run_id == parent  # type: ignore[union-attr]
        exported = [
            r.partition_key
            for r in instance.fetch_materializations(ITEMS_KEY, 100).records
            if r.run_id == rerun
        ]
        # Every partition of the range is materialized by the re-execution...
        assert sorted(exported) == ALL
        latest = latest_records(instance, ITEMS_KEY, ALL)
        # ... but only the two that failed were exported again: the other eight record the
        # very files the first run delivered.
        for key in DELIVERED:
            assert latest[key].metadata["sha256"] == delivered[key].metadata["sha256"]
            assert latest[key].metadata["snapshot_at"] == delivered[key].metadata["snapshot_at"]
        for key in FAILING:
            customer, month = key.split("|")
            path = tmp_path / f"exports/{customer}/{month[:7]}/items.parquet"
            assert latest[key].metadata["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        logs = [
            e.user_message
            for e in instance.all_logs(rerun)
            if "delivered by an earlier run of this run group" in e.user_message
        ]
        assert logs and "8 of 10 partitions" in logs[0]
