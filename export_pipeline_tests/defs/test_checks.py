"""The export checks in Dagster: after a materialization in the same run, alone for a
partition, and against files changed behind the project's back."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import psycopg
import pytest

from export_pipeline.dagster_private import ranged_run_tags
from export_pipeline.defs.checks import (
    FILE_PRESENT,
    NOT_EMPTY,
    ROW_COUNT_CHECK,
    SCHEMA,
    export_checks_job,
)
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.partitions import PARTITION_TAG
from export_pipeline.resources.storage import ExportStorageResource
from export_pipeline.spec import Compression, DatasetSpec, ExportSpec, Format
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
    recorded,
    s3_storage,
)
from export_pipeline_tests.sigv4_proxy import Faults

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "4|2025-05-01"
ALL_CHECKS = {FILE_PRESENT, ROW_COUNT_CHECK, NOT_EMPTY, SCHEMA}
TEXT_CHECKS = ALL_CHECKS - {ROW_COUNT_CHECK}  # a text file's rows are not counted


class Exports:
    """One dataset's asset and checks on a test instance, with real source and storage."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        spec: ExportSpec,
        dataset: DatasetSpec,
        dsn: str,
        storage: ExportStorageResource,
    ) -> None:
        self.instance = instance
        self.dataset = dataset.name
        one = dataclasses.replace(spec, datasets={dataset.name: dataset})
        self.defs = dg.Definitions.merge(
            export_definitions(one, export_resources(dsn, storage), manifest=False),
            dg.Definitions(jobs=[export_checks_job]),
        )

    def materialize(self, key: str) -> tuple[dict[str, Any], dict[str, dg.AssetCheckEvaluation]]:
        """Materialize (the asset and, as the UI does, its checks): metadata and check results."""
        result = materialize(self.instance, self.defs, key, raise_on_error=True)
        return recorded(self.instance, self.dataset, key) or {}, _by_name(result)

    def check(self, key: str | tuple[str, str]) -> dg.ExecuteInProcessResult:
        """The checks alone, for one partition or a range, tagged as such runs are."""
        tags = ranged_run_tags(*key) if isinstance(key, tuple) else {PARTITION_TAG: key}
        result = self.defs.resolve_job_def(export_checks_job.name).execute_in_process(
            instance=self.instance, tags=tags
        )
        assert result.success  # failed checks never fail the run
        assert result.get_asset_materialization_events() == []
        return result

    def check_one(self, key: str) -> dict[str, dg.AssetCheckEvaluation]:
        return _by_name(self.check(key))


def _by_name(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with fresh_instance() as instance:
        add_customers(instance, ["4", "7"])
        yield instance


def _assert_all_pass(
    checks: dict[str, dg.AssetCheckEvaluation], key: str, names: set[str] = ALL_CHECKS
) -> None:
    assert set(checks) == names
    for name, evaluation in checks.items():
        assert evaluation.passed, f"{name}: {evaluation.description}"
        assert evaluation.partition == key


def test_checks_pass_after_an_s3_export_and_fail_when_it_is_truncated(
    instance: dg.DagsterInstance,
    demo_spec: ExportSpec,
    demo_dsn: str,
    s3_endpoint: str,
    bucket: str,
) -> None:
    storage = s3_storage(s3_endpoint, bucket)
    exports = Exports(instance, demo_spec, demo_spec.datasets["events"], demo_dsn, storage)
    recorded, checks = exports.materialize(KEY)
    _assert_all_pass(checks, KEY)
    uri = recorded["uri"]
    assert checks[FILE_PRESENT].metadata["size_bytes"].value == recorded["size_bytes"]
    footer = checks[ROW_COUNT_CHECK].metadata
    assert footer["footer_rows"].value == recorded["dagster/row_count"] > 0
    # The result is recorded per partition: this one has a passing result, another none.
    check_key = dg.AssetCheckKey(export_asset_key("events"), FILE_PRESENT)
    infos = instance.event_log_storage.get_asset_check_partition_info(
        [check_key], partition_keys=[KEY, "7|2025-05-01"]
    )
    assert {(i.partition_key, i.latest_execution_status.value) for i in infos} == {
        (KEY, "SUCCEEDED")
    }

    key = uri.removeprefix(f"s3://{bucket}/")
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=bucket, Key=key, Body=b"PAR1 truncated"
    )
    later = exports.check_one(KEY)
    assert set(later) == ALL_CHECKS and later[FILE_PRESENT].partition == KEY
    assert not later[FILE_PRESENT].passed
    assert later[FILE_PRESENT].severity == dg.AssetCheckSeverity.ERROR
    assert later[FILE_PRESENT].description == (
        f"{uri}: recorded {recorded['size_bytes']} bytes, found 14; re-materialize the partition"
    )
    assert not later[ROW_COUNT_CHECK].passed and uri in (later[ROW_COUNT_CHECK].description or "")
    assert later[NOT_EMPTY].passed and later[SCHEMA].passed  # from the records, not the file
    [info] = instance.event_log_storage.get_asset_check_partition_info(
        [check_key], partition_keys=[KEY]
    )
    assert info.latest_execution_status.value == "FAILED"


