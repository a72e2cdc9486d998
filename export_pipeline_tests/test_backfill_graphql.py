"""A partition backfill launched the way the UI launches it: GraphQL against dagster-webserver.

dagster-webserver and dagster-daemon run as subprocesses on a fresh instance that uses the
production instance config (deploy/dagster.yaml: queued runs, one run per customer-month,
the source pool limit, run monitoring) on a scratch database of the test PostgreSQL. The
backfill covers 3 customers x 3 months x every dataset; each of the 27 asset-partitions must
end up materialized with its file on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest

from export_pipeline_tests.helpers import sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CUSTOMERS = ["1", "2", "3"]
MONTHS = ["2025-01-01", "2025-02-01", "2025-03-01"]
DATASETS = ["events", "invoices", "orders"]
STARTUP_DEADLINE_SECONDS = 180
BACKFILL_DEADLINE_SECONDS = 420
pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)
T = TypeVar("T")

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

BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions error { message } }
    ... on PythonError { message }
  }
}
"""

LOCATIONS = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""

# Backfill states from which nothing more happens (BulkActionStatus).
FINAL_STATES = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def service(name: str, args: list[str], env: dict[str, str], logs: Path) -> Iterator[Path]:
    """A subprocess in its own process group, stopped with everything it started."""
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log_path
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; take down any child left in the group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break


def wait_for(what: str, deadline_seconds: float, probe: Callable[[], T | None]) -> T:
    """Poll `probe` until it returns a value, or fail after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_seconds}s waiting for {what}")
        time.sleep(0.5)  # poll interval, not synchronisation: the condition is re-checked


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload["errors"]
    data: dict[str, Any] = payload["data"]
    return data


def location_loaded(url: str) -> bool | None:
    """True once the code location has loaded; raises if it failed to load."""
    try:
        data = graphql(url, LOCATIONS)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None  # the webserver is not answering yet
    entries = data["workspaceOrError"].get("locationEntries") or []
    for entry in entries:
        if entry["loadStatus"] != "LOADED":
            return None
        error = entry["locationOrLoadError"]
        if error and error["__typename"] == "PythonError":
            raise AssertionError(f"code location {entry['name']} failed: {error['message']}")
    return True if entries else None


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def test_partition_backfill_through_graphql(
    tmp_path: Path, demo_dsn: str, scratch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: export_pipeline.definitions\n"
        "      location_name: export_pipeline\n"
        f"      working_directory: {json.dumps(str(REPO_ROOT))}\n"
    )
    storage_dir = tmp_path / "storage"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "DAGSTER_"))},
        "PYTHONPATH": str(REPO_ROOT),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": sqlalchemy_url(scratch_dsn),
        "EXPORT_SOURCE_DSN": demo_dsn,
        "EXPORT_STORAGE_DIR": str(storage_dir),
        "EXPORT_SPEC": str(REPO_ROOT / "exports.yaml"),
    }
    # The test process talks to the same instance (Postgres) to set up and check.
    monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("customers", CUSTOMERS)

    port = free_port()
    url = f"http://127.0.0.1:{port}/graphql"
    webserver_args = [str(BIN / "dagster-webserver"), "-w", str(workspace)]
    webserver_args += ["-h", "127.0.0.1", "-p", str(port)]
    daemon_args = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
    started = time.monotonic()
    with ExitStack() as stack:
        web_log = stack.enter_context(service("webserver", webserver_args, env, tmp_path))
        daemon_log = stack.enter_context(service("daemon", daemon_args, env, tmp_path))
        try:
            wait_for(
                "the webserver and code location",
                STARTUP_DEADLINE_SECONDS,
                lambda: location_loaded(url),
            )
            ready = time.monotonic()
            partitions = [f"{c}|{m}" for c in CUSTOMERS for m in MONTHS]
            params = {
                "assetSelection": [{"path": ["exports", d]} for d in DATASETS],
                "partitionNames": partitions,
                "title": "test backfill",
            }
            launched = graphql(url, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            backfill_id = launched["backfillId"]

            def final_status() -> dict[str, Any] | None:
                result = graphql(url, BACKFILL_STATUS, {"id": backfill_id})
                backfill: dict[str, Any] = result["partitionBackfillOrError"]
                assert backfill["__typename"] == "PartitionBackfill", backfill
                return backfill if backfill["status"] in FINAL_STATES else None

            backfill = wait_for("the backfill", BACKFILL_DEADLINE_SECONDS, final_status)
            drained = time.monotonic()
        except BaseException:
            logger.error("webserver log:\n%s\ndaemon log:\n%s", tail(web_log), tail(daemon_log))
            raise
    logger.info(
        "startup %.1fs, backfill drain %.1fs, total %.1fs",
        ready - started,
        drained - ready,
        drained - started,
    )
    assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, tail(daemon_log))
    assert backfill["numPartitions"] == len(partitions)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        check_runs(instance, backfill_id, partitions)
        check_materializations(instance, partitions)


def check_runs(instance: dg.DagsterInstance, backfill_id: str, partitions: list[str]) -> None:
    """One successful run per customer-month, tagged as the tag concurrency limit expects."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert sorted(run.tags["dagster/partition"] for run in runs) == sorted(partitions)
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}


def check_materializations(instance: dg.DagsterInstance, partitions: list[str]) -> None:
    for dataset in DATASETS:
        key = dg.AssetKey(["exports", dataset])
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=100
        ).records
        by_partition = {r.partition_key: r.asset_materialization for r in records}
        assert sorted(p for p in by_partition if p) == sorted(partitions), dataset
        for partition, materialization in by_partition.items():
            assert materialization is not None
            md = materialization.metadata
            assert {"uri", "sha256", "dagster/row_count"} <= md.keys(), (dataset, partition)
            path = Path(str(md["uri"].value))
            assert path.is_file(), (dataset, partition, path)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == md["sha256"].value
            assert isinstance(md["dagster/row_count"].value, int)
