"""Export one customer-month of one dataset: the whole engine behind a materialization.

Pure Python, no Dagster. Rows stream from PostgreSQL to the object writer:
- Parquet: ADBC record batches (read ahead on a second thread) -> row groups of
  `parquet_row_group_rows` rows or `parquet_row_group_bytes` -> ParquetWriter -> writer
  (memory: about three batches of `batch_size_hint_bytes` plus one row group);
- CSV / JSON Lines / JSON: COPY chunks -> (JSON array framing) -> (gzip/zstd) -> writer
  (memory: one chunk, plus the S3 writer's in-flight parts).
The object is published only if every row was written; otherwise nothing is left under its key.

Two steps, so that Dagster's IO manager can sit between them: `partition_stream` describes an
export (`ExportStream`: query, format, compression, contract; nothing opened or read), and
`batch.export_batch` writes a range of them, one after the other on one `SourceSession`, each
under its partition's key (`export_key`), and reports what was delivered. `write_object`
writes any content under any key (the manifest uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from datetime import time as time_of_day
from typing import Any, Protocol, cast

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
from psycopg import sql

from export_pipeline.extract.arrow import (
    DEFAULT_BATCH_SIZE_HINT_BYTES,
    batch_cursor,
    begin_arrow_snapshot,
    query_batches,
)
from export_pipeline.extract.connection import SourceConfig, connect
from export_pipeline.extract.contract import (
    ContractedQuery,
    ContractOptions,
    ContractPlan,
    plan_contract,
)
from export_pipeline.extract.copy import DEFAULT_CHUNK_SIZE, copy_chunks
from export_pipeline.extract.estimate import planner_estimate
from export_pipeline.extract.query import (
    Column,
    QueryError,
    customers_query,
    dataset_query,
    describe,
    pg_message,
    render,
)
from export_pipeline.extract.replica import check_replica_caught_up
from export_pipeline.extract.session import SourceSession
from export_pipeline.formats.compress import make_compressor
from export_pipeline.formats.naming import content_type, extension
from export_pipeline.formats.parquet import (
    DEFAULT_ROW_GROUP_BYTES,
    DEFAULT_ROW_GROUP_ROWS,
    write_parquet,
)
from export_pipeline.formats.text import JsonArrayFramer, copy_statement
from export_pipeline.partitions import Month, validate_customer_key
from export_pipeline.progress import ExportMeter
from export_pipeline.spec import Compression, CustomersSpec, DatasetSpec, Format
from export_pipeline.storage.keys import object_key
from export_pipeline.storage.writer import (
    DownloadLink,
    ObjectHeaders,
    ObjectStore,
    ObjectWriter,
    StoredObject,
)
from export_pipeline.streams import prefetch


@dataclass(frozen=True)
class EngineTuning:
    """Knobs that trade memory for speed or file shape; the defaults are measured (bench/).
    The row-group sizes come from the dataset's spec (`row_group_rows`, `row_group_bytes`)."""

    batch_size_hint_bytes: int = DEFAULT_BATCH_SIZE_HINT_BYTES
    # A Parquet row group closes at this many rows or this much Arrow data, whichever is first
    # (formats/parquet.py says why these defaults).
    parquet_row_group_rows: int = DEFAULT_ROW_GROUP_ROWS
    parquet_row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prefetch_batches: int = 1


@dataclass(frozen=True)
class Written:
    """What `ObjectContent.write_to` put into a writer."""

    rows: int
    columns: list[Column]
    # When the source snapshot the rows were read in was taken (None: not read from a source).
    snapshot_at: datetime | None = None


class ObjectContent(Protocol):
    """Bytes that can write themselves into an `ObjectWriter`: all `deliver` needs.

    The object writer (storage) decides where the bytes go; the content decides what they are.
    """

    @property
    def content_type(self) -> str: ...

    def write_to(self, writer: ObjectWriter) -> Written: ...


class FileContent(ObjectContent, Protocol):
    """A dataset's file: an export (or anything else stored as one customer-month's dataset)."""

    @property
    def name(self) -> str: ...

    @property
    def format(self) -> Format: ...

    @property
    def compression(self) -> Compression: ...

    @property
    def extension(self) -> str: ...

    def facts(self) -> dict[str, str | bool]:
        """Settings the file was written with, worth recording next to it."""
        ...


