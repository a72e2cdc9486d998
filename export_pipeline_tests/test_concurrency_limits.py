"""The instance limits hold for real runs: the queue, the per-partition tag limit, the source pool.

dagster-webserver and dagster-daemon run on the production instance config (deploy/dagster.yaml)
with `max_concurrent_runs` and the pool's `default_limit` lowered to 2, so that a handful of runs
puts them under pressure. Every export sleeps in PostgreSQL (`pg_sleep` in the dataset's SQL), so
runs and steps last long enough to overlap. Six runs are launched through GraphQL the way the UI
materializes one partition, the first two for the same customer-month; the daemon drains them.
Then, from the event log of the finished runs:

- no two runs of one `dagster/partition` were in progress at once (the tag limit), and the
  second run of that partition was queued while the first was still in progress (so the limit,
  not luck, kept them apart);
- at no instant were more than `max_concurrent_runs` runs in progress, and at some instant that
  many were;
- at no instant did more steps of pool `export_source_db` run than the pool limit, and at some
  instant that many did.

A run is in progress from RUN_STARTING (the daemon dequeued it) to its RUN_SUCCESS / RUN_FAILURE
/ RUN_CANCELED; that is the span in which the queue counts it. A step counts from
STEP_WORKER_STARTING (the run worker claimed its slot and is starting the step's process) to
STEP_SUCCESS / STEP_FAILURE / STEP_UP_FOR_RETRY (after which the worker frees the slot); its
STEP_START lies in between. Counting from STEP_START instead would miss the process start-up,
which takes longer than the export itself here, and so would rarely see steps overlap at all.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from export_pipeline_tests.dagster_processes import (
    LOCATION_NAME,
    REPO_ROOT,
    dagster_home,
    dagster_services,
    wait_for,
)

logger = logging.getLogger(__name__)

RUN_LIMIT = 2
POOL_LIMIT = 2
SOURCE_POOL = "export_source_db"
PARTITION_TAG = "dagster/partition"
SLEEP_SECONDS = 1
DATASETS = ["events", "invoices", "orders"]
DUPLICATE = "1|2025-03-01"
# Queue order: the duplicate twice at the head, so that without the tag limit both would start.
LAUNCHES = [DUPLICATE, DUPLICATE, "2|2025-03-01", "3|2025-03-01", "1|2025-02-01", "2|2025-02-01"]
DRAIN_DEADLINE_SECONDS = 240

# Each dataset sleeps once per export (an uncorrelated subquery is evaluated once).
SLOW_SPEC = f"""
customers:
  table: public.customers
  key_column: id
months:
  start: "2025-01"
datasets:
  events:
    sql: |
      SELECT e.* FROM public.events AS e
      WHERE e.customer_id = %(customer)s
        AND e.occurred_at >= %(month_start)s AND e.occurred_at < %(month_end)s
        AND (SELECT pg_sleep({SLEEP_SECONDS})) IS NOT NULL
    customer_column: customer_id
    format: jsonl
    compression: none
  orders:
    sql: |
      SELECT o.* FROM public.orders AS o
      WHERE o.customer_id = %(customer)s
        AND o.ordered_at >= %(month_start)s AND o.ordered_at < %(month_end)s
        AND (SELECT pg_sleep({SLEEP_SECONDS})) IS NOT NULL
    customer_column: customer_id
    format: jsonl
    compression: none
  invoices:
    sql: |
      SELECT i.* FROM public.invoices AS i
      WHERE i.customer_id = %(customer)s
        AND i.issued_on >= %(month_start)s AND i.issued_on < %(month_end)s
        AND (SELECT pg_sleep({SLEEP_SECONDS})) IS NOT NULL
    customer_column: customer_id
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
STEP_EVENTS = {dg.DagsterEventType.STEP_WORKER_STARTING} | STEP_START_EVENTS | STEP_END_EVENTS


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


def limits_yaml() -> tuple[str, dict[str, Any]]:
    """deploy/dagster.yaml with the run and pool limits lowered; also its tag limit."""
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = RUN_LIMIT
    config["concurrency"]["pools"]["default_limit"] = POOL_LIMIT
    (tag_limit,) = config["concurrency"]["runs"]["tag_concurrency_limits"]
    return yaml.safe_dump(config, sort_keys=False), tag_limit


def launch_params(partition: str) -> dict[str, Any]:
    """What the UI sends to materialize one customer-month of every dataset."""
    customer, month = partition.split("|")
    return {
        "selector": {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["exports", d]} for d in DATASETS],
        },
        "runConfigData": {},
        "executionMetadata": {
            "tags": [
                {"key": PARTITION_TAG, "value": partition},
                {"key": f"{PARTITION_TAG}/customer", "value": customer},
                {"key": f"{PARTITION_TAG}/month", "value": month},
            ]
        },
    }


