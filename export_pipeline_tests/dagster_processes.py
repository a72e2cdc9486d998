"""dagster-webserver and dagster-daemon as subprocesses on a test instance, driven through GraphQL.

Shared by the end-to-end tests (test_backfill_graphql.py, test_concurrency_limits.py, ...): a
fresh DAGSTER_HOME with a given dagster.yaml on a scratch PostgreSQL database, a workspace for
`export_pipeline.definitions`, the services in their own process groups (stopped with every
process they started), and polling helpers with deadlines.

Two ways to run them:
- `dagster_services(home)`: webserver and daemon, each loading the code location itself (a
  `python_module` workspace), as `dagster dev` does;
- `e2e_services(...)`: what the end-to-end modules share, once per module: one code server
  (`dagster api grpc`, as the ECS and Kubernetes deployments run one) that the webserver and
  the daemon both use, so the code location is loaded once, on an instance whose daemon
  latencies are lowered where Dagster's instance config allows it (`e2e_instance_yaml`).
"""

from __future__ import annotations

import functools
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest
import yaml

from export_pipeline_tests.helpers import sqlalchemy_url
from export_pipeline_tests.services import scratch_database

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION_NAME = "export_pipeline"
STARTUP_DEADLINE_SECONDS = 180
# What deploy/Dockerfile sets for runs: a ranged run writes its events in batches of 100.
RUN_ENV = {"DAGSTER_EVENT_BATCH_SIZE": "100"}
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
        **RUN_ENV,
        "PYTHONPATH": str(REPO_ROOT),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": sqlalchemy_url(instance_dsn),
        "EXPORT_SOURCE_DSN": source_dsn,
        "EXPORT_STORAGE_DIR": str(tmp_path / "storage"),
        "EXPORT_SPEC": str(spec),
    }
    return DagsterHome(home=home, workspace=workspace, env=env, logs=tmp_path)


def e2e_instance_yaml(edit: Callable[[dict[str, Any]], None] | None = None) -> str:
    """deploy/dagster.yaml (queue, pool, run monitoring as in production) with the daemon's
    latencies lowered where the instance config allows it, then changed by `edit`.

    - The run queue is looked at every second, not every 5 s, and dequeued runs are launched
      on threads (`dequeue_interval_seconds`, `dequeue_use_threads`).
    - Sensors are evaluated on threads, so the run-failure sensors do not wait for each other.
    What Dagster 1.13 does not let an instance configure stays as it is: the backfill daemon
    looks at backfills every 30 s (dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS),
    a sensor is evaluated at most every `minimum_interval_seconds` of its definition (30 s by
    default), and the scheduler once a minute.
    """
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    config["run_coordinator"]["config"] = {
        "dequeue_interval_seconds": 1,
        "dequeue_use_threads": True,
        "dequeue_num_workers": 4,
    }
    config["sensors"] = {"use_threads": True, "num_workers": 4}
    if edit is not None:
        edit(config)
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Services:
    url: str
    web_log: Path
    daemon_log: Path
    code_server_log: Path | None = None
    _start_daemon: Callable[[], object] | None = field(default=None, repr=False)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return graphql(self.url, query, variables)

    def start_daemon(self) -> None:
        """Start dagster-daemon now (for services started with `daemon=False`)."""
        assert self._start_daemon is not None, "the daemon is already running"
        start, self._start_daemon = self._start_daemon, None
        start()

    def logs(self) -> str:
        parts = [f"webserver log:\n{tail(self.web_log)}", f"daemon log:\n{tail(self.daemon_log)}"]
        if self.code_server_log is not None:
            parts.append(f"code server log:\n{tail(self.code_server_log)}")
        return "\n".join(parts)


