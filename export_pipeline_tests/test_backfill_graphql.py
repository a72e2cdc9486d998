"""UI backfills of the `exports` group, launched as the UI launches them: GraphQL
`launchPartitionBackfill` against dagster-webserver, drained by dagster-daemon.

One code server, webserver and daemon serve the whole module (`e2e_services`), on a fresh
Postgres instance with the production instance config (deploy/dagster.yaml: queued runs, the
source pool, run monitoring; the queue looked at every second), a source database seeded with
20 demo customers, S3 storage (moto behind the SigV4-checking proxy) and a state database
(EXPORT_STATE_DSN, so the failure sensor records failures). The spec is the demo's, except that
`invoices` divides by zero for a customer-month listed in the source's `export_faults` table:
a permanent error for that partition only, fixed by deleting the row.

The three backfills are launched together before the daemon starts, so its first backfill
iteration (at start-up; then every 30 s, which Dagster does not let an instance change) finds
them all; each test then checks its own:
- 10 customer-months of which 2 fail: the other 8 delivered, the 2 failed in Dagster's partition
  status; a retry of the failed ones is launched at once (the source fixed);
- 20 customers x 1 month: one ranged run, every partition materialized once with its own
  metadata and an object that hashes to it, checks per partition, a manifest each;
- 5 customers x 3 months: one ranged run per month, the same;
- the 2 failures have their rows in `export_failures` (export_failure_sensor) and the 8 complete
  customer-months their checks and manifests (partial_failure_sensor's runs);
- the retry exports exactly the 2.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import psycopg
import pytest
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from export_pipeline.batch import claim_deliveries
from export_pipeline.dagster_private import run_partition_range
from export_pipeline.defs.checks import FILE_PRESENT, ROW_COUNT_CHECK, check_names
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.demo.seed import seed_demo
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.extract.session import SourceSession
from export_pipeline.io_managers.metadata import export_asset_key, latest_records
from export_pipeline.partitions import split_partition_key
from export_pipeline.spec import load_spec
from export_pipeline.storage.keys import DEFAULT_PREFIX, manifest_key, success_key
from export_pipeline_tests.dagster_processes import E2E, e2e_services, wait_for
from export_pipeline_tests.harness import s3_storage
from export_pipeline_tests.helpers import FILE_METADATA_KEYS
from export_pipeline_tests.services import scratch_database

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

CUSTOMERS = [str(n) for n in range(1, 21)]
DATASETS = ["events", "invoices", "orders"]
EXTENSIONS = {"events": "parquet", "invoices": "csv.gz", "orders": "jsonl"}
EXPORT_KEYS = {d: export_asset_key(d) for d in DATASETS}
GROUP = [*EXPORT_KEYS.values(), MANIFEST_ASSET_KEY]
FAILING_DATASET = "invoices"
BACKFILL_DEADLINE_SECONDS = 300
SENSOR_DEADLINE_SECONDS = 120
FAILURE_SENSORS = ["export_failure_sensor", "partial_failure_sensor"]
PARTITIONS_DEF = build_export_partitions_def(date(2025, 1, 1))


def keys(customers: Sequence[str], months: Sequence[str]) -> list[str]:
    return [f"{c}|{m}" for m in months for c in customers]


# (a) 20 customers x January; (b) customers 1-5 x February to April; (c) customers 11-20 x May,
# of which 15 and 20 fail. Disjoint, so the three drain side by side without sharing a lock.
ONE_MONTH = keys(CUSTOMERS, ["2025-01-01"])
THREE_MONTHS = keys(CUSTOMERS[:5], ["2025-02-01", "2025-03-01", "2025-04-01"])
WITH_FAILURES = keys(CUSTOMERS[10:], ["2025-05-01"])
FAILING = ["15|2025-05-01", "20|2025-05-01"]
COMPLETE = [k for k in WITH_FAILURES if k not in FAILING]
# partial_failure_sensor's runs: the complete customer-months, in ranges that leave out 15.
FOLLOW_UP_RANGES = [("11|2025-05-01", "14|2025-05-01"), ("16|2025-05-01", "19|2025-05-01")]

SPEC = """
customers:
  table: public.customers
  key_column: id
months:
  start: "2025-01"