@pytest.mark.slow
def test_run_tag_and_pool_limits_hold(
    tmp_path: Path, demo_dsn: str, scratch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance_yaml, tag_limit = limits_yaml()
    # The rule the tag check below relies on: one run per value of dagster/partition.
    assert tag_limit == {
        "key": PARTITION_TAG,
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    }
    spec = tmp_path / "slow_exports.yaml"
    spec.write_text(SLOW_SPEC)
    home = dagster_home(
        tmp_path, instance_yaml, instance_dsn=scratch_dsn, source_dsn=demo_dsn, spec=spec
    )
    monkeypatch.setenv("DAGSTER_PG_URL", home.env["DAGSTER_PG_URL"])
    with dg.DagsterInstance.from_config(str(home.home)) as instance:
        instance.add_dynamic_partitions("customers", sorted({p.split("|")[0] for p in LAUNCHES}))
        started = time.monotonic()
        with dagster_services(home) as services:
            ready = time.monotonic()
            run_ids = []
            for partition in LAUNCHES:
                result = services.graphql(LAUNCH_RUN, {"params": launch_params(partition)})
                launched = result["launchRun"]
                assert launched["__typename"] == "LaunchRunSuccess", launched
                run_ids.append(launched["run"]["runId"])

            def all_finished() -> list[dg.RunRecord] | None:
                records = instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
                done = all(r.dagster_run.is_finished for r in records)
                return list(records) if done and len(records) == len(run_ids) else None

            records = wait_for("the runs to finish", DRAIN_DEADLINE_SECONDS, all_finished)
            drained = time.monotonic()
        logger.info("startup %.1fs, drain %.1fs", ready - started, drained - ready)

        statuses = {r.dagster_run.run_id: r.dagster_run.status for r in records}
        assert set(statuses.values()) == {dg.DagsterRunStatus.SUCCESS}, statuses
        check_run_limits(instance, records)
        check_pool_limit(instance, records)


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
    return Span(f"{run.tags[PARTITION_TAG]} {run.run_id[:8]}", start, end)


def check_run_limits(instance: dg.DagsterInstance, records: Sequence[dg.RunRecord]) -> None:
    spans = {r.dagster_run.run_id: run_span(instance, r) for r in records}
    by_partition: dict[str, list[dg.RunRecord]] = defaultdict(list)
    for record in records:
        by_partition[record.dagster_run.tags[PARTITION_TAG]].append(record)
    assert sorted(by_partition) == sorted(set(LAUNCHES))

    for partition, runs in by_partition.items():
        count, overlapping = most_at_once(spans[r.dagster_run.run_id] for r in runs)
        assert count <= 1, f"runs of partition {partition} in progress together: {overlapping}"

    # The two runs of DUPLICATE were both in the queue at once, so the tag limit had to act.
    first, second = sorted(by_partition[DUPLICATE], key=lambda r: spans[r.dagster_run.run_id].start)
    (enqueued,) = [
        t
        for _, _, t in event_times(
            instance, second.dagster_run.run_id, {dg.DagsterEventType.RUN_ENQUEUED}
        )
    ]
    assert enqueued < spans[first.dagster_run.run_id].end, "the duplicate was queued too late"

    count, overlapping = most_at_once(spans.values())
    assert count <= RUN_LIMIT, f"more than {RUN_LIMIT} runs in progress: {overlapping}"
    assert count == RUN_LIMIT, "the run limit was never reached; the test exerted no pressure"


def check_pool_limit(instance: dg.DagsterInstance, records: Sequence[dg.RunRecord]) -> None:
    spans = []
    for record in records:
        run = record.dagster_run
        assert run.execution_plan_snapshot_id is not None
        plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        pool_steps = {step.key for step in plan.steps if step.pool == SOURCE_POOL}
        assert pool_steps == {f"exports__{d}" for d in DATASETS}, run.run_id
        events = event_times(instance, run.run_id, STEP_EVENTS)
        opened: dict[str, float] = {}
        started: set[str] = set()
        for kind, step_key, timestamp in sorted(events, key=lambda e: e[2]):
            assert step_key is not None
            if step_key not in pool_steps:
                continue
            what = (run.run_id, step_key, kind)
            if kind == dg.DagsterEventType.STEP_WORKER_STARTING:
                assert step_key not in opened, what
                opened[step_key] = timestamp
            elif kind in STEP_START_EVENTS:
                assert step_key in opened and step_key not in started, what
                started.add(step_key)
            else:
                assert step_key in started, what
                started.discard(step_key)
                spans.append(Span(f"{run.run_id[:8]} {step_key}", opened.pop(step_key), timestamp))
        assert not opened, f"steps without an end in {run.run_id}: {opened}"
    assert len(spans) >= len(records) * len(DATASETS)

    count, overlapping = most_at_once(spans)
    assert count <= POOL_LIMIT, f"more than {POOL_LIMIT} {SOURCE_POOL} steps at once: {overlapping}"
    assert count == POOL_LIMIT, "the pool limit was never reached; the test exerted no pressure"
