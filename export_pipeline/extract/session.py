"""One worker's source connections, reused from export to export (no Dagster here).

A run that exports hundreds of partitions must not open a backend for each: over TLS to a
managed PostgreSQL a new session costs milliseconds (ADBC's about 64 ms here, with its catalog
queries), and the source's `max_connections` is shared with the application. So a
`SourceSession` holds:
- one psycopg connection: the replica check, `describe`, the contract's type lookups, the
  snapshot, text formats' COPY, and the partition locks below;
- one ADBC connection, opened when the first Parquet export needs it: Parquet rows.
Each is opened on first use, and its session settings are verified once (`SESSION_SETTINGS`).
Every export reads in a REPEATABLE READ transaction of its own, so each export reads its own,
fresh snapshot, exactly as with new connections; what describes a dataset's query (columns,
the contract's rewrite) is asked once per connection (`shapes`). A connection that broke (a
dropped backend, a server restart) is closed, and the next export opens a new one.

Partition locks: `claim` takes a session-level advisory lock per key (a customer-month), so
two runs never write the same customer-month at once. They are held until `close()` (or the
backend ends: a killed process leaves none behind) and taken again after a reconnect.
Advisory locks work on a read replica and in read-only sessions; they are local to one
server, as the exported snapshot already is: `EXPORT_SOURCE_DSN` must name one server.
"""

from __future__ import annotations

import hashlib
import select
from types import TracebackType
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import psycopg

from export_pipeline.errors import ExportError, driver_message
from export_pipeline.extract.arrow import open_arrow_connection
from export_pipeline.extract.connection import SourceConfig, SourceConnectionError, open_connection

# How long a claim waits for locks another run holds before it fails (transient, retried):
# a run waiting here holds a run slot and a pool slot, so it must give up eventually.
DEFAULT_LOCK_WAIT_SECONDS = 300
_LOCK_NAMESPACE = b"export_pipeline/partition-lock/v1"


class PartitionBusyError(ExportError):
    """Another run is writing some of the claimed customer-months (transient)."""


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory lock key for `parts` (e.g. storage, customer, month)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8, key=_LOCK_NAMESPACE)
    return int.from_bytes(digest.digest(), "big", signed=True)


