"""A run whose worker is killed outright (SIGKILL) is marked failed, not left STARTED.

A code server, dagster-webserver and dagster-daemon serve the module (`e2e_services`) on the
production instance config (deploy/dagster.yaml) with run monitoring's `max_runtime_seconds`
lowered to MAX_RUNTIME and its poll interval to 1 s. A run exports a dataset whose query sleeps
in PostgreSQL; once the query runs, the run worker (the one process that executes every step
of a run: the in-process executor; its pid is the one Dagster logs) is SIGKILLed:
- alone: the code server that launched the run sees its process die and fails the run within
  seconds ("Run execution process for <run> ...");
- with that code server (a container or host killed whole): nothing is left to notice; the run
  stays STARTED until the daemon's run monitoring fails it past the maximum runtime (12 h in
  production; docs/operations.md). The default run launcher cannot check a worker's health,
  so that timeout is the backstop.
The second kills the module's code server, so it comes last.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import psutil
import psycopg
import pytest

from export_pipeline.demo.seed import seed_demo
from export_pipeline_tests.dagster_processes import (
    E2E,
    LOCATION_NAME,
    e2e_instance_yaml,
    e2e_services,
    wait_for,
)
from export_pipeline_tests.services import scratch_database

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

MAX_RUNTIME = 10  # the kill comes 1-2 s after the run starts (asserted below)
SLEEP = "pg_sleep(300)"
# The export's query, sleeping (its text is too long for pg_stat_activity to show the SQL).
SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event = 'PgSleep'"
)
SPEC = f"""
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
        AND (SELECT {SLEEP}) IS NOT NULL
    customer_column: customer_id
    format: jsonl
    compression: none
"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
IN_PROCESS = "Executing steps in process"


def _params(partition: str) -> dict[str, Any]:
    customer, month = partition.split("|")
    tags = {"dagster/partition": partition, "dagster/partition/customer": customer}
    tags["dagster/partition/month"] = month
    return {
        "selector": {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["exports", "events"]}],
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Iterator[E2E]:
    root = tmp_path_factory.mktemp("run_monitoring")
    spec = root / "sleepy.yaml"
    spec.write_text(SPEC)

    def monitoring(config: dict[str, Any]) -> None:
        config["run_monitoring"]["max_runtime_seconds"] = MAX_RUNTIME
        config["run_monitoring"]["poll_interval_seconds"] = 1

    with scratch_database(pg_server, "e2e_source") as source_dsn:
        seed_demo(source_dsn, rows=1_000, customers=2, year=2025)
        with e2e_services(
            root,
            pg_server,
            source_dsn=source_dsn,
            spec=spec,
            instance_yaml=e2e_instance_yaml(monitoring),
            customers=["1", "2"],
        ) as services:
            yield services


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid, once the export step has started."""
    pid = None
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and (
            event.message or ""
        ).startswith(IN_PROCESS):
            pid = int(str(event.engine_event_data.metadata["pid"].value))
        if event.event_type == dg.DagsterEventType.STEP_START and pid is not None:
            return pid
    return None


def _kill_tree(pids: list[int]) -> None:
    processes = []
    for pid in pids:
        process = psutil.Process(pid)
        processes += [process, *process.children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    _gone, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, alive


def _sleeping_queries(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(SLEEPING).fetchone()
    return int(row[0]) if row else 0


def _stop_sleeping_queries(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'PgSleep'"
        )


def _kill_mid_query(
    e2e: E2E, partition: str, with_code_server: bool
) -> tuple[dg.DagsterRun, float]:
    """Launch a run of `partition`, SIGKILL its worker (and the code server) once its query
    sleeps; the run once it is finished, and how long after the kill that took."""
    instance = e2e.instance
    try:
        launched = e2e.services.graphql(LAUNCH_RUN, {"params": _params(partition)})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        worker = wait_for("the step to start", 120, lambda: _worker_pid(instance, run_id))
        wait_for("the export query", 60, lambda: _sleeping_queries(e2e.source_dsn) or None)
        pids = [worker]
        if with_code_server:
            code_server = psutil.Process(worker).parent()
            assert code_server is not None and "grpc" in " ".join(code_server.cmdline())
            pids.insert(0, code_server.pid)
        _kill_tree(pids)
        killed = time.monotonic()
        killed_at = time.time()

        def finished() -> dg.DagsterRun | None:
            run = instance.get_run_by_id(run_id)
            return run if run is not None and run.is_finished else None

        run = wait_for("the run to be marked failed", MAX_RUNTIME + 90, finished)
        record = instance.get_run_record_by_id(run_id)
        assert record is not None and record.start_time is not None
        # Killed while the run was within its maximum runtime: what follows is the kill's doing.
        logger.info("killed %.1fs after the run started", killed_at - record.start_time)
        assert killed_at < record.start_time + MAX_RUNTIME, "the kill came too late to tell"
        return run, time.monotonic() - killed
    finally:
        _stop_sleeping_queries(e2e.source_dsn)  # the killed step's query sleeps on in PostgreSQL


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        e.dagster_event.message or ""
        for e in instance.all_logs(run_id)
        if e.dagster_event is not None
    ]


def test_a_run_whose_worker_was_killed_is_failed_by_its_code_server(e2e: E2E) -> None:
    run, took = _kill_mid_query(e2e, "1|2025-03-01", with_code_server=False)
    assert run.status == dg.DagsterRunStatus.FAILURE
    messages = _messages(e2e.instance, run.run_id)
    assert any(f"Run execution process for {run.run_id}" in m for m in messages), messages
    # Not the maximum runtime: the code server, at once.
    assert not any("maximum runtime" in m for m in messages)
    assert took < MAX_RUNTIME


def test_a_run_whose_worker_and_code_server_were_killed_is_failed_by_run_monitoring(
    e2e: E2E,
) -> None:
    run, _ = _kill_mid_query(e2e, "2|2025-03-01", with_code_server=True)
    assert run.status == dg.DagsterRunStatus.FAILURE
    record = e2e.instance.get_run_record_by_id(run.run_id)
    assert record is not None and record.start_time is not None and record.end_time is not None
    assert record.end_time >= record.start_time + MAX_RUNTIME  # failed past the maximum runtime
    messages = _messages(e2e.instance, run.run_id)
    assert any(f"maximum runtime of {MAX_RUNTIME} seconds" in m for m in messages), messages
    assert not any(f"Run execution process for {run.run_id}" in m for m in messages)