datasets:
  events:
    table: public.events
    customer_column: customer_id
    time_column: occurred_at
    format: parquet
    compression: zstd
  orders:
    table: public.orders
    customer_column: customer_id
    time_column: ordered_at
    format: jsonl
    compression: none
  invoices:
    sql: |
      SELECT i.id, i.customer_id, c.name AS customer_name, i.issued_on, i.due_on, i.amount,
             i.tax_rate, i.paid, i.notes, i.line_items
      FROM public.invoices AS i
      JOIN public.customers AS c ON c.id = i.customer_id
      WHERE i.customer_id = %(customer)s
        AND i.issued_on >= %(month_start)s AND i.issued_on < %(month_end)s
        AND (SELECT 1 / (1 - count(*)) FROM public.export_faults AS f
             WHERE f.customer_id = %(customer)s AND f.month = %(month_start)s) = 1
    customer_column: customer_id
    format: csv
    compression: gzip
"""
# Rows per customer-month as each dataset selects them (UTC months).
SOURCE_COUNTS = {
    "events": "SELECT customer_id::text, date_trunc('month', occurred_at)::date, count(*) "
    "FROM public.events GROUP BY 1, 2",
    "orders": "SELECT customer_id::text, date_trunc('month', ordered_at)::date, count(*) "
    "FROM public.orders GROUP BY 1, 2",
    "invoices": "SELECT customer_id::text, date_trunc('month', issued_on)::date, count(*) "
    "FROM public.invoices GROUP BY 1, 2",
}

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionKeysNotFoundError { message }
    ... on PartitionSetNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}
"""
RETRY_FROM_FAILURE = """
mutation($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
TARGETED = """
query($id: String!, $key: AssetKeyInput!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { partitionsTargetedForAssetKey(assetKey: $key) { partitionKeys } }
  }
}
"""
CANCEL_BACKFILL = """
mutation($id: String!) {
  cancelPartitionBackfill(backfillId: $id) { __typename }
}
"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions error { message } }
    ... on PythonError { message }
  }
}
"""
# Backfill states from which nothing more happens (BulkActionStatus).
FINAL_STATES = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


@dataclass
class Backfills:
    e2e: E2E
    bucket: str
    s3: Any
    source_dsn: str
    state_dsn: str
    ids: dict[str, str]
    launched_at: float
    failed_run: dg.DagsterRun | None = None
    before_retry: int = 0

    def wait(self, backfill_id: str) -> dict[str, Any]:
        """The backfill's final status (GraphQL, as the UI shows it)."""

        def final() -> dict[str, Any] | None:
            result = self.e2e.services.graphql(BACKFILL_STATUS, {"id": backfill_id})
            backfill: dict[str, Any] = result["partitionBackfillOrError"]
            assert backfill["__typename"] == "PartitionBackfill", backfill
            return backfill if backfill["status"] in FINAL_STATES else None

        status = wait_for(f"backfill {backfill_id}", BACKFILL_DEADLINE_SECONDS, final, 1.0)
        logger.info(
            "backfill %s: %s after %.1fs",
            backfill_id,
            status["status"],
            time.monotonic() - self.launched_at,
        )
        return status

    def failed(self) -> dg.DagsterRun:
        """The failing backfill's one run, once it has finished."""
        if self.failed_run is None:
            backfill_id = self.ids["with_failures"]

            def finished() -> dg.DagsterRun | None:
                runs = self.runs(backfill_id)
                return runs[0] if len(runs) == 1 and runs[0].is_finished else None

            self.failed_run = wait_for("the failing run", BACKFILL_DEADLINE_SECONDS, finished)
        return self.failed_run

    def retry(self) -> str:
        """Once the failing run has failed: the source fixed, the failed partitions of the
        failed asset (and their manifests) backfilled again, as the UI launches it with the
        "Failed" partitions selected. Launched once; its id."""
        if "retry" not in self.ids:
            instance = self.e2e.instance
            self.failed()
            by_status = instance.get_status_by_partition(
                EXPORT_KEYS[FAILING_DATASET], WITH_FAILURES, PARTITIONS_DEF
            )
            assert by_status is not None
            failed = sorted(k for k, s in by_status.items() if s == dg.AssetPartitionStatus.FAILED)
            with psycopg.connect(self.source_dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM public.export_faults")
            self.before_retry = max(
                r.storage_id
                for key in EXPORT_KEYS.values()
                for r in materializations(instance, key, WITH_FAILURES)
            )
            assets = [EXPORT_KEYS[FAILING_DATASET], MANIFEST_ASSET_KEY]
            self.ids["retry"] = launch_backfill(self.e2e, failed, "retry the failed", assets)
        return self.ids["retry"]

    def runs(self, backfill_id: str) -> list[dg.DagsterRun]:
        return list(
            self.e2e.instance.get_runs(
                filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id})
            )
        )

    def read(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        assert bucket == self.bucket, uri
        body: bytes = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body


def launch_backfill(
    e2e: E2E,
    partitions: list[str],
    title: str,
    assets: Sequence[dg.AssetKey] = GROUP,
    tags: dict[str, str] | None = None,
) -> str:
    """What the UI sends for "Materialize" on these assets (the `exports` group) with these
    partitions (and the tags one can add in the launch dialog)."""
    params = {
        "assetSelection": [{"path": key.path} for key in assets],
        "partitionNames": partitions,
        "title": title,
        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
    }
    launched = e2e.services.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id: str = launched["backfillId"]
    return backfill_id


def sensor_ticked(instance: dg.DagsterInstance, name: str) -> bool:
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == name:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
            return any(t.status != TickStatus.STARTED for t in ticks)
    return False


@pytest.fixture(scope="module")
def backfills(
    tmp_path_factory: pytest.TempPathFactory, pg_server: str, s3_endpoint: str
) -> Iterator[Backfills]:
    root = tmp_path_factory.mktemp("backfills")
    spec = root / "exports.yaml"
    spec.write_text(SPEC)
    bucket = "e2e-backfills"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    store = s3_storage(s3_endpoint, bucket).store()
    with (
        scratch_database(pg_server, "e2e_source") as source_dsn,
        scratch_database(pg_server, "e2e_state") as state_dsn,
    ):
        seed_demo(source_dsn, rows=20_000, customers=len(CUSTOMERS), year=2025)
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.export_faults (customer_id int, month date)")
            for partition in FAILING:
                customer, month = partition.split("|")
                conn.execute(
                    "INSERT INTO public.export_faults VALUES (%s, %s)", (int(customer), month)
                )
        ids: dict[str, str] = {}
        # Another writer (as `export-pipeline run` would be) holds the partition lock of one
        # customer-month of the failing backfill until both run-failure sensors have had their
        # first tick: a run status sensor's first tick only sets its cursor, so a run that
        # failed before it would never be seen. The failing run waits for the lock.
        holder = SourceSession(SourceConfig(source_dsn))

        def launch(e2e: E2E) -> None:
            claim_deliveries(holder, store, [split_partition_key(WITH_FAILURES[0])])
            # The failing one's run first in the queue: its retry then makes the daemon's next
            # backfill iteration, 30 s after the first.
            first = {"dagster/priority": "1"}
            ids["with_failures"] = launch_backfill(e2e, WITH_FAILURES, "2 of 10 fail", tags=first)
            ids["one_month"] = launch_backfill(e2e, ONE_MONTH, "20 customers x 1 month")
            ids["three_months"] = launch_backfill(e2e, THREE_MONTHS, "5 customers x 3 months")

        env = {
            "EXPORT_STORAGE_DIR": None,
            "EXPORT_S3_BUCKET": bucket,
            "EXPORT_S3_ENDPOINT_URL": s3_endpoint,
            "EXPORT_STATE_DSN": state_dsn,
        }
        try:
            with e2e_services(
                root,
                pg_server,
                source_dsn=source_dsn,
                spec=spec,
                env=env,
                customers=CUSTOMERS,
                before_daemon=launch,
            ) as e2e:
                launched_at = time.monotonic()
                wait_for(
                    f"the first ticks of {FAILURE_SENSORS}",
                    SENSOR_DEADLINE_SECONDS,
                    lambda: all(sensor_ticked(e2e.instance, n) for n in FAILURE_SENSORS) or None,
                )
                holder.close()  # the failing backfill's run goes on
                yield Backfills(e2e, bucket, s3, source_dsn, state_dsn, ids, launched_at)
        finally:
            holder.close()


def source_counts(dsn: str) -> dict[tuple[str, str, str], int]:
    """(dataset, customer, month start) -> rows."""
    counts: dict[tuple[str, str, str], int] = {}
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as conn:
        for dataset, query in SOURCE_COUNTS.items():
            for customer, month, rows in conn.execute(query):
                counts[(dataset, customer, month.isoformat())] = rows
    return counts


def materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]
) -> list[dg.EventLogRecord]:
    return list(
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=1000
        ).records
    )


