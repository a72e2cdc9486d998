"""Export one customer-month of one dataset: the whole engine behind a materialization.

Pure Python, no Dagster. Rows stream from PostgreSQL to the object writer:
- Parquet: ADBC record batches (read ahead on a second thread) -> ParquetWriter -> writer
  (memory: about three batches of `batch_size_hint_bytes`);
- CSV / JSON Lines / JSON: COPY chunks -> (JSON array framing) -> (gzip/zstd) -> writer
  (memory: one chunk, plus the S3 writer's in-flight parts).
The object is published only if every row was written; otherwise nothing is left under its key.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from export_pipeline.extract.arrow import (
    DEFAULT_BATCH_SIZE_HINT_BYTES,
    read_batches,
    record_batches,
)
from export_pipeline.extract.connection import SourceConfig, connect
from export_pipeline.extract.contract import ContractedQuery, ContractOptions, contract_query
from export_pipeline.extract.copy import DEFAULT_CHUNK_SIZE, copy_chunks
from export_pipeline.extract.query import (
    Column,
    QueryError,
    customers_query,
    dataset_query,
    describe,
    pg_message,
    render,
)
from export_pipeline.formats.compress import make_compressor
from export_pipeline.formats.naming import content_type, extension
from export_pipeline.formats.parquet import write_parquet
from export_pipeline.formats.text import JsonArrayFramer, copy_statement
from export_pipeline.partitions import Month, validate_customer_key
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
    batch_size_hint_bytes: int = DEFAULT_BATCH_SIZE_HINT_BYTES
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prefetch_batches: int = 1


@dataclass(frozen=True)
class ExportResult:
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

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.duration_seconds if self.duration_seconds > 0 else 0.0


def export_key(store: ObjectStore, dataset: DatasetSpec, customer: str, month: Month) -> str:
    ext = extension(dataset.format, dataset.compression)
    return object_key(store.prefix, customer, month, dataset.name, ext)


def export_partition(
    source: SourceConfig,
    store: ObjectStore,
    dataset: DatasetSpec,
    customer: str,
    month: Month,
    tuning: EngineTuning | None = None,
) -> ExportResult:
    """Stream the customer's rows for `month` into `store`; return what was delivered."""
    started = time.perf_counter()
    validate_customer_key(customer)
    key = export_key(store, dataset, customer, month)
    query, params = dataset_query(dataset, customer, month)
    delivery = export_query(
        source,
        store,
        key,
        query,
        params,
        dataset.format,
        dataset.compression,
        name=dataset.name,
        tuning=tuning,
        contract=ContractOptions.of(dataset),
    )
    link = store.download_link(key)
    return ExportResult(
        dataset=dataset.name,
        customer=customer,
        month=month,
        format=dataset.format,
        compression=dataset.compression,
        rows=delivery.rows,
        stored=delivery.stored,
        columns=delivery.columns,
        duration_seconds=time.perf_counter() - started,
        link=link,
    )


@dataclass(frozen=True)
class Delivery:
    rows: int
    stored: StoredObject
    columns: list[Column]


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
) -> Delivery:
    """Stream any query's result into the object `key`, published only when complete.

    `export_partition` is this plus the partition's key and query; the benchmark calls it
    directly with the full-table query.
    """
    tuning = tuning or EngineTuning()
    headers = ObjectHeaders(content_type(fmt, compression), key.rsplit("/")[-1])
    with connect(source) as conn:
        query_text = render(conn, query, params)
        columns = describe(conn, query_text, name)
        contracted = contract_query(conn, query_text, columns, fmt, name, contract)
        if fmt is not Format.PARQUET:
            with store.open_writer(key, headers) as writer:
                rows = _write_text(conn, contracted.text, writer, fmt, compression, name, tuning)
                return Delivery(rows, writer.commit(), columns)
    # Parquet reads through ADBC's own connection; the psycopg one is closed by now, so an
    # export holds one backend on the source, not two.
    with store.open_writer(key, headers) as writer:
        rows = _write_parquet(source, contracted, writer, compression, name, tuning)
        return Delivery(rows, writer.commit(), columns)


def _write_parquet(
    source: SourceConfig,
    query: ContractedQuery,
    writer: ObjectWriter,
    compression: Compression,
    name: str,
    tuning: EngineTuning,
) -> int:
    """Batches are read on a background thread while this one encodes the previous one.

    Memory: about (prefetch depth + 2) batches of `batch_size_hint_bytes`, plus the Parquet
    writer's buffers for one row group.
    """
    with (
        record_batches(source, query.text, tuning.batch_size_hint_bytes) as reader,
        # closing(): on an error the read-ahead thread is stopped and joined before the
        # reader's connection closes, never left reading from a closed stream.
        closing(prefetch(read_batches(reader, name), depth=tuning.prefetch_batches)) as batches,
    ):
        return write_parquet(
            reader.schema, batches, writer, compression, name, query.numeric_as_text
        )


def _write_text(
    conn: psycopg.Connection,
    query_text: str,
    writer: ObjectWriter,
    fmt: Format,
    compression: Compression,
    name: str,
    tuning: EngineTuning,
) -> int:
    """Reads COPY and frames, compresses, hashes and writes each chunk on this same thread.

    PostgreSQL keeps producing into the socket buffer while a chunk is compressed, so this
    overlaps anyway; a second thread measured slower here (GIL hand-offs on a per-row loop).
    Memory: one chunk of `chunk_size`, plus the S3 writer's parts.
    """
    statement = copy_statement(fmt, sql.SQL(query_text))
    framer = JsonArrayFramer() if fmt is Format.JSON else None
    compressor = make_compressor(compression)
    with conn.cursor() as cur, closing(copy_chunks(cur, statement, tuning.chunk_size)) as chunks:
        try:
            for chunk in chunks:
                data = framer.feed(chunk) if framer else chunk
                writer.write(compressor.compress(data) if compressor else data)
        except psycopg.Error as exc:
            raise QueryError(f"dataset {name!r}: export query failed: {pg_message(exc)}") from None
        rows = cur.rowcount
    if framer:
        tail = framer.finish()
        writer.write(compressor.compress(tail) if compressor else tail)
    if compressor:
        writer.write(compressor.flush())
    conn.rollback()
    return rows


def list_customers(source: SourceConfig, customers: CustomersSpec) -> list[str]:
    """Customer keys from the source, as text, sorted."""
    with connect(source) as conn, conn.cursor() as cur:
        try:
            # Empty params: psycopg then reads `%%` in the spec's SQL as a literal `%`.
            cur.execute(customers_query(customers), {})
        except psycopg.Error as exc:
            raise QueryError(f"customers query failed: {pg_message(exc)}") from None
        return [row[0] for row in cur.fetchall()]
