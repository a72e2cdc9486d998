"""The daemon runs the production schedule through the run queue on a PostgreSQL-backed instance.

dagster-webserver and dagster-daemon run on deploy/dagster.yaml (Postgres storage, the
QueuedRunCoordinator and its limits). `monthly_exports_schedule` fires on the 1st, so waiting
for a real tick is not an option: the schedule is started with `dagster schedule start` (as an
operator would; it is on by default, so `stop` first), and its stored start time is then moved
back to just before the last 1st at 02:00 UTC. The daemon's scheduler evaluates the tick it
finds due since that start (its normal catch-up path), the run is queued, dequeued by the
daemon's run coordinator, launched as a separate run-worker process, and materializes
`exports/events` for every customer of last month. Nothing here calls the schedule or the job
in-process.

The tick's month is last month by the wall clock, and the demo data is for 2025, so the test's
spec reads a fixed month of the demo (March 2025) whatever month is asked for; the row counts
are then checked against the source.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.scheduler.instigation import (
    InstigatorStatus,
    InstigatorType,
    ScheduleInstigatorData,
    TickStatus,
)

from export_pipeline.partitions import previous_month
from export_pipeline_tests.dagster_processes import (
    BIN,
    REPO_ROOT,
    dagster_home,
    dagster_services,
    wait_for,
)

SCHEDULE = "monthly_exports_schedule"
RUN_LIFECYCLE = [
    dg.DagsterEventType.RUN_ENQUEUED,
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.RUN_SUCCESS,
]
CUSTOMERS = ["1", "2"]
RUN_DEADLINE_SECONDS = 240

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


def last_tick_before(now: datetime) -> datetime:
    """The schedule's last tick at or before `now`: the 1st at 02:00 UTC (the default hour)."""
    tick = now.replace(day=1, hour=2, minute=0, second=0, microsecond=0)
    if tick > now:
        tick = (tick - timedelta(days=1)).replace(day=1)
    return tick


@pytest.mark.slow
def test_daemon_runs_the_monthly_schedule_through_the_queue(
    tmp_path: Path, demo_dsn: str, scratch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "exports.yaml"
    spec.write_text(FIXED_MONTH_SPEC)
    instance_yaml = (REPO_ROOT / "deploy" / "dagster.yaml").read_text()
    home = dagster_home(
        tmp_path, instance_yaml, instance_dsn=scratch_dsn, source_dsn=demo_dsn, spec=spec
    )
    monkeypatch.setenv("DAGSTER_PG_URL", home.env["DAGSTER_PG_URL"])
    tick = last_tick_before(datetime.now(UTC))
    month = previous_month(tick.date())

    with dg.DagsterInstance.from_config(str(home.home)) as instance:
        instance.add_dynamic_partitions("customers", CUSTOMERS)
        # The schedule is on by default (declared in code, nothing stored); stopping and
        # starting it stores its state, with the start time the daemon counts ticks from.
        for command in ("stop", "start"):
            done = subprocess.run(
                [str(BIN / "dagster"), "schedule", command, SCHEDULE, "-w", str(home.workspace)],
                cwd=REPO_ROOT,
                env=home.env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        (state,) = [
            s
            for s in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
            if s.instigator_name == SCHEDULE
        ]
        assert state.status == InstigatorStatus.RUNNING
        data = state.instigator_data
        assert isinstance(data, ScheduleInstigatorData)
        # Started "an hour before the last tick": that tick is due, and only that one.
        earlier = ScheduleInstigatorData(
            data.cron_schedule, start_timestamp=(tick - timedelta(hours=1)).timestamp()
        )
        instance.update_instigator_state(state.with_data(earlier))

        with dagster_services(home):

            def finished_run() -> dg.DagsterRun | None:
                runs = instance.get_runs(
                    filters=dg.RunsFilter(tags={"dagster/schedule_name": SCHEDULE})
                )
                return runs[0] if runs and runs[0].is_finished else None

            run = wait_for("the scheduled run to finish", RUN_DEADLINE_SECONDS, finished_run)

        assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
        assert run.job_name == "monthly_exports_job"
        assert run.tags["dagster/partition"] == month.start.isoformat()
        assert run.tags["export/trigger"] == "schedule"
        # Through the queue: enqueued by the coordinator, then launched by the daemon's
        # queue (RUN_STARTING) in a worker process of its own (RUN_START).
        order = [
            e.dagster_event.event_type
            for e in instance.all_logs(run.run_id)
            if e.dagster_event is not None and e.dagster_event.event_type in RUN_LIFECYCLE
        ]
        assert order == RUN_LIFECYCLE
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        assert [(t.status, t.timestamp) for t in ticks] == [(TickStatus.SUCCESS, tick.timestamp())]
        assert ticks[0].run_ids == [run.run_id]

        with psycopg.connect(demo_dsn) as conn:
            expected = dict(
                conn.execute(
                    "SELECT customer_id::text, count(*) FROM public.events"
                    " WHERE occurred_at >= '2025-03-01' AND occurred_at < '2025-04-01'"
                    " AND customer_id::text = ANY(%s) GROUP BY 1",
                    (CUSTOMERS,),
                ).fetchall()
            )
        assert set(expected) == set(CUSTOMERS) and all(expected.values())
        key = dg.AssetKey(["exports", "events"])
        for customer in CUSTOMERS:
            partition = f"{customer}|{month.start.isoformat()}"
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
            ).records
            assert records, f"no materialization of {partition}"
            materialization = records[0].asset_materialization
            assert materialization is not None
            assert records[0].run_id == run.run_id
            assert materialization.metadata["dagster/row_count"].value == expected[customer]
            stored = tmp_path / "storage" / "exports" / customer / f"{month}" / "events.jsonl"
            assert stored.is_file()
            assert len(stored.read_bytes().splitlines()) == expected[customer]
