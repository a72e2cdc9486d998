"""Connections to the state database (EXPORT_STATE_DSN) and its schema, created idempotently.

The source database is read-only for the exporter, so its own bookkeeping lives in a separate
database it may write. The schema is created on first use by each process, under an advisory
lock so concurrent first uses (sensor ticks, the CLI) do not race.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict

from export_pipeline.errors import ExportError
from export_pipeline.extract.connection import redact_password

STATE_DSN_VARIABLE = "EXPORT_STATE_DSN"
_SCHEMA_LOCK_KEY = 0x6578_705F_7374_6174  # "exp_stat": any constant shared by all processes
_ready: set[str] = set()

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS export_requests (
        id           bigserial PRIMARY KEY,
        customer     text NOT NULL,
        month        text NOT NULL,
        datasets     text[],
        requester    text NOT NULL DEFAULT '',
        status       text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'queued', 'running', 'succeeded', 'failed')),
        run_key      text,
        run_id       text,
        uris         text[],
        error        text,
        requested_at timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS export_requests_pending
        ON export_requests (id) WHERE status IN ('pending', 'queued')
    """,
    """
    CREATE TABLE IF NOT EXISTS export_failures (
        id            bigserial PRIMARY KEY,
        run_id        text NOT NULL,
        job_name      text NOT NULL,
        partition_key text,
        customer      text,
        month         text,
        datasets      text[] NOT NULL DEFAULT '{}',
        error         text NOT NULL,
        alert_status  text NOT NULL DEFAULT 'not_configured',
        failed_at     timestamptz NOT NULL DEFAULT now(),
        dataset       text
    )
    """,
    # Before ranged runs a run had one row (run_id UNIQUE); now a row per failed partition
    # and dataset. These two upgrade a table created before.
    "ALTER TABLE export_failures ADD COLUMN IF NOT EXISTS dataset text",
    "ALTER TABLE export_failures DROP CONSTRAINT IF EXISTS export_failures_run_id_key",
    """
    CREATE UNIQUE INDEX IF NOT EXISTS export_failures_one_row
        ON export_failures (run_id, (coalesce(partition_key, '')), (coalesce(dataset, '')))
    """,
)


class StateDatabaseError(ExportError, RuntimeError):
    """The state database is not configured or cannot be reached; never contains a password."""


@contextmanager
def connect(dsn: str | None) -> Iterator[psycopg.Connection]:
    """A connection (one transaction until commit) to a state database with its schema."""
    if not dsn:
        raise StateDatabaseError(
            f"{STATE_DSN_VARIABLE} is not set: export requests and failure records need a "
            "writable PostgreSQL database (a libpq URI, not the read-only source)"
        )
    try:
        conn = psycopg.connect(dsn, connect_timeout=10, application_name="export_pipeline_state")
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise StateDatabaseError(_scrub(str(exc), dsn)) from None
    try:
        if dsn not in _ready:
            ensure_schema(conn)
            _ready.add(dsn)
        yield conn
    finally:
        conn.close()


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the tables if missing; safe to call any number of times, concurrently."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
        for statement in SCHEMA:
            conn.execute(statement)  # constant DDL, no parameters


def _scrub(message: str, dsn: str) -> str:
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return f"{STATE_DSN_VARIABLE} is not a valid libpq connection string or URI"
    message = redact_password(message, dsn)
    return f"cannot connect to the state database ({STATE_DSN_VARIABLE}): {message.strip()}"
