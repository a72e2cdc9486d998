"""dagster-webserver and dagster-daemon as subprocesses on a test instance, driven through GraphQL.

Shared by the end-to-end tests (test_backfill_graphql.py, test_concurrency_limits.py): a fresh
DAGSTER_HOME with a given dagster.yaml on a scratch PostgreSQL database, a workspace that loads
`export_pipeline.definitions`, both services in their own process groups (stopped with every
process they started), and polling helpers with deadlines.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from export_pipeline_tests.helpers import sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION_NAME = "export_pipeline"
STARTUP_DEADLINE_SECONDS = 180
logger = logging.getLogger(__name__)
T = TypeVar("T")

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


@dataclass(frozen=True)
class DagsterHome:
    """A DAGSTER_HOME and the environment the services (and the test process) use with it."""

    home: Path
    workspace: Path
    env: dict[str, str]
    logs: Path


def dagster_home(
    tmp_path: Path,
    instance_yaml: str,
    *,
    instance_dsn: str,
    source_dsn: str,
    spec: Path = REPO_ROOT / "exports.yaml",
) -> DagsterHome:
    """A fresh DAGSTER_HOME holding `instance_yaml`, its storage on `instance_dsn`.

    The environment points the code location at `source_dsn` and `spec`, with exports written
    under tmp_path/storage. The caller sets DAGSTER_PG_URL in its own process (env has it) to
    open the same instance with `DagsterInstance.from_config(home)`.
    """
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: export_pipeline.definitions\n"
        f"      location_name: {LOCATION_NAME}\n"
        f"      working_directory: {json.dumps(str(REPO_ROOT))}\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "DAGSTER_"))},
        "PYTHONPATH": str(REPO_ROOT),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": sqlalchemy_url(instance_dsn),
        "EXPORT_SOURCE_DSN": source_dsn,
        "EXPORT_STORAGE_DIR": str(tmp_path / "storage"),
        "EXPORT_SPEC": str(spec),
    }
    return DagsterHome(home=home, workspace=workspace, env=env, logs=tmp_path)


@dataclass(frozen=True)
class Services:
    url: str
    web_log: Path
    daemon_log: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return graphql(self.url, query, variables)

    def logs(self) -> str:
        return f"webserver log:\n{tail(self.web_log)}\ndaemon log:\n{tail(self.daemon_log)}"


@contextmanager
def dagster_services(instance: DagsterHome) -> Iterator[Services]:
    """dagster-webserver and dagster-daemon on `instance`, once the code location has loaded.

    Both are stopped on exit; if the body (or start-up) fails, their log tails are logged.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/graphql"
    workspace = str(instance.workspace)
    webserver_args = [str(BIN / "dagster-webserver"), "-w", workspace]
    webserver_args += ["-h", "127.0.0.1", "-p", str(port)]
    daemon_args = [str(BIN / "dagster-daemon"), "run", "-w", workspace]
    with ExitStack() as stack:
        web_log = stack.enter_context(
            service("webserver", webserver_args, instance.env, instance.logs)
        )
        daemon_log = stack.enter_context(
            service("daemon", daemon_args, instance.env, instance.logs)
        )
        services = Services(url=url, web_log=web_log, daemon_log=daemon_log)
        try:
            wait_for(
                "the webserver and code location",
                STARTUP_DEADLINE_SECONDS,
                lambda: location_loaded(url),
            )
            yield services
        except BaseException:
            logger.error("%s", services.logs())
            raise


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