@contextmanager
def dagster_services(
    instance: DagsterHome, *, daemon: bool = True, code_server: bool = False
) -> Iterator[Services]:
    """dagster-webserver and dagster-daemon on `instance`, once the code location has loaded.

    With `code_server`, one `dagster api grpc` serves the code location to both (and launches
    the runs), instead of each starting its own. With `daemon=False` the daemon starts when
    the body calls `services.start_daemon()` (e.g. after launching backfills, so that its
    first backfill iteration, at start-up, finds them). Everything is stopped on exit; if the
    body (or start-up) fails, the log tails are logged.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/graphql"
    workspace = instance.workspace
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str]) -> Path:
        proc, log = start_service(name, args, instance.env, instance.logs)
        procs.append(proc)
        return log

    services = Services(
        url=url,
        web_log=instance.logs / "webserver.log",
        daemon_log=instance.logs / "daemon.log",
    )
    try:
        if code_server:
            grpc_port = free_port()
            services.code_server_log = start("code-server", code_server_args(grpc_port))
            workspace = instance.logs / "grpc-workspace.yaml"
            workspace.write_text(
                "load_from:\n"
                "  - grpc_server:\n"
                "      host: 127.0.0.1\n"
                f"      port: {grpc_port}\n"
                f"      location_name: {LOCATION_NAME}\n"
            )
            wait_for(
                "the code server",
                STARTUP_DEADLINE_SECONDS,
                lambda: port_open(grpc_port, services.code_server_log),
            )
        webserver_args = [str(BIN / "dagster-webserver"), "-w", str(workspace)]
        webserver_args += ["-h", "127.0.0.1", "-p", str(port)]
        daemon_args = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
        start("webserver", webserver_args)
        services._start_daemon = functools.partial(start, "daemon", daemon_args)
        if daemon:
            services.start_daemon()
        wait_for(
            "the webserver and code location",
            STARTUP_DEADLINE_SECONDS,
            lambda: location_loaded(url),
        )
        yield services
    except BaseException:
        logger.error("%s", services.logs())
        raise
    finally:
        stop_groups(procs)


def code_server_args(port: int) -> list[str]:
    return [
        str(BIN / "dagster"),
        "api",
        "grpc",
        "--module-name",
        "export_pipeline.definitions",
        "--working-directory",
        str(REPO_ROOT),
        "--location-name",
        LOCATION_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def port_open(port: int, log: Path | None) -> bool | None:
    """True once something accepts connections on the port (`dagster api grpc` binds it after
    loading the code); fails if its log shows a traceback (the load failed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        text = tail(log) if log is not None else ""
        if "Traceback (most recent call last)" in text:
            raise AssertionError(f"the code server failed:\n{text}") from None
        return None


@dataclass
class E2E:
    """What an end-to-end module shares: its DAGSTER_HOME, the instance (opened in the test
    process on the same database), the running services and the databases."""

    home: DagsterHome
    instance: dg.DagsterInstance
    services: Services
    source_dsn: str
    root: Path

    @property
    def storage(self) -> Path:
        return Path(self.home.env.get("EXPORT_STORAGE_DIR", self.root / "storage"))


@contextmanager
def e2e_services(
    root: Path,
    pg_server: str,
    *,
    source_dsn: str,
    spec: Path,
    instance_yaml: str | None = None,
    env: Mapping[str, str | None] | None = None,
    customers: list[str] | None = None,
    before_daemon: Callable[[E2E], None] | None = None,
) -> Iterator[E2E]:
    """A module's instance and services: a scratch instance database, DAGSTER_HOME under
    `root`, `env` applied to the services' environment (None removes a variable), the
    `customers` partitions added, then a code server, the webserver and the daemon.

    `before_daemon` runs once the webserver answers and before the daemon starts: what it
    launches is found by the daemon's first iterations, not 30 s later.
    """
    with (
        scratch_database(pg_server, "instance") as instance_dsn,
        pytest.MonkeyPatch.context() as mp,
    ):
        home = dagster_home(
            root,
            instance_yaml or e2e_instance_yaml(),
            instance_dsn=instance_dsn,
            source_dsn=source_dsn,
            spec=spec,
        )
        for name, value in (env or {}).items():
            if value is None:
                home.env.pop(name, None)
            else:
                home.env[name] = value
        # The test process opens the same instance (Postgres) to set up and check.
        mp.setenv("DAGSTER_PG_URL", home.env["DAGSTER_PG_URL"])
        with dg.DagsterInstance.from_config(str(home.home)) as instance:
            if customers:
                instance.add_dynamic_partitions("customers", customers)
            # Without a `before_daemon`, the daemon starts with the webserver.
            with dagster_services(home, daemon=before_daemon is None, code_server=True) as services:
                e2e = E2E(home, instance, services, source_dsn, root)
                if before_daemon is not None:
                    before_daemon(e2e)
                    services.start_daemon()
                yield e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def service(name: str, args: list[str], env: dict[str, str], logs: Path) -> Iterator[Path]:
    """A subprocess in its own process group, stopped with everything it started."""
    proc, log_path = start_service(name, args, env, logs)
    try:
        yield log_path
    finally:
        stop_group(proc)


def start_service(
    name: str, args: list[str], env: dict[str, str], logs: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    """A subprocess in its own process group, its output in logs/<name>.log."""
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
    return proc, log_path


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    stop_groups([proc])


def stop_groups(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, then SIGKILL what is left of a group after its grace; the
    groups stop side by side."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        signalled = []
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
                signalled.append(proc)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        left = []
        for proc in signalled:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                left.append(proc)
                continue
            # the leader is gone; take down any child left in the group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        procs = left
        if not procs:
            break


def wait_for(
    what: str,
    deadline_seconds: float,
    probe: Callable[[], T | None],
    interval: float = 0.5,
) -> T:
    """Poll `probe` until it returns a value, or fail after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_seconds}s waiting for {what}")
        time.sleep(interval)  # poll interval, not synchronisation: the condition is re-checked


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
