"""The daemon runs the production schedule through the run queue on a PostgreSQL-backed instance.

A code server, dagster-webserver and dagster-daemon run on deploy/dagster.yaml (Postgres
storage, the QueuedRunCoordinator and its limits; the queue looked at every second).
`monthly_exports_schedule` fires on the 1st, so waiting for a real tick is not an option: before
the daemon starts, the schedule is switched off and on through GraphQL (as the UI's toggle
does; it is on by default, with no stored state), and its stored start time is then moved back
to an hour before the last 1st at 02:00 UTC. The daemon's scheduler evaluates, at its first
iteration, the tick it finds due since that start (its normal catch-up path): the schedule asks
for ranged runs of `exports_job`, which are queued, dequeued by the daemon's run coordinator,
launched as run-worker processes by the code server, and export last month for every customer.
Nothing here calls the schedule or the job in-process.

The tick's month is last month by the wall clock, and the demo data is for 2025, so the test's
spec reads a fixed month of the demo (March 2025) whatever month is asked for; the row counts
are then checked against the source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    ScheduleInstigatorData,
    TickStatus,
)

from export_pipeline.dagster_private import run_partition_range
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.partitions import partition_key, previous_month
from export_pipeline_tests.dagster_processes import (
    E2E,
    LOCATION_NAME,
    e2e_services,
    wait_for,
)

pytestmark = pytest.mark.slow

SCHEDULE = "monthly_exports_schedule"
RUN_LIFECYCLE = [
    dg.DagsterEventType.RUN_ENQUEUED,
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.RUN_SUCCESS,
]
CUSTOMERS = ["1", "2", "3", "4", "5"]
RUN_DEADLINE_SECONDS = 240
EVENTS = dg.AssetKey(["exports", "events"])

FIXED_MONTH_SPEC = """
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
        AND e.occurred_at >= '2025-03-01' AND e.occurred_at < '2025-04-01'
    customer_column: customer_id
    format: jsonl
    compression: none
"""

SCHEDULE_STATE_ID = """
query($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { scheduleState { id status } }
  }
}
"""
STOP_SCHEDULE = """
mutation($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}
"""
START_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}
"""


def last_tick_before(now: datetime) -> datetime:
    """The schedule's last tick at or before `now`: the 1st at 02:00 UTC (the default hour)."""
    tick = now.replace(day=1, hour=2, minute=0, second=0, microsecond=0)
    if tick > now:
        tick = (tick - timedelta(days=1)).replace(day=1)
    return tick


def schedule_state(instance: dg.DagsterInstance) -> InstigatorState:
    (state,) = [
        s
        for s in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
        if s.instigator_name == SCHEDULE
    ]
    return state


@pytest.fixture(scope="module")
def tick() -> datetime:
    return last_tick_before(datetime.now(UTC))


@pytest.fixture(scope="module")
def e2e(
    tmp_path_factory: pytest.TempPathFactory, pg_server: str, demo_dsn: str, tick: datetime
) -> Iterator[E2E]:
    root = tmp_path_factory.mktemp("scheduled_run")
    spec = root / "exports.yaml"
    spec.write_text(FIXED_MONTH_SPEC)

    def start_schedule_an_hour_before_the_tick(e2e: E2E) -> None:
        selector = {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": "__repository__",
            "scheduleName": SCHEDULE,
        }
        # On by default (declared in code, nothing stored): the UI's toggle off and on stores
        # its state, with the start time the daemon counts ticks from.
        found = e2e.services.graphql(SCHEDULE_STATE_ID, {"selector": selector})["scheduleOrError"]
        assert found["__typename"] == "Schedule", found
        assert found["scheduleState"]["status"] == "RUNNING"
        stopped = e2e.services.graphql(STOP_SCHEDULE, {"id": found["scheduleState"]["id"]})
        assert stopped["stopRunningSchedule"]["__typename"] == "ScheduleStateResult", stopped
        started = e2e.services.graphql(START_SCHEDULE, {"selector": selector})["startSchedule"]
        assert started["__typename"] == "ScheduleStateResult", started
        assert started["scheduleState"]["status"] == "RUNNING"
        state = schedule_state(e2e.instance)
        assert state.status == InstigatorStatus.RUNNING
        data = state.instigator_data
        assert isinstance(data, ScheduleInstigatorData)
        # Started "an hour before the last tick": that tick is due, and only that one.
        earlier = ScheduleInstigatorData(
            data.cron_schedule, start_timestamp=(tick - timedelta(hours=1)).timestamp()
        )
        e2e.instance.update_instigator_state(state.with_data(earlier))

    with e2e_services(
        root,
        pg_server,
        source_dsn=demo_dsn,
        spec=spec,
        customers=CUSTOMERS,
        before_daemon=start_schedule_an_hour_before_the_tick,
    ) as services:
        yield services


