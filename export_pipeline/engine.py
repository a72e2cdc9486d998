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
`publish` writes any `FileContent` under its partition's key and reports what was delivered.
`export_partition` is both in one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as time_of_day
from typing import Any, Protocol, cast

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
from psycopg import sql

from export_pipeline.extract.arrow import (
    DEFAULT_BATCH_SIZE_HINT_BYTES,
    arrow_connection,
    batch_cursor,
    query_batches,
)
from export_pipeline.extract.connection import SourceConfig, connect, export_snapshot
from export_pipeline.extract.contract import ContractedQuery, ContractOptions, contract_query
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
from export_pipeline.formats.compress import make_compressor
from export_pipeline.formats.naming import content_type, extension
from export_pipeline.formats.parquet import (
    DEFAULT_ROW_GROUP_BYTES,
    DEFAULT_ROW_GROUP_ROWS,
    write_parquet,
)
from export_pipeline.formats.text import JsonArrayFramer, copy_statement
from export_pipeline.partitions import Month, validate_customer_key
from export_pipeline.progress import ProgressMeter, ProgressReporting
from export_pipeline.spec import Compression, CustomersSpec, DatasetSpec, Format
from export_pipeline.storage.keys import manifest_key, object_key, success_key
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
    """Knobs that trade memory for speed or file shape; the defaults are measured (bench/)."""

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

    Holds no connection: `write_to` opens the source connection(s) it needs and closes them
    before it returns or raises, so an export that is never written holds nothing open.
    One snapshot: the replica check, `describe`, the contract's type lookups and the read all
    see the data as of the export's first statement (REPEATABLE READ; Parquet's ADBC session
    imports the psycopg transaction's snapshot), so the file and its row count are one
    consistent state of the source whatever is written meanwhile.
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
    # Progress reports while writing (progress.py); None: none, and no estimate is asked for.
    progress: ProgressReporting | None = None

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

    def write_to(self, writer: ObjectWriter) -> Written:
        """Stream every row into `writer` (which the caller commits or aborts)."""
        with connect(self.source) as conn:
            if self.replayed_past is not None:
                check_replica_caught_up(conn, self.replayed_past, self.name)
                # REPEATABLE READ took its snapshot at the check's first statement; end that
                # transaction so the export's snapshot is taken after the replay was checked.
                conn.rollback()
            query_text = render(conn, self.query, dict(self.params))
            columns = describe(conn, query_text, self.name)
            contracted = contract_query(
                conn, query_text, columns, self.format, self.name, self.contract
            )
            snapshot_at = _transaction_start(conn)
            meter = self._meter(conn, query_text)
            if self.format is not Format.PARQUET:
                rows = _write_text(
                    conn,
                    contracted.text,
                    writer,
                    self.format,
                    self.compression,
                    self.name,
                    self.tuning,
                    meter,
                )
                return Written(rows, columns, snapshot_at)
            # Parquet reads through ADBC's own connection, on the psycopg transaction's
            # snapshot. Once imported, the psycopg session ends (before the query starts), so an
            # export holds two backends for a few milliseconds only.
            snapshot = export_snapshot(conn)
            with arrow_connection(self.source, snapshot) as arrow_conn:
                conn.close()
                rows = _write_parquet(
                    arrow_conn,
                    contracted,
                    writer,
                    self.compression,
                    self.name,
                    self.tuning,
                    meter,
                )
        return Written(rows, columns, snapshot_at)

    def _meter(self, conn: psycopg.Connection, query_text: str) -> ProgressMeter | None:
        """The progress meter, with the caller's estimate or else the planner's."""
        if self.progress is None:
            return None
        estimate = self.progress.estimate or planner_estimate(conn, query_text)
        return self.progress.meter(estimate)


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
    return ExportStream(
        source,
        query,
        params,
        name=dataset.name,
        format=dataset.format,
        compression=dataset.compression,
        tuning=tuning or EngineTuning(),
        contract=ContractOptions.of(dataset),
        replayed_past=datetime.combine(month.end, time_of_day.min, UTC),
    )


def export_key(store: ObjectStore, dataset: str, customer: str, month: Month, ext: str) -> str:
    """The object key of one customer-month of `dataset` with file extension `ext`."""
    return object_key(store.prefix, customer, month, dataset, ext)


