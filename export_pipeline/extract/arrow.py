"""Arrow record batches from PostgreSQL through the ADBC driver (binary COPY, decoded in C++).

Memory: one batch of about `batch_size_hint_bytes` at a time (plus the driver's read buffer).
Parquet row groups are gathered from several batches (formats/parquet.py), so the batch size
no longer sets the row-group size.

The driver's `execute` blocks until the first batch has arrived, in C, where no Python signal
handler runs. So `query_batches` is meant to run on the read-ahead thread (streams.prefetch),
which leaves the caller's thread free to take a cancellation; `cursor.adbc_cancel()` (a
PostgreSQL cancel request) then ends the query on the server and unblocks the reading thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

from export_pipeline.errors import driver_message
from export_pipeline.extract.connection import (
    SESSION_SETTINGS,
    SourceConfig,
    SourceConnectionError,
    check_session_settings,
    connect_failure_is_transient,
    redact_dsn,
)
from export_pipeline.extract.query import QueryError

# 2 MiB: since row groups are gathered from batches (issue 11), the batch size only costs memory
# (the driver's buffers, the read-ahead batch); 4 MiB put the Parquet peak RSS over 200 MB with
# 128k-row groups, 1 MiB was 4% slower. See bench/RESULTS.md.
DEFAULT_BATCH_SIZE_HINT_BYTES = 2 * 1024 * 1024


def open_arrow_connection(config: SourceConfig) -> adbc.Connection:
    """An ADBC connection in a verified read-only UTC session; the caller closes it.

    DB-API: autocommit is off, so a transaction is always open; after `rollback()` the next
    statement is the first of a new one (where an export sets its isolation level).
    """
    try:
        conn = adbc.connect(config.conninfo())
    except adbc_driver_manager.Error as exc:
        # Not chained: the driver's text may echo the connection string.
        raise SourceConnectionError(
            f"cannot connect to the source database {redact_dsn(config.dsn)} (ADBC)",
            transient=connect_failure_is_transient(str(exc)),
        ) from None
    try:
        with closing(conn.cursor()) as cur:
            cur.execute(SESSION_SETTINGS)
            shown = cur.fetchone()
        assert shown is not None
        check_session_settings(shown, "ADBC")
        conn.rollback()
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def arrow_connection(config: SourceConfig) -> Iterator[adbc.Connection]:
    """`open_arrow_connection`, closed on exit."""
    conn = open_arrow_connection(config)
    try:
        yield conn
    finally:
        conn.close()


def begin_arrow_snapshot(conn: adbc.Connection) -> datetime:
    """Make `conn`'s new transaction (after a `rollback()`) REPEATABLE READ and return the
    server's clock when it began (`now()`), whose statement takes the snapshot the rows are
    then read in: every transaction committed before that instant is in the file."""
    try:
        with closing(conn.cursor()) as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SELECT now()")
            row = cur.fetchone()
    except (OSError, adbc_driver_manager.Error) as exc:
        # Transient: a dropped connection (its backend ended since the last export) is found
        # here, at the export's first round trip; the retry opens a new one.
        raise SourceConnectionError(
            f"the ADBC session could not take the export's snapshot: {driver_message(str(exc))}",
            transient=True,
        ) from exc
    assert row is not None
    return row[0].astimezone(UTC)


def batch_cursor(
    conn: adbc.Connection, batch_size_hint_bytes: int = DEFAULT_BATCH_SIZE_HINT_BYTES
) -> adbc.Cursor:
    """A cursor whose query results arrive in batches of about `batch_size_hint_bytes`."""
    cur = conn.cursor()
    cur.adbc_statement.set_options(
        **{"adbc.postgresql.batch_size_hint_bytes": str(int(batch_size_hint_bytes))}
    )
    return cur


def query_batches(
    cur: adbc.Cursor, query_text: str, dataset: str
) -> Iterator[pa.Schema | pa.RecordBatch]:
    """Run the query; yield its schema (known before the first row), then its batches.

    A failure on the server (or a cancel) becomes one QueryError naming the dataset.
    """
    try:
        cur.execute(query_text)
        reader = cur.fetch_record_batch()
    except (OSError, adbc_driver_manager.Error) as exc:
        raise QueryError(
            f"dataset {dataset!r}: export query failed: {driver_message(str(exc))}"
        ) from exc
    yield reader.schema
    yield from read_batches(reader, dataset)


def read_batches(reader: pa.RecordBatchReader, dataset: str) -> Iterator[pa.RecordBatch]:
    """The reader's batches; a failure on the server becomes one QueryError."""
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (OSError, adbc_driver_manager.Error) as exc:
            raise QueryError(
                f"dataset {dataset!r}: export query failed: {driver_message(str(exc))}"
            ) from exc
        yield batch