@dataclass(frozen=True)
class ExportStream:
    """A query's rows in one file format: lazy, nothing is read until `write_to`.

    Holds no connection: `write_to` reads through the `SourceSession` it is given (a worker's
    reused connections) or, without one, opens a session of its own and closes it before it
    returns or raises, so an export that is never written holds nothing open.
    One snapshot: the rows, their count and `snapshot_at` come from one REPEATABLE READ
    transaction (text formats: the psycopg connection's; Parquet: the ADBC connection's own),
    begun after the replica check, so the file and its row count are one consistent state of
    the source whatever is written meanwhile. Each export takes a new snapshot, also on a
    reused session. The column types (`describe`, the contract's lookups) are asked once per
    session and dataset.
    Memory while writing: Parquet about (prefetch depth + 2) batches of
    `tuning.batch_size_hint_bytes` plus one pending row group (`tuning.parquet_row_group_rows`
    or `parquet_row_group_bytes`) and the writer's buffers; text formats one COPY chunk.
    """

    source: SourceConfig
    query: sql.Composed
    params: Mapping[str, Any]
    name: str
    format: Format
    compression: Compression
    tuning: EngineTuning = field(default_factory=EngineTuning)
    contract: ContractOptions = field(default_factory=ContractOptions)
    # A read replica must have replayed past this instant first (a partition's month end).
    replayed_past: datetime | None = None

    @property
    def extension(self) -> str:
        return extension(self.format, self.compression)

    @property
    def content_type(self) -> str:
        return content_type(self.format, self.compression)

    def facts(self) -> dict[str, str | bool]:
        """The type-contract options (docs/types.md) the rows were written under."""
        facts: dict[str, str | bool] = {"unrepresentable": self.contract.unrepresentable.value}
        if self.format is Format.CSV:
            facts["csv_formula_guard"] = self.contract.csv_formula_guard
        return facts

    def write_to(
        self,
        writer: ObjectWriter,
        session: SourceSession | None = None,
        meter: ExportMeter | None = None,
    ) -> Written:
        """Stream every row into `writer` (which the caller commits or aborts), reading through
        `session` (or a session of its own). `meter` gets the running counts; without an
        estimate of its own it gets the planner's."""
        if session is None:
            with SourceSession(self.source) as own:
                return self.write_to(writer, own, meter)
        try:
            return self._write(writer, session, meter)
        except BaseException:
            session.after_failure()
            raise

    def _write(
        self, writer: ObjectWriter, session: SourceSession, meter: ExportMeter | None
    ) -> Written:
        """Round trips per export on a session that has exported this dataset before (a range
        of partitions): text formats 3 (BEGIN with `now()`, the COPY, ROLLBACK); Parquet about
        5, all on the ADBC connection. The first export of a dataset also describes the query
        and looks up its column types (2), kept for the session's later exports."""
        conn = session.connection()
        if self.replayed_past is not None and not session.known_primary:
            # Outside any transaction: the export's snapshot is taken after the check.
            if not check_replica_caught_up(conn, self.replayed_past, self.name):
                session.mark_primary()
        query_text = render(conn, self.query, dict(self.params))
        if self.format is not Format.PARQUET:
            snapshot_at = begin_snapshot(conn)
            columns, plan = self._shape(session, conn, query_text)
            if meter is not None and meter.estimate is None:
                meter.estimate = planner_estimate(conn, query_text)
            rows = _write_text(
                conn,
                plan.apply(query_text).text,
                writer,
                self.format,
                self.compression,
                self.name,
                self.tuning,
                meter,
            )
            return Written(rows, columns, snapshot_at)
        # Parquet: the column types come from the psycopg connection (once per session and
        # dataset); the rows, their count and `now()` from one REPEATABLE READ transaction of
        # the ADBC connection, so the file is one consistent state of the source.
        columns, plan = self._shape(session, conn, query_text)
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()  # the describe's transaction: idle, not idle in a transaction
        if meter is not None and meter.estimate is None:
            meter.estimate = planner_estimate(conn, query_text)
        arrow_conn = session.arrow()
        snapshot_at = begin_arrow_snapshot(arrow_conn)
        rows = _write_parquet(
            arrow_conn,
            plan.apply(query_text),
            writer,
            self.compression,
            self.name,
            self.tuning,
            meter,
        )
        arrow_conn.rollback()
        return Written(rows, columns, snapshot_at)

    def _shape(
        self, session: SourceSession, conn: psycopg.Connection, query_text: str
    ) -> tuple[list[Column], ContractPlan]:
        """The query's columns and the contract's rewrite: the same for every partition of the
        dataset, so asked of the server once per session (and connection)."""
        key = (self.name, self.format, self.contract, repr(self.query))
        shape = session.shapes.get(key)
        if shape is None:
            columns = describe(conn, query_text, self.name)
            plan = plan_contract(conn, columns, self.format, self.name, self.contract)
            shape = session.shapes[key] = (columns, plan)
        return shape