def test_checks_pass_after_a_local_export_and_fail_when_it_is_truncated_or_deleted(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    storage = local_storage(tmp_path)
    exports = Exports(instance, demo_spec, demo_spec.datasets["invoices"], demo_dsn, storage)
    recorded, checks = exports.materialize(KEY)
    # csv.gz: no row count check at all (it would mean downloading the file to count)
    _assert_all_pass(checks, KEY, TEXT_CHECKS)

    path = Path(recorded["uri"])
    assert path == tmp_path / "exports/4/2025-05/invoices.csv.gz"
    with path.open("r+b") as f:
        f.truncate(recorded["size_bytes"] - 1)
    truncated = exports.check_one(KEY)[FILE_PRESENT]
    assert not truncated.passed
    assert truncated.description == (
        f"{path}: recorded {recorded['size_bytes']} bytes, found {recorded['size_bytes'] - 1}; "
        "re-materialize the partition"
    )
    path.unlink()
    deleted = exports.check_one(KEY)
    assert set(deleted) == TEXT_CHECKS
    assert not deleted[FILE_PRESENT].passed
    assert deleted[FILE_PRESENT].description == f"{path}: missing; re-materialize the partition"


def test_checks_of_an_unmaterialized_partition_fail_clearly(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    exports = Exports(
        instance, demo_spec, demo_spec.datasets["orders"], demo_dsn, local_storage(tmp_path)
    )
    checks = exports.check_one("7|2025-02-01")
    assert set(checks) == TEXT_CHECKS
    for evaluation in checks.values():
        assert not evaluation.passed
        assert evaluation.partition == "7|2025-02-01"
        assert evaluation.description == (
            "exports/orders 7|2025-02-01 has not been materialized: nothing to check"
        )


def test_checks_alone_over_a_range_evaluate_every_partition(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    """A check-only run of a range (as *Execute* of a backfill's checks launches): a result per
    partition and check, each from that partition's own record."""
    exports = Exports(
        instance, demo_spec, demo_spec.datasets["events"], demo_dsn, local_storage(tmp_path)
    )
    exports.materialize("4|2025-05-01")
    result = exports.check(("4|2025-04-01", "7|2025-05-01"))
    found = {(e.partition, e.check_name): e for e in result.get_asset_check_evaluations()}
    keys = ["4|2025-04-01", "4|2025-05-01", "7|2025-04-01", "7|2025-05-01"]
    assert set(found) == {(k, name) for k in keys for name in ALL_CHECKS}
    assert {k for k, name in found if found[k, name].passed} == {"4|2025-05-01"}
    assert all(found["4|2025-05-01", name].passed for name in ALL_CHECKS)
    assert found["7|2025-04-01", FILE_PRESENT].description == (
        "exports/events 7|2025-04-01 has not been materialized: nothing to check"
    )


def test_a_storage_error_fails_only_that_partitions_checks(
    instance: dg.DagsterInstance,
    demo_spec: ExportSpec,
    demo_dsn: str,
    s3_faults: tuple[str, Faults],
    bucket: str,
) -> None:
    """S3 refuses to show one object (403, not retried): that partition's file checks fail,
    naming the object and the refusal; the other partition's pass, and the run goes on."""
    url, faults = s3_faults
    exports = Exports(
        instance, demo_spec, demo_spec.datasets["events"], demo_dsn, s3_storage(url, bucket)
    )
    keys = ("4|2025-05-01", "7|2025-05-01")
    materialize(instance, exports.defs, keys, raise_on_error=True)
    refused = recorded(instance, "events", keys[0])
    assert refused is not None
    faults.fail_next("GET", "/4/2025-05/events.", 1, status=403, code="AccessDenied")
    result = exports.check(keys)
    found = {(e.partition, e.check_name): e for e in result.get_asset_check_evaluations()}
    assert faults.injected == 1
    assert all(found[keys[1], name].passed for name in ALL_CHECKS)
    failed = found[keys[0], FILE_PRESENT]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.description == (
        f"cannot look at {refused['uri']}: An error occurred (AccessDenied) when calling the "
        "GetObject operation: injected by the test (permanent)"
    )
    assert not found[keys[0], ROW_COUNT_CHECK].passed
    assert found[keys[0], NOT_EMPTY].passed and found[keys[0], SCHEMA].passed  # from records


@pytest.fixture
def tiny_dsn(scratch_dsn: str) -> str:
    """A table with rows for customer 7 in January 2025 only."""
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id int, customer_id int, at date, amount int);"
            "INSERT INTO items VALUES (1, 7, '2025-01-05', 10), (2, 7, '2025-01-20', 20),"
            " (3, 8, '2025-02-03', 30)"
        )
    return scratch_dsn


TINY = DatasetSpec(
    name="items",
    customer_column="customer_id",
    format=Format.PARQUET,
    compression=Compression.ZSTD,
    sql="SELECT * FROM items WHERE at >= %(month_start)s AND at < %(month_end)s",
)


def test_an_empty_month_after_rows_warns(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, tiny_dsn: str, tmp_path: Path
) -> None:
    exports = Exports(instance, demo_spec, TINY, tiny_dsn, local_storage(tmp_path))
    _, january = exports.materialize("7|2025-01-01")
    _assert_all_pass(january, "7|2025-01-01")
    assert "2024-12 was not exported" in (january[NOT_EMPTY].description or "")
    recorded, february = exports.materialize("7|2025-02-01")
    assert recorded["dagster/row_count"] == 0
    empty = february[NOT_EMPTY]
    assert not empty.passed
    assert empty.severity == dg.AssetCheckSeverity.WARN
    assert empty.description == "no rows this month, 2 in 2025-01"
    assert empty.metadata["previous_rows"].value == 2
    assert february[FILE_PRESENT].passed and february[ROW_COUNT_CHECK].passed
    assert february[SCHEMA].passed


def test_a_schema_change_from_the_previous_month_warns(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, tiny_dsn: str, tmp_path: Path
) -> None:
    exports = Exports(instance, demo_spec, TINY, tiny_dsn, local_storage(tmp_path))
    exports.materialize("7|2025-01-01")
    with psycopg.connect(tiny_dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE items ALTER COLUMN amount TYPE text, ADD COLUMN note text;"
            "INSERT INTO items VALUES (4, 7, '2025-02-10', '40', 'x')"
        )
    _, february = exports.materialize("7|2025-02-01")
    schema = february[SCHEMA]
    assert not schema.passed
    assert schema.severity == dg.AssetCheckSeverity.WARN
    assert schema.metadata["added"].value == ["note text"]
    assert schema.metadata["removed"].value == []
    [changed] = schema.metadata["changed"].value  # type: ignore[misc]
    assert (
        isinstance(changed, str)
        and changed.startswith("amount: int")
        and changed.endswith("-> text")
    )
    assert "columns differ from 2025-01: added note text; changed amount" in (
        schema.description or ""
    )
    assert february[NOT_EMPTY].passed


def test_code_location_runs_the_checks_with_the_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    """exports_job (sensors' runs) and the UI's Materialize include the checks."""
    monkeypatch.setenv("EXPORT_SPEC", str(REPO_ROOT / "exports.yaml"))
    monkeypatch.delenv("EXPORT_S3_BUCKET", raising=False)
    monkeypatch.setenv("EXPORT_STORAGE_DIR", "/tmp/export-storage")
    defs = importlib.import_module("export_pipeline.definitions").defs()
    expected = {
        dg.AssetCheckKey(export_asset_key(d), name)
        for d in ("events", "orders", "invoices")
        for name in (ALL_CHECKS if d == "events" else TEXT_CHECKS)  # only Parquet counts rows
    }
    assert set(defs.resolve_asset_graph().asset_check_keys) == expected
    for job_name in ("exports_job", export_checks_job.name):
        job = defs.resolve_job_def(job_name)
        assert set(job.asset_layer.asset_graph.asset_check_keys) >= expected, job_name
    # A run request naming datasets only (the requests sensor) gets their checks too.
    events = export_asset_key("events")
    subset = defs.resolve_job_def("exports_job").get_subset(asset_selection={events})
    assert set(subset.asset_layer.asset_graph.asset_check_keys) == {
        k for k in expected if k.asset_key == events
    }
    nodes = {n.name for n in subset.graph.node_defs}
    assert nodes == {"exports__events", "exports__events__checks"}
