"""Parquet from Arrow record batches, gathered into row groups sized for readers.

Row groups: pyarrow closes a row group on every `write_batch`, and the ADBC driver's batches
are a few MiB (some 9-18k rows of a typical table), far smaller than readers want. So batches
are gathered here and written as one row group once `row_group_rows` rows (default 131,072) or
`row_group_bytes` of Arrow data (default 64 MiB) are pending, whichever comes first. Why those:
DuckDB writes 122,880 rows per row group and Spark/Athena aim for 64-128 MB; about 128k rows
keeps footer metadata small and min/max statistics selective, while the memory it costs (one
row group of Arrow data, about 30 MiB for the reference `events` table) stays inside the
engine's 200 MB budget; the byte cap bounds that memory for wide rows. Every row group but the
last holds exactly `row_group_rows` rows unless the byte cap closed it first (then it ends at
a batch boundary). Column statistics and the page index (per-page min/max and offsets) are
written, so readers can skip row groups and pages.

Types the ADBC driver hands over that Parquet cannot hold as they are get converted once per
batch, in Arrow compute (no per-row Python); the full contract is docs/types.md:
- numeric(p,s) with p <= 38 arrives as text and becomes decimal128(p,s), exactly; NaN and
  ±Infinity cannot be decimals and stop the export;
- unconstrained numeric (or p > 38) stays text: exact digits, NaN/±Infinity spelled as
  PostgreSQL spells them;
- interval becomes struct<months: int32, days: int32, microseconds: int64>, never a duration;
- date and timestamp[tz] values below PostgreSQL's earliest date can only be the driver's
  wrap-around of ±infinity (or of years past 294246): they stop the export, never get written;
- types the driver leaves as `arrow.opaque` (timetz, inet, ...), bare `money` and composites
  (whose NULLs the driver loses) stop the export before the first row; extract/contract.py
  rewrites the query so they never get here (money as numeric, composites as JSON, the rest as
  text when the dataset opts in).
Lists (arrays) are converted element-wise.
Memory: one row group of converted batches pending, plus the writer's buffers for one column
chunk while it encodes that row group.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from export_pipeline.errors import ExportError
from export_pipeline.spec import Compression

_PG_TYPE = b"POSTGRESQL:type"
_PG_TYPMOD = b"POSTGRESQL:typmod"
# PostgreSQL's earliest date, 4714-11-24 BC (Julian day 0), as days / microseconds since 1970.
# The driver shifts PostgreSQL's 2000-based values to 1970 without overflow checks, so
# ±infinity and years past 294246 wrap around to values far below these.
PG_MIN_DAYS = -2_440_588
PG_MIN_MICROS = PG_MIN_DAYS * 86_400_000_000
_DATE_SENTINELS = {-2_147_472_692: "infinity", -2_147_472_691: "-infinity"}
_TIMESTAMP_SENTINELS = {
    -9_222_425_352_054_775_809: "infinity",
    -9_222_425_352_054_775_808: "-infinity",
}
# The driver spells numeric specials nan/inf/-inf; PostgreSQL's text output NaN/Infinity.
_NUMERIC_SPECIALS = {
    "nan": "NaN", "inf": "Infinity", "-inf": "-Infinity",
    "NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity",
}  # fmt: skip
_NUMERIC_TYPE_RE = re.compile(r"numeric(?:\((\d+)(?:,(\d+))?\))?")
INTERVAL_TYPE = pa.struct(
    [("months", pa.int32()), ("days", pa.int32()), ("microseconds", pa.int64())]
)
# adbc-driver-postgresql 1.13 leaves a composite's validity bitmap all zero (NULL and ROW(...)
# become indistinguishable); extract/contract.py sends composites as JSON instead.
_COMPOSITE_PROBLEM = "the driver loses which composite values are NULL"
_FALLBACK_HINT = "set `unrepresentable: text` on the dataset to export it as PostgreSQL text"
# Row-group target (see the module docstring for why): whichever is reached first.
DEFAULT_ROW_GROUP_ROWS = 128 * 1024
DEFAULT_ROW_GROUP_BYTES = 64 * 1024 * 1024
# A column falls back from dictionary to plain encoding once its dictionary passes this size.
# At pyarrow's 1 MiB default a unique int64 column (an id) stays dictionary-encoded for a whole
# 128k-row group, and the writer's memo table and buffered pages for it alone cost about 38 MB
# of RSS. At 64 KiB high-cardinality columns fall back within a few thousand rows, while
# low-cardinality ones (event types, customer ids, flags) keep their dictionary; on the
# reference table the file is also 8% smaller (plain + zstd beats dictionary indices there).
DICTIONARY_PAGE_LIMIT = 64 * 1024


class UnrepresentableValueError(ExportError, ValueError):
    """A value cannot be written to the chosen format without changing it."""


class BinarySink(Protocol):
    """Anything with a binary `write`; pyarrow wraps it as an output stream."""

    def write(self, data: bytes | bytearray | memoryview) -> int: ...


Convert = Callable[[pa.Array], pa.Array]


def _pg_type(field: pa.Field) -> str:
    meta = field.metadata or {}
    name = meta.get(_PG_TYPE, b"").decode() or "unknown type"
    typmod = int(meta.get(_PG_TYPMOD, b"-1"))
    if name == "numeric" and typmod >= 4:
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        return f"numeric({precision},{scale})"
    return name


def _numeric_target(pg_type: str) -> pa.DataType:
    """decimal128(p,s) for numeric(p,s) with p <= 38; text for anything wider or unconstrained."""
    m = _NUMERIC_TYPE_RE.fullmatch(pg_type)
    if m and m.group(1):
        precision, scale = int(m.group(1)), int(m.group(2) or 0)
        if 0 < precision <= 38 and 0 <= scale <= precision:
            return pa.decimal128(precision, scale)
    return pa.string()


class _Planner:
    """Works out, once per schema, the target type and converter of each column."""

    def __init__(self, dataset: str, numeric_as_text: Mapping[str, str]) -> None:
        self.dataset = dataset
        self.numeric_as_text = numeric_as_text

    def fail(self, where: str, pg_type: str, problem: str) -> UnrepresentableValueError:
        return UnrepresentableValueError(
            f"dataset {self.dataset!r}, column {where!r} ({pg_type}): {problem}; {_FALLBACK_HINT}"
        )

    def plan(self, field: pa.Field, where: str) -> tuple[pa.DataType, Convert | None]:
        typ, pg_type = field.type, _pg_type(field)
        if where in self.numeric_as_text and pa.types.is_string(typ):
            return self._numeric(where, self.numeric_as_text[where])
        if isinstance(typ, pa.BaseExtensionType) and typ.extension_name == "arrow.opaque":
            if pg_type.startswith("numeric"):
                return self._numeric(where, pg_type)
            raise self.fail(where, pg_type, "the PostgreSQL driver has no Arrow type for it")
        if pg_type == "money":
            raise self.fail(where, pg_type, "the driver hands over money as bare minor units")
        if pa.types.is_interval(typ):
            return INTERVAL_TYPE, _interval_struct
        if pa.types.is_date32(typ):
            return typ, self._range_check(where, pg_type, pa.int32(), PG_MIN_DAYS, _DATE_SENTINELS)
        if pa.types.is_timestamp(typ):
            check = self._range_check(
                where, pg_type, pa.int64(), PG_MIN_MICROS, _TIMESTAMP_SENTINELS
            )
            return typ, check
        if pa.types.is_list(typ) or pa.types.is_large_list(typ):
            return self._list(typ, where)
        if pa.types.is_struct(typ):  # only composites arrive as structs
            raise self.fail(where, pg_type, _COMPOSITE_PROBLEM)
        return typ, None

    def _numeric(self, where: str, pg_type: str) -> tuple[pa.DataType, Convert | None]:
        target = _numeric_target(pg_type)

        def convert(arr: pa.Array) -> pa.Array:
            raw = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
            special = pc.is_in(raw, value_set=pa.array(list(_NUMERIC_SPECIALS)))
            has_special = pc.any(special).as_py()
            if pa.types.is_string(target):
                return _spell_specials(raw, special) if has_special else raw
            if has_special:
                bad = pc.filter(raw, special)[0].as_py()
                raise self.fail(where, pg_type, self._not_decimal(_NUMERIC_SPECIALS[bad], target))
            try:
                return pc.cast(raw, target)
            except pa.ArrowInvalid:
                bad = _first_uncastable(raw, target)
                raise self.fail(where, pg_type, self._not_decimal(bad, target)) from None

        return target, convert

    @staticmethod
    def _not_decimal(value: str | None, target: pa.DataType) -> str:
        return f"value {value} cannot be written to Parquet as {target}"

    def _range_check(
        self,
        where: str,
        pg_type: str,
        physical: pa.DataType,
        minimum: int,
        sentinels: dict[int, str],
    ) -> Convert:
        def check(arr: pa.Array) -> pa.Array:
            low = pc.min(arr.view(physical)).as_py()
            if low is not None and low < minimum:
                value = sentinels.get(low, "beyond year 294246 (the driver cannot convert it)")
                raise self.fail(
                    where, pg_type, f"value {value} cannot be written to Parquet as {arr.type}"
                )
            return arr

        return check

    def _list(self, typ: pa.DataType, where: str) -> tuple[pa.DataType, Convert | None]:
        item_type, item_convert = self.plan(typ.value_field, f"{where}[]")
        if item_convert is None:
            return typ, None
        item_field = typ.value_field.with_type(item_type)
        target = pa.large_list(item_field) if pa.types.is_large_list(typ) else pa.list_(item_field)

        def convert(arr: pa.Array) -> pa.Array:
            values = item_convert(arr.values)
            cls = pa.LargeListArray if pa.types.is_large_list(typ) else pa.ListArray
            mask = arr.is_null() if arr.null_count else None
            return cls.from_arrays(arr.offsets, values, type=target, mask=mask)

        return target, convert


def _spell_specials(raw: pa.Array, special: pa.Array) -> pa.Array:
    """The driver's nan/inf/-inf spelled as PostgreSQL's NaN/Infinity/-Infinity."""
    keys = pa.array(list(_NUMERIC_SPECIALS))
    spelled = pc.take(pa.array(list(_NUMERIC_SPECIALS.values())), pc.index_in(raw, keys))
    return pc.if_else(special, spelled, raw)


def _first_uncastable(raw: pa.Array, target: pa.DataType) -> str | None:
    """Error path only: the first value that does not cast (a Python loop is fine here)."""
    for value in raw.to_pylist():
        if value is None:
            continue
        try:
            pc.cast(pa.array([value]), target)
        except pa.ArrowInvalid:
            return str(value)
    return None


def _interval_struct(arr: pa.Array) -> pa.Array:
    """month_day_nano -> struct<months, days, microseconds>, reading the value buffer in place.

    Each value is 16 bytes (int32 months, int32 days, int64 nanoseconds); viewing the buffer as
    fixed-size lists of int32/int64 picks the parts out without copying rows through Python.
    """
    n, data = len(arr), arr.buffers()[1]
    words = pa.Array.from_buffers(pa.int32(), 4 * n, [None, data], offset=4 * arr.offset)
    longs = pa.Array.from_buffers(pa.int64(), 2 * n, [None, data], offset=2 * arr.offset)
    as_words = pa.FixedSizeListArray.from_arrays(words, 4)
    nanos = pc.list_element(pa.FixedSizeListArray.from_arrays(longs, 2), 1)
    children = [
        pc.list_element(as_words, 0),
        pc.list_element(as_words, 1),
        pc.divide(nanos, 1000),  # exact: PostgreSQL stores whole microseconds
    ]
    mask = arr.is_null() if arr.null_count else None
    return pa.StructArray.from_arrays(children, fields=list(INTERVAL_TYPE), mask=mask)


def _metadata(field: pa.Field, numeric_as_text: Mapping[str, str] | None) -> dict | None:
    """The driver's field metadata, naming the source type again for numerics sent as text."""
    if numeric_as_text and field.name in numeric_as_text:
        return {_PG_TYPE: b"numeric", b"POSTGRESQL:type_display": numeric_as_text[field.name]}
    return field.metadata