@dataclass(frozen=True)
class ExportResult:
    """What was delivered for one customer-month of one dataset (or any other file)."""

    dataset: str
    customer: str
    month: Month
    format: Format
    compression: Compression
    rows: int
    stored: StoredObject
    columns: list[Column]
    duration_seconds: float
    link: DownloadLink | None = field(default=None)
    snapshot_at: datetime | None = field(default=None)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.duration_seconds if self.duration_seconds > 0 else 0.0


def partition_stream(
    source: SourceConfig,
    dataset: DatasetSpec,
    customer: str,
    month: Month,
    tuning: EngineTuning | None = None,
) -> ExportStream:
    """The export of one customer-month of `dataset`, validated but not started."""
    validate_customer_key(customer)
    query, params = dataset_query(dataset, customer, month)
    tuning = tuning or EngineTuning()
    if dataset.row_group_rows is not None:
        tuning = replace(tuning, parquet_row_group_rows=dataset.row_group_rows)
    if dataset.row_group_bytes is not None:
        tuning = replace(tuning, parquet_row_group_bytes=dataset.row_group_bytes)
    return ExportStream(
        source,
        query,
        params,
        name=dataset.name,
        format=dataset.format,
        compression=dataset.compression,
        tuning=tuning,
        contract=ContractOptions.of(dataset),
        replayed_past=datetime.combine(month.end, time_of_day.min, UTC),
    )


def export_key(store: ObjectStore, dataset: str, customer: str, month: Month, ext: str) -> str:
    """The object key of one customer-month of `dataset` with file extension `ext`."""
    return object_key(store.prefix, customer, month, dataset, ext)


def object_headers(content: ObjectContent, key: str) -> ObjectHeaders:
    return ObjectHeaders(content.content_type, key.rsplit("/")[-1])


def write_object(content: ObjectContent, store: ObjectStore, key: str) -> StoredObject:
    """Write `content` to the object `key`, published only when complete.

    Before the first write of a key in a run, remove what an earlier writer of it left when it
    was killed outright (`store.remove_orphans`, batched over every key the run writes), so
    orphans do not wait for a bucket lifecycle rule.
    """
    with store.open_writer(key, object_headers(content, key)) as writer:
        content.write_to(writer)
        return writer.commit()


# One round trip: the transaction, and its first statement, which takes the snapshot.
_BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT now()"


def begin_snapshot(conn: psycopg.Connection) -> datetime:
    """Start a REPEATABLE READ transaction on `conn` (autocommit, as the session's is) and
    return the server's clock when it began (`now()`), in UTC.

    The rows are read in this transaction's snapshot, taken at its first statement, at or
    after this instant: every transaction committed on the source before it is in the file
    (docs/manifest.md). The two statements go in one message (simple query protocol).
    """
    with conn.cursor() as cur:
        cur.execute(_BEGIN_SNAPSHOT)
        cur.nextset()
        row = cur.fetchone()
    assert row is not None
    return row[0].astimezone(UTC)


