"""Read export files back with independent readers and fetch the same rows from PostgreSQL."""

from __future__ import annotations

import csv
import gzip
import io
import json
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow.parquet as pq
import zstandard
from psycopg import sql
from psycopg.types.string import TextLoader

from export_pipeline.extract.query import dataset_query
from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, DatasetSpec, Format


def source_rows(
    dsn: str, dataset: DatasetSpec, customer: str, month: Month
) -> tuple[list[str], list[tuple]]:
    """Column names and rows (sorted by id) as psycopg loads them; json as exact-digit values."""
    query, params = dataset_query(dataset, customer, month)
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(query), params)
        names = [c.name for c in cur.description or []]
        types = [c.type_display for c in cur.description or []]
        cols = sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier(n))
            if t in ("json", "jsonb")
            else sql.Identifier(n)
            for n, t in zip(names, types, strict=True)
        )
        cur.execute(sql.SQL("SELECT {} FROM ({}) AS q ORDER BY 1").format(cols, query), params)
        rows = [
            tuple(
                json.loads(v, parse_float=Decimal)
                if t in ("json", "jsonb") and v is not None
                else v
                for v, t in zip(row, types, strict=True)
            )
            for row in cur.fetchall()
        ]
    return names, rows


def source_text_rows(
    dsn: str, dataset: DatasetSpec, customer: str, month: Month
) -> list[list[str]]:
    """Every value as PostgreSQL's own text output ('' for NULL), sorted by the first column."""
    query, params = dataset_query(dataset, customer, month)
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(query), params)
        for column in cur.description or []:
            # Load every type as the raw text PostgreSQL sent (its output function).
            cur.adapters.register_loader(column.type_code, TextLoader)
        cur.execute(sql.SQL("SELECT * FROM ({}) AS q ORDER BY 1").format(query), params)
        return [["" if v is None else v for v in row] for row in cur.fetchall()]


def decompress(data: bytes, compression: Compression) -> bytes:
    if compression is Compression.GZIP:
        return gzip.decompress(data)
    if compression is Compression.ZSTD:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def read_export(data: bytes, fmt: Format, compression: Compression) -> tuple[list[str], list[Any]]:
    """(column names, rows) of an export file, read without any of our code."""
    if fmt is Format.PARQUET:
        table = pq.read_table(io.BytesIO(data))
        return table.column_names, [tuple(r.values()) for r in table.to_pylist()]
    text = decompress(data, compression).decode("utf-8")
    if fmt is Format.CSV:
        rows = list(csv.reader(io.StringIO(text, newline="")))
        return rows[0], rows[1:]
    if fmt is Format.JSONL:
        # only LF ends a record: splitlines() would also split on U+0085 inside strings
        objs = [json.loads(line, parse_float=Decimal) for line in text.split("\n") if line]
    else:
        objs = json.loads(text, parse_float=Decimal)
    names = list(objs[0]) if objs else []
    return names, [tuple(o.values()) for o in objs]


def normalize(actual: Any, expected: Any) -> Any:
    """Bring a value read from a file to the Python type of the source value, for comparison."""
    if actual is None or expected is None:
        return actual
    if isinstance(expected, datetime) and isinstance(actual, str):
        return datetime.fromisoformat(actual)
    if isinstance(expected, date) and isinstance(actual, str):
        return date.fromisoformat(actual)
    if isinstance(expected, uuid.UUID) and isinstance(actual, str):
        return uuid.UUID(actual)
    if isinstance(expected, (dict, list)) and isinstance(actual, str):
        return json.loads(actual, parse_float=Decimal)
    if (
        isinstance(expected, str)
        and len(expected) == len(str(actual))
        and not isinstance(actual, str)
    ):
        return str(actual)
    return actual
