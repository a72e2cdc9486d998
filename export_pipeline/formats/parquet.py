"""Parquet from Arrow record batches, one row group per batch.

Types the ADBC driver hands over that Parquet cannot hold as they are get converted once per
batch, in Arrow compute (no per-row Python):
- numeric(p,s) with p <= 38 arrives as text and becomes decimal128(p,s), exactly;
- unconstrained numeric (or p > 38) stays text: exact digits, never rounded.
Memory: one batch in, one converted batch out, plus the writer's column buffers for one row
group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from export_pipeline.errors import ExportError
from export_pipeline.spec import Compression

_PG_TYPE = b"POSTGRESQL:type"
_PG_TYPMOD = b"POSTGRESQL:typmod"


class UnrepresentableValueError(ExportError, ValueError):
    """A value cannot be written to the chosen format without changing it."""


def _numeric_target(field: pa.Field) -> pa.DataType:
    meta = field.metadata or {}
    typmod = int(meta.get(_PG_TYPMOD, b"-1"))
    if typmod >= 4:
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        if 0 < precision <= 38 and scale <= precision:
            return pa.decimal128(precision, scale)
    return pa.string()


Convert = Callable[[pa.Array], pa.Array]


class BinarySink(Protocol):
    """Anything with a binary `write`; pyarrow wraps it as an output stream."""

    def write(self, data: bytes | bytearray | memoryview) -> int: ...


def _plan(field: pa.Field, dataset: str) -> tuple[pa.Field, Convert | None]:
    pg_type = (field.metadata or {}).get(_PG_TYPE, b"").decode()
    storage = field.type.storage_type if isinstance(field.type, pa.BaseExtensionType) else None
    if pg_type == "numeric" and storage is not None:
        target = _numeric_target(field)

        def convert(arr: pa.Array, target: pa.DataType = target) -> pa.Array:
            raw = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
            if pa.types.is_string(target):
                return raw
            try:
                return pc.cast(raw, target)
            except pa.ArrowInvalid:
                bad = _first_unparseable(raw, target)
                raise UnrepresentableValueError(
                    f"dataset {dataset!r}, column {field.name!r} ({pg_type}): value {bad!r} "
                    f"cannot be written to Parquet as {target}"
                ) from None

        return pa.field(field.name, target, nullable=True, metadata=field.metadata), convert
    if isinstance(field.type, pa.BaseExtensionType) and field.type.extension_name == "arrow.opaque":
        raise UnrepresentableValueError(
            f"dataset {dataset!r}, column {field.name!r} ({pg_type or 'unknown type'}): "
            "the PostgreSQL driver has no Arrow type for it; cast it to text in the dataset SQL"
        )
    if pa.types.is_interval(field.type):
        raise UnrepresentableValueError(
            f"dataset {dataset!r}, column {field.name!r} (interval): Parquet cannot hold "
            "months, days and microseconds separately; cast it to text in the dataset SQL"
        )
    return field, None


def _first_unparseable(raw: pa.Array, target: pa.DataType) -> str | None:
    for value in raw.to_pylist():
        if value is None:
            continue
        try:
            pc.cast(pa.array([value]), target)
        except pa.ArrowInvalid:
            return str(value)
    return None


class ParquetBatchWriter:
    """Converts and writes batches; `rows` counts what was written."""

    def __init__(
        self, schema: pa.Schema, sink: BinarySink, compression: Compression, dataset: str
    ) -> None:
        plans = [_plan(f, dataset) for f in schema]
        self.schema = pa.schema([p[0] for p in plans], metadata=schema.metadata)
        self._converts = [p[1] for p in plans]
        codec = "none" if compression is Compression.NONE else compression.value
        self._writer = pq.ParquetWriter(
            sink,
            self.schema,
            compression=codec,
            write_statistics=True,
            store_schema=True,
        )
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if any(self._converts):
            columns = [
                convert(col) if convert else col
                for col, convert in zip(batch.columns, self._converts, strict=True)
            ]
            batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()

    def discard(self) -> None:
        """Give up: never write the footer (pyarrow would try to from `__del__`)."""
        self._writer.is_open = False


def write_parquet(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    sink: BinarySink,
    compression: Compression,
    dataset: str,
) -> int:
    """Write every batch to `sink`; return the number of rows."""
    writer = ParquetBatchWriter(schema, sink, compression, dataset)
    try:
        for batch in batches:
            writer.write(batch)
    except BaseException:
        writer.discard()
        raise
    writer.close()
    return writer.rows
