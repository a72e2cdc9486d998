"""Arrow record batches from PostgreSQL through the ADBC driver (binary COPY, decoded in C++).

Memory: one batch of about `batch_size_hint_bytes` at a time (plus the driver's read buffer).
Parquet row groups are gathered from several batches (formats/parquet.py), so the batch size
no longer sets the row-group size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa

from export_pipeline.errors import first_line
from export_pipeline.extract.connection import (
    SourceConfig,
    SourceConnectionError,
    connect_failure_is_transient,
    redact_dsn,
)
from export_pipeline.extract.query import QueryError

# 2 MiB: since row groups are gathered from batches (issue 11), the batch size only costs memory
# (the driver's buffers, the read-ahead batch); 4 MiB put the Parquet peak RSS over 200 MB with
# 128k-row groups, 1 MiB was 4% slower. See bench/RESULTS.md.
DEFAULT_BATCH_SIZE_HINT_BYTES = 2 * 1024 * 1024


@contextmanager
def record_batches(
    config: SourceConfig,
    query_text: str,
    batch_size_hint_bytes: int = DEFAULT_BATCH_SIZE_HINT_BYTES,
) -> Iterator[pa.RecordBatchReader]:
    """A reader over the query's result; the schema is known before the first batch."""
    try:
        conn = adbc.connect(config.conninfo())
    except adbc_driver_manager.Error as exc:
        # Not chained: the driver's text may echo the connection string.
        raise SourceConnectionError(
            f"cannot connect to the source database {redact_dsn(config.dsn)} (ADBC)",
            transient=connect_failure_is_transient(str(exc)),
        ) from None
    try:
        cur = conn.cursor()
        cur.adbc_statement.set_options(
            **{"adbc.postgresql.batch_size_hint_bytes": str(int(batch_size_hint_bytes))}
        )
        try:
            cur.execute(query_text)
        except adbc_driver_manager.Error as exc:
            raise QueryError(f"export query failed: {first_line(str(exc))}") from exc
        yield cur.fetch_record_batch()
    finally:
        conn.close()


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
