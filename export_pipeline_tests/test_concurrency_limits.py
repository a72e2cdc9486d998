"""The limits hold for real runs through the daemon: the run queue, the source pool, and the
partition locks that keep two runs from writing one customer-month at once.

A code server, dagster-webserver and dagster-daemon serve the module (`e2e_services`) on the
production instance config (deploy/dagster.yaml) with `max_concurrent_runs` lowered to 3, so
that a few runs put it under pressure. The pool test sets the source pool's own limit to 2, as
an operator would (`dagster instance concurrency set export_source_db 2`), so that the pool
binds before the run limit does (every run executes in process, one step at a time, so a run
holds at most one slot). Storage is S3 (moto behind the SigV4-checking proxy).

Nothing is left to timing: the test process holds partition locks itself (as another writer,
`export-pipeline run` say, would), so runs wait inside their export steps, holding a run slot
and a pool slot, exactly as long as the test wants; what the daemon did meanwhile is then read
from PostgreSQL's `pg_locks`, the pool's slots and the runs' event logs.

A run is in progress from RUN_STARTING (the daemon dequeued it) to its RUN_SUCCESS / RUN_FAILURE
/ RUN_CANCELED; that is the span in which the queue counts it. A step of the source pool holds
its slot from before its STEP_START to after its STEP_SUCCESS / STEP_FAILURE /
STEP_UP_FOR_RETRY, so counting those spans never overstates how many held a slot at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import psycopg
import pytest

from export_pipeline.batch import claim_deliveries
from export_pipeline.defs.assets import SOURCE_POOL
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.demo.seed import seed_demo
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.extract.session import SourceSession, lock_key
from export_pipeline.io_managers.metadata import export_asset_key, latest_records
from export_pipeline.partitions import split_partition_key
from export_pipeline.spec import load_spec
from export_pipeline.storage.keys import DEFAULT_PREFIX, manifest_key
from export_pipeline.storage.writer import ObjectStore
from export_pipeline_tests.dagster_processes import (
    E2E,
    LOCATION_NAME,
    e2e_instance_yaml,
    e2e_services,
    wait_for,
)
from export_pipeline_tests.harness import (
    export_definitions,
    export_resources,
    materialize,
    s3_storage,
)
from export_pipeline_tests.services import scratch_database

RUN_LIMIT = 3
POOL_LIMIT = 2
PARTITION_TAG = "dagster/partition"
DATASETS = ["events", "invoices", "orders"]
EXPORT_KEYS = [export_asset_key(d) for d in DATASETS]
GROUP = [*EXPORT_KEYS, MANIFEST_ASSET_KEY]
CUSTOMERS = ["1", "2", "3", "4", "5"]
DEADLINE_SECONDS = 180

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
    table: public.invoices
    customer_column: customer_id
    time_column: issued_on
    format: csv
    compression: gzip
"""

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PipelineNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}
"""

RUN_START_EVENTS = {dg.DagsterEventType.RUN_STARTING}
RUN_END_EVENTS = {
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
}
STEP_START_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED}
STEP_END_EVENTS = {
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
}


@dataclass(frozen=True)
class Span:
    what: str
    start: float
    end: float


def most_at_once(spans: Iterable[Span]) -> tuple[int, list[str]]:
    """The largest number of spans in progress at one instant, and which they were.

    A span covers [start, end): one that ends exactly when another starts does not overlap it.
    """
    listed = list(spans)
    edges = sorted(
        [(s.start, 1, s) for s in listed] + [(s.end, -1, s) for s in listed],
        key=lambda edge: (edge[0], edge[1]),  # at equal times, ends before starts
    )
    current: set[Span] = set()
    best: list[Span] = []
    for _, delta, span in edges:
        if delta > 0:
            current.add(span)
            if len(current) > len(best):
                best = list(current)
        else:
            current.discard(span)
    return len(best), sorted(f"{s.what} [{s.start:.3f}, {s.end:.3f})" for s in best)


@pytest.mark.parametrize(
    ("intervals", "expected"),
    [
        ([], 0),
        ([(0, 1), (1, 2), (2, 3)], 1),  # back to back: never two at once
        ([(0, 2), (1, 3)], 2),
        ([(0, 10), (1, 2), (3, 4), (5, 6)], 2),
        ([(0, 10), (1, 5), (2, 6), (5, 7)], 3),
    ],
)
def test_most_at_once(intervals: list[tuple[float, float]], expected: int) -> None:
    spans = (Span(str(i), start, end) for i, (start, end) in enumerate(intervals))
    assert most_at_once(spans)[0] == expected


# -- the module's services ---------------------------------------------------------------
@dataclass
class Limits:
    e2e: E2E
    bucket: str
    s3: Any
    store: ObjectStore

    def launch(
        self,
        assets: Sequence[dg.AssetKey],
        partition: str | None = None,
        partition_range: tuple[str, str] | None = None,
    ) -> str:
        """What the UI sends to materialize `assets` for one partition (its tags), or what a
        schedule's ranged run request carries (the range tags)."""
        if partition is not None:
            customer, month = partition.split("|")
            tags = {
                PARTITION_TAG: partition,
                f"{PARTITION_TAG}/customer": customer,
                f"{PARTITION_TAG}/month": month,
            }
        else:
            assert partition_range is not None
            tags = {
                "dagster/asset_partition_range_start": partition_range[0],
                "dagster/asset_partition_range_end": partition_range[1],
            }
        params = {
            "selector": {
                "repositoryLocationName": LOCATION_NAME,
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": key.path} for key in assets],
            },
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        launched = self.e2e.services.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id: str = launched["run"]["runId"]
        return run_id

    def finished(self, run_ids: list[str]) -> list[dg.RunRecord]:
        def done() -> list[dg.RunRecord] | None:
            records = self.e2e.instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
            finished = len(records) == len(run_ids) and all(
                r.dagster_run.is_finished for r in records
            )
            return list(records) if finished else None

        return wait_for("the runs to finish", DEADLINE_SECONDS, done)

    def key(self, partition: str) -> int:
        customer, month = split_partition_key(partition)
        return lock_key(self.store.location, customer, str(month))

    def holder(self) -> SourceSession:
        """A source session of the test's own, to hold partition locks as another writer."""
        return SourceSession(SourceConfig(self.e2e.source_dsn))

    def hold(self, holder: SourceSession, partitions: list[str]) -> None:
        claim_deliveries(holder, self.store, [split_partition_key(p) for p in partitions])

    def read(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        assert bucket == self.bucket, uri
        body: bytes = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body


@pytest.fixture(scope="module")
def limits(
    tmp_path_factory: pytest.TempPathFactory, pg_server: str, s3_endpoint: str
) -> Iterator[Limits]:
    root = tmp_path_factory.mktemp("limits")
    spec = root / "exports.yaml"
    spec.write_text(SPEC)
    bucket = "e2e-limits"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)

    def lowered(config: dict[str, Any]) -> None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = RUN_LIMIT

    env = {
        "EXPORT_STORAGE_DIR": None,
        "EXPORT_S3_BUCKET": bucket,
        "EXPORT_S3_ENDPOINT_URL": s3_endpoint,
    }
    with scratch_database(pg_server, "e2e_source") as source_dsn:
        seed_demo(source_dsn, rows=5_000, customers=len(CUSTOMERS), year=2025)
        with e2e_services(
            root,
            pg_server,
            source_dsn=source_dsn,
            spec=spec,
            instance_yaml=e2e_instance_yaml(lowered),
            env=env,
            customers=CUSTOMERS,
        ) as e2e:
            store = s3_storage(s3_endpoint, bucket).store()
            yield Limits(e2e, bucket, s3, store)


# -- what the event logs and pg_locks say -------------------------------------------------
def advisory_locks(dsn: str) -> list[tuple[int, bool, int]]:
    """(lock key, granted, backend pid) of every bigint advisory lock in the database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT classid::bigint, objid::bigint, granted, pid FROM pg_locks"
            " WHERE locktype = 'advisory' AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    locks = []
    for high, low, granted, pid in rows:
        key = (high << 32) | low
        locks.append((key - (1 << 64) if key >= 1 << 63 else key, granted, pid))
    return locks


def waiting_on(dsn: str, keys: Iterable[int]) -> dict[int, int]:
    """Key -> pid of the backend waiting for it, for those of `keys` someone waits for."""
    wanted = set(keys)
    return {key: pid for key, granted, pid in advisory_locks(dsn) if key in wanted and not granted}


def event_times(
    instance: dg.DagsterInstance, run_id: str, types: set[dg.DagsterEventType]
) -> list[tuple[dg.DagsterEventType, str | None, float]]:
    return [
        (entry.dagster_event.event_type, entry.step_key, entry.timestamp)
        for entry in instance.all_logs(run_id, of_type=types)
        if entry.dagster_event is not None
    ]


def run_span(instance: dg.DagsterInstance, record: dg.RunRecord) -> Span:
    run = record.dagster_run
    events = event_times(instance, run.run_id, RUN_START_EVENTS | RUN_END_EVENTS)
    (start,) = [t for kind, _, t in events if kind in RUN_START_EVENTS]
    (end,) = [t for kind, _, t in events if kind in RUN_END_EVENTS]
    # The run record's own start/end (RUN_START, RUN_SUCCESS) lie within that span.
    assert record.start_time is not None and record.end_time is not None
    assert start <= record.start_time <= record.end_time <= end + 0.001, run.run_id
    return Span(run.run_id[:8], start, end)


def pool_step_spans(instance: dg.DagsterInstance, record: dg.RunRecord) -> list[Span]:
    """The spans of the run's steps of the source pool (STEP_START to the step's end)."""
    run = record.dagster_run
    assert run.execution_plan_snapshot_id is not None
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    pool_steps = {step.key for step in plan.steps if step.pool == SOURCE_POOL}
    spans = []
    started: dict[str, float] = {}
    events = event_times(instance, run.run_id, STEP_START_EVENTS | STEP_END_EVENTS)
    for kind, step_key, timestamp in sorted(events, key=lambda e: e[2]):
        assert step_key is not None
        if step_key not in pool_steps:
            continue
        if kind in STEP_START_EVENTS:
            assert step_key not in started, (run.run_id, step_key, kind)
            started[step_key] = timestamp
        else:
            spans.append(Span(f"{run.run_id[:8]} {step_key}", started.pop(step_key), timestamp))
    assert not started, f"steps without an end in {run.run_id}: {started}"
    return spans


def first_pool_step_start(instance: dg.DagsterInstance, record: dg.RunRecord) -> float:
    return min(span.start for span in pool_step_spans(instance, record))


# -- the tests ------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_pool_bounds_the_export_steps_and_the_queue_the_runs(limits: Limits) -> None:
    """Three export runs (1-3|February) and two manifest runs (4-5|February), all held by the
    test's partition locks: two export runs take both pool slots and wait; the third waits in
    the queue for the pool, although the run limit would admit it (a manifest run, which uses
    no pool slot and was queued after it, is launched meanwhile); the second manifest run then
    waits in the queue for the run limit. Once the locks are released, all five succeed, and
    their event logs show at most 2 pool steps and 3 runs at once, and that many at some point.
    """
    instance = limits.e2e.instance
    exports = ["1|2025-02-01", "2|2025-02-01", "3|2025-02-01"]
    manifests = ["4|2025-02-01", "5|2025-02-01"]
    # The manifest runs need their exports recorded first: one ranged run, in process.
    env = limits.e2e.home.env
    storage = s3_storage(env["EXPORT_S3_ENDPOINT_URL"], limits.bucket)
    resources = export_resources(limits.e2e.source_dsn, storage)
    spec = load_spec(Path(env["EXPORT_SPEC"]))
    defs = export_definitions(spec, resources, checks=False, manifest=False)
    assert materialize(instance, defs, (manifests[0], manifests[-1]), EXPORT_KEYS).success

    pools = instance.event_log_storage
    default_limit = instance.global_op_concurrency_default_limit
    assert default_limit is not None and default_limit >= RUN_LIMIT  # never binds as deployed
    pools.set_concurrency_slots(SOURCE_POOL, POOL_LIMIT)
    holder = limits.holder()
    try:
        limits.hold(holder, exports + manifests)
        export_runs = {limits.launch(GROUP, p): p for p in exports}

        def two_export_runs_hold_the_pool() -> set[str] | None:
            info = instance.event_log_storage.get_concurrency_info(SOURCE_POOL)
            assert info.slot_count == POOL_LIMIT
            holding = {slot.run_id for slot in info.claimed_slots}
            waiting = waiting_on(limits.e2e.source_dsn, [limits.key(p) for p in exports])
            return holding if len(holding) == POOL_LIMIT and len(waiting) == POOL_LIMIT else None

        holding = wait_for(
            "two export runs in their steps", DEADLINE_SECONDS, two_export_runs_hold_the_pool
        )
        (queued,) = set(export_runs) - holding
        first_manifest = limits.launch([MANIFEST_ASSET_KEY], manifests[0])
        second_manifest = limits.launch([MANIFEST_ASSET_KEY], manifests[1])
        wait_for(
            "the first manifest run in its step",
            DEADLINE_SECONDS,
            lambda: waiting_on(limits.e2e.source_dsn, [limits.key(manifests[0])]) or None,
        )
        # Still held: the pool's two slots, the queue's three runs.
        info = instance.event_log_storage.get_concurrency_info(SOURCE_POOL)
        assert {slot.run_id for slot in info.claimed_slots} == holding
        waiting = instance.get_runs(filters=dg.RunsFilter(run_ids=[queued, second_manifest]))
        assert {r.run_id: r.status for r in waiting} == {
            queued: dg.DagsterRunStatus.QUEUED,
            second_manifest: dg.DagsterRunStatus.QUEUED,
        }
        released = time.time()
    finally:
        holder.close()

    run_ids = [*export_runs, first_manifest, second_manifest]
    try:
        records = {r.dagster_run.run_id: r for r in limits.finished(run_ids)}
    finally:
        pools.set_concurrency_slots(SOURCE_POOL, default_limit)
    statuses = {run_id: r.dagster_run.status for run_id, r in records.items()}
    assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}, statuses

    runs = {run_id: run_span(instance, r) for run_id, r in records.items()}
    count, overlapping = most_at_once(runs.values())
    assert count == RUN_LIMIT, f"{count} runs at once, not {RUN_LIMIT}: {overlapping}"
    # The third export run was passed over for the pool while a later run was launched; the
    # second manifest run waited for the run limit.
    assert runs[first_manifest].start < released < runs[queued].start
    assert runs[second_manifest].start > released
    steps = [span for r in records.values() for span in pool_step_spans(instance, r)]
    assert len(steps) == len(exports) * len(DATASETS)
    count, overlapping = most_at_once(steps)
    assert count == POOL_LIMIT, (
        f"{count} {SOURCE_POOL} steps at once, not {POOL_LIMIT}: {overlapping}"
    )
    assert first_pool_step_start(instance, records[queued]) > released


@pytest.mark.slow
def test_a_run_waits_for_the_customer_month_another_run_is_writing(limits: Limits) -> None:
    """A ranged run R (1-3|March) and a run S of one customer-month inside its range. R takes
    its partition locks in its first step and holds them to its end; the test holds one of
    them first, so that R stops there holding the other two; S, launched then, waits for the
    one it shares with R. Both succeed; S wrote that customer-month only after R's last write;
    and the stored objects, the latest materializations and the manifest agree byte for byte.
    """
    instance = limits.e2e.instance
    partitions = ["1|2025-03-01", "2|2025-03-01", "3|2025-03-01"]
    keys = {p: limits.key(p) for p in partitions}
    # R claims its keys in ascending order: holding the largest stops R with the others held.
    held = max(partitions, key=keys.__getitem__)
    shared = min(partitions, key=keys.__getitem__)
    holder = limits.holder()
    try:
        limits.hold(holder, [held])
        ranged = limits.launch(GROUP, partition_range=(partitions[0], partitions[-1]))

        def ranged_run_holds_the_others() -> int | None:
            locks = advisory_locks(limits.e2e.source_dsn)
            waiting = {pid for key, granted, pid in locks if key == keys[held] and not granted}
            if len(waiting) != 1:
                return None
            (pid,) = waiting
            mine = {key for key, granted, owner in locks if granted and owner == pid}
            return pid if mine == {keys[p] for p in partitions if p != held} else None

        ranged_pid = wait_for("R to hold two locks", DEADLINE_SECONDS, ranged_run_holds_the_others)
        single = limits.launch(GROUP, shared)
        single_pid = wait_for(
            "S to wait for the customer-month R holds",
            DEADLINE_SECONDS,
            lambda: waiting_on(limits.e2e.source_dsn, [keys[shared]]).get(keys[shared]),
        )
        assert single_pid != ranged_pid
    finally:
        holder.close()

    records = {r.dagster_run.run_id: r for r in limits.finished([ranged, single])}
    assert {r.dagster_run.status for r in records.values()} == {dg.DagsterRunStatus.SUCCESS}

    def written(run_id: str, partition: str) -> list[float]:
        return [
            entry.timestamp
            for entry in instance.all_logs(
                run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            )
            if entry.asset_materialization is not None
            and entry.asset_materialization.partition == partition
        ]

    by_ranged, by_single = written(ranged, shared), written(single, shared)
    assert len(by_ranged) == len(by_single) == len(GROUP)  # 3 exports and the manifest each
    assert max(by_ranged) < min(by_single), "S wrote the customer-month while R held it"

    # Byte for byte: the latest materialization of each customer-month is the last writer's,
    # and the stored object hashes to it; the manifest lists exactly those objects.
    for partition in partitions:
        files: dict[str, dict[str, Any]] = {}
        for dataset, key in zip(DATASETS, EXPORT_KEYS, strict=True):
            latest = latest_records(instance, key, [partition])[partition]
            assert latest.run_id == (single if partition == shared else ranged), (key, partition)
            body = limits.read(str(latest.metadata["uri"]))
            assert hashlib.sha256(body).hexdigest() == latest.metadata["sha256"], (key, partition)
            files[dataset] = latest.metadata
        manifest = latest_records(instance, MANIFEST_ASSET_KEY, [partition])[partition]
        assert manifest.run_id == (single if partition == shared else ranged), partition
        customer, month = split_partition_key(partition)
        document = json.loads(
            limits.read(f"s3://{limits.bucket}/{manifest_key(DEFAULT_PREFIX, customer, month)}")
        )
        assert {d: e["sha256"] for d, e in document["datasets"].items()} == {
            d: md["sha256"] for d, md in files.items()
        }, partition