def publish(
    content: FileContent,
    store: ObjectStore,
    dataset: str,
    customer: str,
    month: Month,
    sign_link: bool = True,
) -> ExportResult:
    """Write `content` as the customer-month's object of `dataset`; return what was delivered.

    The object appears under its key only once complete (see `storage.writer`). The
    customer-month's delivery manifest is withdrawn (`invalidate_delivery`) before and again
    after: it would no longer describe the objects once this one is replaced, or if this export
    fails, and another run may have written one meanwhile. With `sign_link` a
    presigned download link comes back too (S3 only; a bearer credential).
    """
    started = time.perf_counter()
    key = export_key(store, dataset, customer, month, content.extension)
    invalidate_delivery(store, customer, month)
    delivery = deliver(content, store, key)
    invalidate_delivery(store, customer, month)  # one written while this export ran is stale
    return ExportResult(
        dataset=dataset,
        customer=customer,
        month=month,
        format=content.format,
        compression=content.compression,
        rows=delivery.rows,
        stored=delivery.stored,
        columns=delivery.columns,
        duration_seconds=time.perf_counter() - started,
        link=store.download_link(key) if sign_link else None,
        snapshot_at=delivery.snapshot_at,
    )


def invalidate_delivery(store: ObjectStore, customer: str, month: Month) -> None:
    """Remove the customer-month's `_SUCCESS`, then its `manifest.json` (docs/manifest.md).

    In this order, so that whenever `_SUCCESS` exists the manifest it names exists too.
    """
    store.remove(success_key(store.prefix, customer, month))
    store.remove(manifest_key(store.prefix, customer, month))


def export_partition(
    source: SourceConfig,
    store: ObjectStore,
    dataset: DatasetSpec,
    customer: str,
    month: Month,
    tuning: EngineTuning | None = None,
) -> ExportResult:
    """Stream the customer's rows for `month` into `store`; return what was delivered."""
    stream = partition_stream(source, dataset, customer, month, tuning)
    return publish(stream, store, dataset.name, customer, month)


@dataclass(frozen=True)
class Delivery:
    rows: int
    stored: StoredObject
    columns: list[Column]
    snapshot_at: datetime | None = None


def deliver(content: ObjectContent, store: ObjectStore, key: str) -> Delivery:
    """Write `content` to the object `key`, published only when complete.

    First removes what an earlier writer of the same key left when it was killed outright
    (SIGKILL, OOM: no chance to abort), so orphans do not wait for a bucket lifecycle rule.
    """
    store.remove_orphans(key)
    headers = ObjectHeaders(content.content_type, key.rsplit("/")[-1])
    with store.open_writer(key, headers) as writer:
        written = content.write_to(writer)
        return Delivery(written.rows, writer.commit(), written.columns, written.snapshot_at)


def export_query(
    source: SourceConfig,
    store: ObjectStore,
    key: str,
    query: sql.Composed,
    params: dict,
    fmt: Format,
    compression: Compression,
    *,
    name: str,
    tuning: EngineTuning | None = None,
    contract: ContractOptions | None = None,
    progress: ProgressReporting | None = None,
) -> Delivery:
    """Stream any query's result into the object `key` (the benchmark's entry point)."""
    stream = ExportStream(
        source,
        query,
        params,
        name=name,
        format=fmt,
        compression=compression,
        tuning=tuning or EngineTuning(),
        contract=contract or ContractOptions(),
        progress=progress,
    )
    return deliver(stream, store, key)


def _transaction_start(conn: psycopg.Connection) -> datetime:
    """The source server's clock when the current transaction began (`now()`), in UTC.

    The rows are read in this transaction's snapshot (REPEATABLE READ), taken at its first
    statement, at or after this instant; Parquet's ADBC reader imports the same snapshot. So
    every transaction committed on the source before it is in the file (docs/manifest.md).
    """
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0].astimezone(UTC)


def _write_parquet(
    conn: adbc.Connection,
    query: ContractedQuery,
    writer: ObjectWriter,
    compression: Compression,
    name: str,
    tuning: EngineTuning,
    meter: ProgressMeter | None = None,
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
    meter: ProgressMeter | None = None,
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


def _copy_meter(meter: ProgressMeter, writer: ObjectWriter, fmt: Format) -> Callable[[int], None]:
    """COPY messages received -> rows (a CSV header is one message) and bytes written."""
    header = 1 if fmt is Format.CSV else 0

    def on_chunk(messages: int) -> None:
        meter.update(messages - header, writer.tell())

    return on_chunk


def _metered(
    batches: Iterator[pa.RecordBatch], meter: ProgressMeter, writer: ObjectWriter
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
