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

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from psycopg import sql

from export_pipeline.errors import first_line
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


@contextmanager
def arrow_connection(
    config: SourceConfig, snapshot: str | None = None
) -> Iterator[adbc.Connection]:
    """An ADBC connection in a verified read-only UTC session; closed on exit.

    With `snapshot` (an id from `pg_export_snapshot()` in a still open transaction) the
    connection's transaction is REPEATABLE READ on that snapshot: it sees exactly what the
    exporting transaction sees.
    """
    try:
        conn = adbc.connect(config.conninfo())  # DB-API: autocommit off, a transaction is open
    except adbc_driver_manager.Error as exc:
        # Not chained: the driver's text may echo the connection string.
        raise SourceConnectionError(
            f"cannot connect to the source database {redact_dsn(config.dsn)} (ADBC)",
            transient=connect_failure_is_transient(str(exc)),
        ) from None
    try:
        with closing(conn.cursor()) as cur:
            if snapshot is not None:
                _import_snapshot(cur, snapshot)
            cur.execute(SESSION_SETTINGS)
            shown = cur.fetchone()
        assert shown is not None
        check_session_settings(shown, "ADBC")
        yield conn
    finally:
        conn.close()


def _import_snapshot(cur: adbc.Cursor, snapshot: str) -> None:
    statement = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
    try:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(statement.as_string())
    except (OSError, adbc_driver_manager.Error) as exc:
        # Transient: the snapshot is gone when its exporting session ended early (a dropped
        # connection); a retry exports a new one.
        raise SourceConnectionError(
            f"the ADBC session could not take the export's snapshot: {first_line(str(exc))}",
            transient=True,
        ) from exc


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
            f"dataset {dataset!r}: export query failed: {first_line(str(exc))}"
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
                f"dataset {dataset!r}: export query failed: {first_line(str(exc))}"
            ) from exc
        yield batch