def check_evaluations(
    instance: dg.DagsterInstance, run_ids: list[str]
) -> list[tuple[str, str, str | None, bool]]:
    """(dataset, check, partition, passed) of every check evaluation in the runs."""
    found = []
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            assert entry.dagster_event is not None
            evaluation = entry.dagster_event.asset_check_evaluation_data
            dataset = evaluation.asset_key.path[-1]
            found.append((dataset, evaluation.check_name, evaluation.partition, evaluation.passed))
    return found


def assert_delivered(
    backfills: Backfills, partitions: list[str], runs: list[dg.DagsterRun]
) -> None:
    """Every partition of each export asset has exactly one materialization, from these runs,
    with its own metadata and an object that hashes to it; the checks were evaluated once per
    partition; every customer-month has its manifest, listing exactly those files."""
    instance = backfills.e2e.instance
    run_ids = {run.run_id for run in runs}
    counts = source_counts(backfills.source_dsn)
    spec = load_spec(Path(backfills.e2e.home.env["EXPORT_SPEC"]))
    recorded: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for dataset, key in EXPORT_KEYS.items():
        records = materializations(instance, key, partitions)
        assert Counter(r.partition_key for r in records) == Counter(partitions), dataset
        for record in records:
            assert record.run_id in run_ids, (dataset, record.partition_key)
            assert record.partition_key is not None and record.asset_materialization is not None
            md = {k: v.value for k, v in record.asset_materialization.metadata.items()}
            customer, month = record.partition_key.split("|")
            what = (dataset, record.partition_key)
            assert FILE_METADATA_KEYS <= md.keys(), what
            assert md["uri"] == (
                f"s3://{backfills.bucket}/exports/{customer}/{month[:7]}/"
                f"{dataset}.{EXTENSIONS[dataset]}"
            ), what
            body = backfills.read(str(md["uri"]))
            assert hashlib.sha256(body).hexdigest() == md["sha256"], what
            assert len(body) == md["size_bytes"], what
            assert md["dagster/row_count"] == counts.get((dataset, customer, month), 0), what
            recorded[record.partition_key][dataset] = md

    # Checks: each of the dataset's checks once per partition, the ERROR ones passed.
    evaluations = check_evaluations(instance, sorted(run_ids))
    once = Counter((d, n, p) for d, n, p, _ in evaluations)
    assert set(once.values()) == {1}, once
    for dataset in DATASETS:
        for name in check_names(spec.datasets[dataset]):
            evaluated = {p: ok for d, n, p, ok in evaluations if d == dataset and n == name}
            assert sorted(p for p in evaluated if p) == sorted(partitions), (dataset, name)
            if name in (FILE_PRESENT, ROW_COUNT_CHECK):
                assert all(evaluated.values()), (dataset, name, evaluated)

    # Manifests: one per customer-month, listing the files just checked.
    manifests = materializations(instance, MANIFEST_ASSET_KEY, partitions)
    assert Counter(r.partition_key for r in manifests) == Counter(partitions)
    assert {r.run_id for r in manifests} <= run_ids
    for partition in partitions:
        assert_manifest(backfills, partition, recorded[partition])