class ParquetBatchWriter:
    """Converts batches and writes them in row groups of the target size.

    `rows` counts the rows written to closed row groups; `close` writes what is pending.
    """

    def __init__(
        self,
        schema: pa.Schema,
        sink: BinarySink,
        compression: Compression,
        dataset: str,
        numeric_as_text: Mapping[str, str] | None = None,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    ) -> None:
        if row_group_rows < 1 or row_group_bytes < 1:
            raise ValueError("row_group_rows and row_group_bytes must be positive")
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        planner = _Planner(dataset, numeric_as_text or {})
        plans = [planner.plan(f, f.name) for f in schema]
        self.schema = pa.schema(
            [
                pa.field(f.name, target, nullable=True, metadata=_metadata(f, numeric_as_text))
                for f, (target, _) in zip(schema, plans, strict=True)
            ],
            metadata=schema.metadata,
        )
        self._converts = [p[1] for p in plans]
        codec = "none" if compression is Compression.NONE else compression.value
        self._writer = pq.ParquetWriter(
            sink,
            self.schema,
            compression=codec,
            write_statistics=True,
            write_page_index=True,
            dictionary_pagesize_limit=DICTIONARY_PAGE_LIMIT,
            store_schema=True,
        )
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if any(self._converts):
            columns = [
                convert(col) if convert else col
                for col, convert in zip(batch.columns, self._converts, strict=True)
            ]
            batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        if batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self._pending_bytes += batch.nbytes
        while (
            self._pending_rows >= self.row_group_rows or self._pending_bytes >= self.row_group_bytes
        ):
            self._write_row_group(min(self._pending_rows, self.row_group_rows))

    def _write_row_group(self, rows: int) -> None:
        """The first `rows` pending rows as one row group; the rest stay pending (zero-copy)."""
        pending = pa.Table.from_batches(self._pending, schema=self.schema)
        self._writer.write_table(pending.slice(0, rows), row_group_size=rows)
        self.rows += rows
        self._pending = pending.slice(rows).to_batches()
        self._pending_rows = pending.num_rows - rows
        self._pending_bytes = sum(b.nbytes for b in self._pending)
        # The writer's encode buffers are as large as a row group; without this mimalloc keeps
        # them, and peak RSS grew by a second row group's worth.
        pa.default_memory_pool().release_unused()

    def close(self) -> None:
        if self._pending_rows:
            self._write_row_group(self._pending_rows)
        self._writer.close()

    def discard(self) -> None:
        """Give up: never write the footer (pyarrow would try to from `__del__`)."""
        self._pending = []
        self._writer.is_open = False


def write_parquet(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    sink: BinarySink,
    compression: Compression,
    dataset: str,
    numeric_as_text: Mapping[str, str] | None = None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
) -> int:
    """Write every batch to `sink`; return the number of rows.

    `numeric_as_text` names string columns that hold numeric text (column -> `numeric(p,s)`).
    """
    writer = ParquetBatchWriter(
        schema, sink, compression, dataset, numeric_as_text, row_group_rows, row_group_bytes
    )
    try:
        for batch in batches:
            writer.write(batch)
    except BaseException:
        writer.discard()
        raise
    writer.close()
    return writer.rows
