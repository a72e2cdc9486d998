"""A run whose worker is killed outright (SIGKILL) is marked failed, not left STARTED.

dagster-webserver and dagster-daemon run on the production instance config
(deploy/dagster.yaml) with run monitoring's `max_runtime_seconds` lowered to MAX_RUNTIME and
its poll interval to 1 s. One run exports a dataset whose query sleeps in PostgreSQL; once its
query runs, the run worker and the step's process are SIGKILLed (the pids Dagster itself logs):
- alone: the code server that launched the run sees its process die and fails the run within
  seconds ("Run execution process for <run> ...");
- with that code server (a container or host killed whole): nothing is left to notice; the run
  stays STARTED until the daemon's run monitoring fails it past the maximum runtime (3 h in
  production; docs/operations.md). The default run launcher cannot check a worker's health,
  so that timeout is the backstop.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import psycopg
import pytest
import yaml

from export_pipeline_tests.dagster_processes import (
    LOCATION_NAME,
    REPO_ROOT,
    dagster_home,
    dagster_services,
    wait_for,
)

MAX_RUNTIME = 60
PARTITION = "1|2025-03-01"
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
PID = re.compile(r"multiprocess executor: parent process \(pid: (\d+)\)")


def _instance_yaml() -> str:
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    config["run_monitoring"]["max_runtime_seconds"] = MAX_RUNTIME
    config["run_monitoring"]["poll_interval_seconds"] = 1
    return yaml.safe_dump(config, sort_keys=False)


def _params() -> dict[str, Any]:
    customer, month = PARTITION.split("|")
    tags = {"dagster/partition": PARTITION, "dagster/partition/customer": customer}
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


def _run_processes(instance: dg.DagsterInstance, run_id: str) -> list[int] | None:
    """The run worker's pid and its step's, once the step's query is running."""
    worker: list[int] = []
    steps: list[int] = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        match = PID.search(event.message or "")
        if match:
            worker.append(int(match.group(1)))
        if event.event_type == dg.DagsterEventType.STEP_WORKER_STARTED:
            steps.append(int(event.event_specific_data.metadata["pid"].value))  # type: ignore[union-attr]
        if event.event_type == dg.DagsterEventType.STEP_START and worker and steps:
            return worker + steps
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
        row = conn.execute(
            SLEEPING,
        ).fetchone()
    return int(row[0]) if row else 0


def _stop_sleeping_queries(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'PgSleep'"
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "with_code_server", [False, True], ids=["worker", "worker-and-code-server"]
)
def test_run_whose_worker_was_killed_is_marked_failed(
    with_code_server: bool,
    tmp_path: Path,
    demo_dsn: str,
    scratch_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """worker: the code server that launched the run sees its process die and fails the run at
    once. worker-and-code-server (a container killed whole): nothing is left to notice, the
    run stays STARTED until run monitoring fails it past `max_runtime_seconds`."""
    spec = tmp_path / "sleepy.yaml"
    spec.write_text(SPEC)
    home = dagster_home(
        tmp_path, _instance_yaml(), instance_dsn=scratch_dsn, source_dsn=demo_dsn, spec=spec
    )
    monkeypatch.setenv("DAGSTER_PG_URL", home.env["DAGSTER_PG_URL"])
    try:
        with (
            dg.DagsterInstance.from_config(str(home.home)) as instance,
            dagster_services(home) as services,
        ):
            instance.add_dynamic_partitions("customers", [PARTITION.split("|")[0]])
            launched = services.graphql(LAUNCH_RUN, {"params": _params()})["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            run_id = launched["run"]["runId"]
            pids = wait_for("the step to start", 120, lambda: _run_processes(instance, run_id))
            wait_for("the export query", 60, lambda: _sleeping_queries(demo_dsn) or None)
            if with_code_server:
                code_server = psutil.Process(pids[0]).parent()
                assert code_server is not None and "grpc" in " ".join(code_server.cmdline())
                pids.insert(0, code_server.pid)
            _kill_tree(pids)
            killed = time.monotonic()

            def finished() -> dg.DagsterRun | None:
                run = instance.get_run_by_id(run_id)
                return run if run is not None and run.is_finished else None

            run = wait_for("the run to be marked failed", MAX_RUNTIME + 90, finished)
            took = time.monotonic() - killed
            assert run.status == dg.DagsterRunStatus.FAILURE
            messages = [
                e.dagster_event.message or ""
                for e in instance.all_logs(run_id)
                if e.dagster_event is not None
            ]
            if with_code_server:
                assert any(f"maximum runtime of {MAX_RUNTIME} seconds" in m for m in messages)
            else:
                assert any(f"Run execution process for {run_id}" in m for m in messages)
                assert took < MAX_RUNTIME / 2  # not the maximum runtime: the code server
    finally:
        _stop_sleeping_queries(demo_dsn)  # the killed step's query sleeps on in PostgreSQL