def _write_parquet(
    conn: adbc.Connection,
    query: ContractedQuery,
    writer: ObjectWriter,
    compression: Compression,
    name: str,
    tuning: EngineTuning,
    meter: ExportMeter | None = None,
) -> int:
    """Batches are read on a background thread while this one encodes the previous one.

    The query runs on that thread too (the driver's execute blocks until the first batch), so
    this thread stays free to take a cancellation; stopping early cancels the statement on
    the server before the thread is joined (streams.prefetch).
    Memory: about (prefetch depth + 2) batches of `batch_size_hint_bytes`, plus one pending
    row group of Arrow data and the Parquet writer's buffers.
    """
    with (
        closing(batch_cursor(conn, tuning.batch_size_hint_bytes)) as cur,
        # closing(): on an error the read-ahead thread is cancelled and joined before the
        # cursor and connection close, never left reading from a closed stream.
        closing(
            prefetch(
                query_batches(cur, query.text, name),
                depth=tuning.prefetch_batches,
                on_stop=cur.adbc_cancel,
            )
        ) as items,
    ):
        schema = next(items)
        assert isinstance(schema, pa.Schema)
        batches = cast(Iterator[pa.RecordBatch], items)
        return write_parquet(
            schema,
            batches if meter is None else _metered(batches, meter, writer),
            writer,
            compression,
            name,
            query.numeric_as_text,
            row_group_rows=tuning.parquet_row_group_rows,
            row_group_bytes=tuning.parquet_row_group_bytes,
        )


def _write_text(
    conn: psycopg.Connection,
    query_text: str,
    writer: ObjectWriter,
    fmt: Format,
    compression: Compression,
    name: str,
    tuning: EngineTuning,
    meter: ExportMeter | None = None,
) -> int:
    """Reads COPY and frames, compresses, hashes and writes each chunk on this same thread.

    PostgreSQL keeps producing into the socket buffer while a chunk is compressed, so this
    overlaps anyway; a second thread measured slower here (GIL hand-offs on a per-row loop).
    Memory: one chunk of `chunk_size` (or one larger row, passed on uncopied), plus the S3
    writer's parts.
    """
    statement = copy_statement(fmt, sql.SQL(query_text))
    framer = JsonArrayFramer() if fmt is Format.JSON else None
    compressor = make_compressor(compression)
    on_chunk = None if meter is None else _copy_meter(meter, writer, fmt)
    with (
        conn.cursor() as cur,
        closing(copy_chunks(cur, statement, tuning.chunk_size, on_chunk)) as chunks,
    ):
        try:
            for chunk in chunks:
                for data in framer.feed_parts(chunk) if framer else (chunk,):
                    writer.write(compressor.compress(data) if compressor else data)
        except psycopg.Error as exc:
            raise QueryError(f"dataset {name!r}: export query failed: {pg_message(exc)}") from exc
        rows = cur.rowcount
    if framer:
        tail = framer.finish()
        writer.write(compressor.compress(tail) if compressor else tail)
    if compressor:
        writer.write(compressor.flush())
    conn.rollback()
    return rows


def _copy_meter(meter: ExportMeter, writer: ObjectWriter, fmt: Format) -> Callable[[int], None]:
    """COPY messages received -> rows (a CSV header is one message) and bytes written."""
    header = 1 if fmt is Format.CSV else 0

    def on_chunk(messages: int) -> None:
        meter.update(max(0, messages - header), writer.tell())

    return on_chunk


def _metered(
    batches: Iterator[pa.RecordBatch], meter: ExportMeter, writer: ObjectWriter
) -> Iterator[pa.RecordBatch]:
    """The batches, reporting rows handed to the Parquet writer and bytes it has written
    (which lag by up to one pending row group)."""
    rows = 0
    for batch in batches:
        yield batch
        rows += batch.num_rows
        meter.update(rows, writer.tell())


def list_customers(source: SourceConfig, customers: CustomersSpec) -> list[str]:
    """Customer keys from the source, as text, sorted."""
    with connect(source) as conn, conn.cursor() as cur:
        try:
            # Empty params: psycopg then reads `%%` in the spec's SQL as a literal `%`.
            cur.execute(customers_query(customers), {})
        except psycopg.Error as exc:
            raise QueryError(f"customers query failed: {pg_message(exc)}") from exc
        return [row[0] for row in cur.fetchall()]