class SourceSession:
    """The source connections of one worker; see the module docstring. Not thread-safe: one
    export at a time. Use as a context manager, or call `close()`."""

    def __init__(
        self, config: SourceConfig, lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS
    ) -> None:
        self.config = config
        self.lock_wait_seconds = lock_wait_seconds
        self._conn: psycopg.Connection | None = None
        self._arrow: adbc.Connection | None = None
        self._claimed: dict[int, str] = {}  # lock key -> what it protects (for messages)
        self._primary = False  # the server said it is not in recovery (cannot change back)
        # What describe and the contract found for a query shape (ExportStream._shape):
        # asked once per connection, so a reconnect asks again.
        self.shapes: dict[object, Any] = {}
        self.connects = 0  # new backends opened (psycopg and ADBC), for tests and benchmarks
        # Times the partition locks were taken again on a new backend: they were not held in
        # between, so whoever relies on them must check again what it withdrew.
        self.relocks = 0

    # -- connections -----------------------------------------------------------------------
    def connection(self) -> psycopg.Connection:
        """The psycopg connection (REPEATABLE READ, read-only, settings verified), opened on
        first use or after a break; the partition locks are taken again on a new one."""
        if self._conn is not None and not _alive(self._conn):
            self._discard()
        if self._conn is None:
            self._conn = open_connection(self.config)
            self.connects += 1
            self._primary = False
            if self._claimed:
                keys = dict(self._claimed)
                self._claimed.clear()
                self.claim(keys)  # the locks ended with the old backend
                # Another run may have written some of these customer-months meanwhile.
                self.relocks += 1
        return self._conn

    def arrow(self) -> adbc.Connection:
        """The ADBC connection (settings verified once), opened on first use or after a break.
        Its DB-API transaction is open: the caller sets it up and ends it per export."""
        if self._arrow is None:
            self._arrow = open_arrow_connection(self.config)
            self.connects += 1
        return self._arrow

    @property
    def known_primary(self) -> bool:
        """True once this connection's server said it is not a replica (a replica can be
        promoted, but a primary never becomes a replica without ending the connection)."""
        return self._primary and self._conn is not None

    def mark_primary(self) -> None:
        self._primary = True

    def after_failure(self) -> None:
        """After an export failed: end its transactions; close connections that broke, so the
        next export opens new ones."""
        conn = self._conn
        if conn is not None:
            if conn.closed or conn.broken:
                self._discard()
            else:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._discard()
        arrow_conn = self._arrow
        if arrow_conn is not None:
            try:
                arrow_conn.rollback()
            except Exception:  # the driver reports a dead backend in several ways
                self._arrow = None
                _close_quietly(arrow_conn)

    def _discard(self) -> None:
        self.shapes.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    # -- partition locks -------------------------------------------------------------------
    def claim(self, keys: dict[int, str]) -> set[int]:
        """Hold an advisory lock for each key (key -> what it protects, for messages), waiting
        at most `lock_wait_seconds` for locks another session holds; return the keys this
        session did not hold before. Locks are taken in key order, so two sessions claiming
        overlapping sets cannot deadlock each other. Raises `PartitionBusyError` (transient)
        when the wait runs out."""
        conn = self.connection()  # a new backend takes the held locks again first
        wanted = sorted(k for k in keys if k not in self._claimed)
        if not wanted:
            return set()
        timeout_ms = max(1, int(self.lock_wait_seconds * 1000))
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{timeout_ms}ms",))
                conn.execute(
                    "SELECT count(pg_advisory_lock(k)) FROM unnest(%s::bigint[]) AS k", (wanted,)
                )
        except psycopg.errors.LockNotAvailable as exc:
            # Locks taken before the timeout stay held (session level): release them, so this
            # session holds exactly what it claimed successfully before.
            self._unlock(wanted)
            busy = sorted({keys[k] for k in wanted})
            raise PartitionBusyError(
                f"{len(busy)} customer-month(s) are being written by another run (or "
                f"`export-pipeline run`) for more than {self.lock_wait_seconds:.0f}s, e.g. "
                f"{', '.join(busy[:5])}; retried later",
                transient=True,
            ) from exc
        except psycopg.OperationalError as exc:
            # The backend ended under the claim (after `_alive` found it idle and well): the
            # locks held end with it; the next `connection()` takes them again (`relocks`).
            self._discard()
            raise SourceConnectionError(
                "lost the source connection while taking the partition locks: "
                f"{driver_message(str(exc))}",
                transient=True,
            ) from exc
        self._claimed.update({k: keys[k] for k in wanted})
        return set(wanted)

    def _unlock(self, keys: list[int]) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_unlock(k) FROM unnest(%s::bigint[]) AS k", (keys,))
        except psycopg.Error:
            self._discard()  # the backend ends, and its locks with it

    @property
    def claimed(self) -> int:
        return len(self._claimed)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close both connections; the partition locks end with the psycopg backend."""
        self._claimed.clear()
        arrow_conn, self._arrow = self._arrow, None
        if arrow_conn is not None:
            _close_quietly(arrow_conn)
        self._discard()

    def __enter__(self) -> SourceSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _alive(conn: psycopg.Connection) -> bool:
    """False if the idle connection is known dead or dying: closed, broken, or anything
    arrived on it since the last export. An idle session listens to nothing, so what arrives
    is the server's goodbye (`pg_terminate_backend`, a shutdown: a FATAL message, then the end
    of the stream; the two may arrive apart). Looks at the socket without reading, without a
    round trip and without blocking."""
    if conn.closed or conn.broken:
        return False
    try:
        return not select.select([conn.fileno()], [], [], 0)[0]
    except (OSError, ValueError):
        return False


def _close_quietly(conn: psycopg.Connection | adbc.Connection) -> None:
    try:
        conn.close()
    except Exception:  # already dead: nothing to release
        pass