def assert_manifest(backfills: Backfills, partition: str, files: dict[str, dict[str, Any]]) -> None:
    customer, month = split_partition_key(partition)
    document = json.loads(
        backfills.read(f"s3://{backfills.bucket}/{manifest_key(DEFAULT_PREFIX, customer, month)}")
    )
    assert (document["customer"], document["month"]) == (customer, str(month))
    listed = {d: (e["sha256"], e["rows"], e["bytes"]) for d, e in document["datasets"].items()}
    assert listed == {
        d: (md["sha256"], md["dagster/row_count"], md["size_bytes"]) for d, md in files.items()
    }, partition
    success = backfills.read(
        f"s3://{backfills.bucket}/{success_key(DEFAULT_PREFIX, customer, month)}"
    )
    assert success  # written after the manifest


def failure_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT run_id, partition_key, customer, month, dataset, error FROM export_failures "
            "ORDER BY partition_key"
        ).fetchall()


def latest(
    instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str]
) -> dict[str, dict[str, Any]]:
    return {p: r.metadata for p, r in latest_records(instance, key, partitions).items()}


# The tests run in this order, so that the failing backfill's retry, launched as soon as its run
# has failed, drains while the other backfills are checked; each also runs alone.
def test_2_of_10_fail_the_other_8_are_delivered_and_the_2_are_failed(backfills: Backfills) -> None:
    instance = backfills.e2e.instance
    run = backfills.failed()
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run_partition_range(run) == ("11|2025-05-01", "20|2025-05-01")

    # The 8 are delivered and materialized once each; the other datasets of all 10 too.
    invoices = materializations(instance, EXPORT_KEYS[FAILING_DATASET], WITH_FAILURES)
    assert Counter(r.partition_key for r in invoices) == Counter(COMPLETE)
    assert {r.run_id for r in invoices} == {run.run_id}
    for dataset in ("events", "orders"):
        records = materializations(instance, EXPORT_KEYS[dataset], WITH_FAILURES)
        assert Counter(r.partition_key for r in records) == Counter(WITH_FAILURES), dataset
    for partition, md in latest(instance, EXPORT_KEYS[FAILING_DATASET], COMPLETE).items():
        body = backfills.read(str(md["uri"]))
        assert hashlib.sha256(body).hexdigest() == md["sha256"], partition
        # the same record as a run without failures
        assert set(md) >= FILE_METADATA_KEYS, partition

    # Dagster's partition status: exactly the 2 are failed (what the UI's "Failed" selects).
    by_status = instance.get_status_by_partition(
        EXPORT_KEYS[FAILING_DATASET], WITH_FAILURES, PARTITIONS_DEF
    )
    assert by_status is not None
    failed = sorted(k for k, s in by_status.items() if s == dg.AssetPartitionStatus.FAILED)
    assert failed == FAILING
    assert {k for k, s in by_status.items() if s == dg.AssetPartitionStatus.MATERIALIZED} == set(
        COMPLETE
    )
    backfills.retry()  # launched now, it drains while the other backfills are checked