def test_daemon_runs_the_monthly_schedule_through_the_queue(
    e2e: E2E, demo_dsn: str, tick: datetime
) -> None:
    instance = e2e.instance
    month = previous_month(tick.date())
    state = schedule_state(instance)

    def finished_tick() -> list[dg.DagsterRun] | None:
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        if not ticks or ticks[0].status == TickStatus.STARTED:
            return None
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/schedule_name": SCHEDULE}))
        return list(runs) if runs and all(run.is_finished for run in runs) else None

    runs = wait_for("the scheduled run to finish", RUN_DEADLINE_SECONDS, finished_tick)

    # One tick, the due one, and one ranged run of exports_job for the month's 5 customers.
    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
    assert [(t.status, t.timestamp) for t in ticks] == [(TickStatus.SUCCESS, tick.timestamp())]
    (run,) = runs
    assert ticks[0].run_ids == [run.run_id]
    assert ticks[0].run_keys == [f"monthly-{month}-0"]
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
    assert run.job_name == "exports_job"
    assert run.tags["export/trigger"] == "schedule"
    assert run_partition_range(run) == (
        partition_key(CUSTOMERS[0], month),
        partition_key(CUSTOMERS[-1], month),
    )
    # Through the queue: enqueued by the coordinator, then launched by the daemon's
    # queue (RUN_STARTING) in a worker process of its own (RUN_START).
    order = [
        e.dagster_event.event_type
        for e in instance.all_logs(run.run_id)
        if e.dagster_event is not None and e.dagster_event.event_type in RUN_LIFECYCLE
    ]
    assert order == RUN_LIFECYCLE

    with psycopg.connect(demo_dsn) as conn:
        expected: dict[str, int] = dict(
            conn.execute(
                "SELECT customer_id::text, count(*) FROM public.events"
                " WHERE occurred_at >= '2025-03-01' AND occurred_at < '2025-04-01'"
                " AND customer_id::text = ANY(%s) GROUP BY 1",
                (CUSTOMERS,),
            ).fetchall()
        )
    assert set(expected) == set(CUSTOMERS) and all(expected.values())
    partitions = [partition_key(c, month) for c in CUSTOMERS]
    # Every customer got last month exactly once: one materialization of its export and one of
    # its manifest, all from the scheduled run; nothing else was materialized.
    for key in (EVENTS, MANIFEST_ASSET_KEY):
        records = instance.fetch_materializations(key, limit=100).records
        assert Counter(r.partition_key for r in records) == Counter(partitions), key
        assert {r.run_id for r in records} == {run.run_id}, key
    for customer in CUSTOMERS:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=EVENTS, asset_partitions=[partition_key(customer, month)]
            ),
            limit=10,
        ).records
        materialization = record.asset_materialization
        assert materialization is not None
        assert materialization.metadata["dagster/row_count"].value == expected[customer]
        stored = e2e.storage / "exports" / customer / f"{month}" / "events.jsonl"
        assert str(materialization.metadata["uri"].value) == str(stored)
        assert len(stored.read_bytes().splitlines()) == expected[customer]
        assert (stored.parent / "manifest.json").is_file()