def test_20_customers_of_one_month_are_one_ranged_run(backfills: Backfills) -> None:
    backfill_id = backfills.ids["one_month"]
    status = backfills.wait(backfill_id)
    assert (status["status"], status["numPartitions"]) == ("COMPLETED_SUCCESS", len(ONE_MONTH))
    runs = backfills.runs(backfill_id)
    # One month: a single range of customers 1-20, far under max_partitions_per_run (500).
    assert [(run_partition_range(r), r.status) for r in runs] == [
        (("1|2025-01-01", "20|2025-01-01"), dg.DagsterRunStatus.SUCCESS)
    ]
    assert set(runs[0].asset_selection or ()) == set(GROUP)
    assert_delivered(backfills, ONE_MONTH, runs)


def test_5_customers_of_3_months_are_one_ranged_run_per_month(backfills: Backfills) -> None:
    backfill_id = backfills.ids["three_months"]
    status = backfills.wait(backfill_id)
    assert (status["status"], status["numPartitions"]) == ("COMPLETED_SUCCESS", len(THREE_MONTHS))
    runs = backfills.runs(backfill_id)
    # Dagster 1.13 cuts a multi-partition selection into ranges by holding fixed the dimension
    # with fewer distinct keys (DefaultPartitionsSubset.get_partition_key_ranges): here the
    # 3 months (against 5 customers), and for each month the customers 1-5 are contiguous in
    # the partition order, so each month is one range "1|m" .. "5|m" (a range of a
    # MultiPartitionsDefinition is the product of each dimension's range): 3 runs, as the README
    # says ("all the customers of a month, or one customer's months, whichever dimension has
    # fewer keys held fixed"). Its earlier "keys sort customer first, so a month is not a
    # range" did not hold. Customers that are not contiguous are separate ranges (the retry
    # below).
    assert sorted((run_partition_range(r), r.status) for r in runs) == [
        ((f"1|{m}", f"5|{m}"), dg.DagsterRunStatus.SUCCESS)
        for m in ("2025-02-01", "2025-03-01", "2025-04-01")
    ]
    assert_delivered(backfills, THREE_MONTHS, runs)


def test_the_failures_are_recorded_and_the_complete_customer_months_followed_up(
    backfills: Backfills,
) -> None:
    instance = backfills.e2e.instance
    run = backfills.failed()
    status = backfills.wait(backfills.ids["with_failures"])
    assert status["status"] == "COMPLETED_FAILED", status

    # The failure sensor (in the daemon): a row per failed partition.
    rows = wait_for(
        "the failure rows",
        SENSOR_DEADLINE_SECONDS,
        lambda: failure_rows(backfills.state_dsn) or None,
    )
    assert [row[:5] for row in rows] == [
        (run.run_id, key, key.split("|")[0], "2025-05", FAILING_DATASET) for key in FAILING
    ]
    assert all("division by zero" in row[5] for row in rows), rows

    # partial_failure_sensor: the checks and manifests of the 8 complete customer-months, in
    # runs that export nothing.
    def follow_ups() -> list[dg.DagsterRun] | None:
        found = instance.get_runs(filters=dg.RunsFilter(tags={"export/trigger": "partial-failure"}))
        done = len(found) == len(FOLLOW_UP_RANGES) and all(r.is_finished for r in found)
        return list(found) if done else None

    followed = wait_for("the follow-up runs", SENSOR_DEADLINE_SECONDS, follow_ups)
    assert sorted((run_partition_range(r), r.status) for r in followed) == [
        (span, dg.DagsterRunStatus.SUCCESS) for span in FOLLOW_UP_RANGES
    ]
    assert all(r.asset_selection == {MANIFEST_ASSET_KEY} for r in followed)
    follow_up_ids = {r.run_id for r in followed}
    manifests = [
        r
        for r in materializations(instance, MANIFEST_ASSET_KEY, WITH_FAILURES)
        if r.run_id in follow_up_ids
    ]
    assert Counter(r.partition_key for r in manifests) == Counter(COMPLETE)
    for key in EXPORT_KEYS.values():
        exported = materializations(instance, key, WITH_FAILURES)
        assert not {r.run_id for r in exported} & follow_up_ids, key
    evaluations = check_evaluations(instance, sorted(follow_up_ids))
    assert {(d, p) for d, _, p, _ in evaluations} == {(d, p) for d in DATASETS for p in COMPLETE}


def test_the_retry_of_the_failed_exports_exactly_the_2(backfills: Backfills) -> None:
    instance = backfills.e2e.instance
    retry_id = backfills.retry()
    status = backfills.wait(retry_id)
    assert status["status"] == "COMPLETED_SUCCESS", status
    # 15 and 20 are not contiguous in May (16-19 lie between): two ranges, two runs.
    assert sorted((run_partition_range(r), r.status) for r in backfills.runs(retry_id)) == [
        ((key, key), dg.DagsterRunStatus.SUCCESS) for key in FAILING
    ]
    new = [
        (r.asset_key, r.partition_key)
        for key in EXPORT_KEYS.values()
        for r in materializations(instance, key, WITH_FAILURES)
        if r.storage_id > backfills.before_retry
    ]
    assert sorted(new) == [(EXPORT_KEYS[FAILING_DATASET], key) for key in FAILING]
    by_status = instance.get_status_by_partition(
        EXPORT_KEYS[FAILING_DATASET], WITH_FAILURES, PARTITIONS_DEF
    )
    assert by_status == {key: dg.AssetPartitionStatus.MATERIALIZED for key in WITH_FAILURES}
    # Every customer-month of the failed backfill now has its manifest, listing its files.
    recorded: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for dataset, key in EXPORT_KEYS.items():
        for partition, md in latest(instance, key, WITH_FAILURES).items():
            recorded[partition][dataset] = md
    for partition in WITH_FAILURES:
        assert_manifest(backfills, partition, recorded[partition])

    # What the backfill's own "Re-execute from failure" would ask for, read back and cancelled
    # before the daemon's next iteration (30 s away) picks it up: of the exports, exactly the
    # 2 again; of the manifests, every customer-month of the failed run, since Dagster counts
    # only what the backfill's own runs materialized (not partial_failure_sensor's manifests).
    params = {"parentRunId": backfills.ids["with_failures"], "strategy": "FROM_FAILURE"}
    e2e = backfills.e2e
    retried = e2e.services.graphql(RETRY_FROM_FAILURE, {"params": params})
    retried = retried["reexecutePartitionBackfill"]
    assert retried["__typename"] == "LaunchBackfillSuccess", retried
    try:
        targeted = {}
        for key in GROUP:
            found = e2e.services.graphql(
                TARGETED, {"id": retried["backfillId"], "key": {"path": key.path}}
            )["partitionBackfillOrError"]["partitionsTargetedForAssetKey"]
            targeted[key] = sorted(found["partitionKeys"]) if found else []
    finally:
        e2e.services.graphql(CANCEL_BACKFILL, {"id": retried["backfillId"]})
    assert targeted == {
        EXPORT_KEYS["events"]: [],
        EXPORT_KEYS["orders"]: [],
        EXPORT_KEYS[FAILING_DATASET]: FAILING,
        MANIFEST_ASSET_KEY: sorted(WITH_FAILURES),
    }
