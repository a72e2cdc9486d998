"""What the export checks compare, as plain functions (no Dagster).

The Dagster layer (`defs/checks.py`) reads the recorded metadata of a partition and of the
same customer's previous month, calls these, and turns each `Verdict` into an asset check
result with its own severity. Nothing here downloads a file: the size comes from a HEAD or a
stat or, for Parquet, from the one ranged GET of the file's last bytes that holds its footer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from export_pipeline.partitions import Month

Columns = Sequence[tuple[str, str]]  # (name, PostgreSQL type), in file order


@dataclass(frozen=True)
class Verdict:
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


PARQUET_TAIL_BYTES = 64 * 1024  # read with the size in one request; most footers fit
_MAGIC = b"PAR1"


def parquet_footer_length(tail: bytes) -> int:
    """How many bytes at the end of a Parquet file hold its footer (with length and magic);
    `tail` is at least the file's last 8 bytes."""
    if len(tail) < 8 or tail[-4:] != _MAGIC:
        raise ValueError("not a Parquet file (no PAR1 at its end)")
    return int.from_bytes(tail[-8:-4], "little") + 8


def footer_row_count(tail: bytes) -> int:
    """Rows in a Parquet file, from its last bytes; `tail` must hold the whole footer
    (`parquet_footer_length`)."""
    footer = tail[-parquet_footer_length(tail) :]
    return int(pq.read_metadata(pa.BufferReader(_MAGIC + footer)).num_rows)


def verify_size(uri: str, recorded_bytes: int, found_bytes: int | None) -> Verdict:
    """The stored object against the recorded size (from a HEAD, a stat or a ranged GET)."""
    metadata: dict[str, Any] = {"uri": uri, "recorded_bytes": recorded_bytes}
    if found_bytes is None:
        return Verdict(False, f"{uri}: missing; re-materialize the partition", metadata)
    metadata["size_bytes"] = found_bytes
    if found_bytes != recorded_bytes:
        return Verdict(
            False,
            f"{uri}: recorded {recorded_bytes} bytes, found {found_bytes}; re-materialize the "
            "partition",
            metadata,
        )
    return Verdict(True, f"{uri}: {found_bytes} bytes, as recorded", metadata)


def verify_row_count(uri: str, recorded: int, tail: bytes) -> Verdict:
    """Parquet: the footer's `num_rows` (from the file's last bytes) against the recorded
    count. Only Parquet files carry their row count; text formats have no such check."""
    try:
        found = footer_row_count(tail)
    except (ValueError, OSError, pa.ArrowException) as exc:
        return Verdict(
            False,
            f"{uri}: the Parquet footer cannot be read ({exc}); re-materialize it",
            {"recorded_rows": recorded},
        )
    metadata = {"recorded_rows": recorded, "footer_rows": found}
    if found != recorded:
        return Verdict(
            False,
            f"{uri}: the Parquet footer says {found} rows, the materialization recorded "
            f"{recorded}; re-materialize the partition",
            metadata,
        )
    return Verdict(True, f"{uri}: {found} rows, as recorded", metadata)


def verify_not_empty_after_rows(rows: int, previous_rows: int | None, previous: Month) -> Verdict:
    """An empty month right after a month with rows is suspicious (a broken source, a filter,
    a customer that stopped sending data) but can be real: the caller reports it as a warning."""
    metadata: dict[str, Any] = {"rows": rows, "previous_month": str(previous)}
    if previous_rows is None:
        return Verdict(True, f"{previous} was not exported: nothing to compare", metadata)
    metadata["previous_rows"] = previous_rows
    if rows == 0 and previous_rows > 0:
        return Verdict(False, f"no rows this month, {previous_rows} in {previous}", metadata)
    return Verdict(True, f"{rows} rows ({previous_rows} in {previous})", metadata)


@dataclass(frozen=True)
class SchemaDiff:
    added: list[str]  # "name type"
    removed: list[str]
    changed: list[str]  # "name: old -> new"
    reordered: bool

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed or self.reordered)


def schema_diff(previous: Columns, current: Columns) -> SchemaDiff:
    before, after = dict(previous), dict(current)
    common_before = [n for n, _ in previous if n in after]
    common_after = [n for n, _ in current if n in before]
    return SchemaDiff(
        added=[f"{n} {t}" for n, t in current if n not in before],
        removed=[f"{n} {t}" for n, t in previous if n not in after],
        changed=[f"{n}: {before[n]} -> {t}" for n, t in current if n in before and before[n] != t],
        reordered=common_before != common_after,
    )


def verify_schema_unchanged(
    current: Columns, previous_columns: Columns | None, previous: Month
) -> Verdict:
    """The columns (names, PostgreSQL types, order) against the previous month's export."""
    metadata: dict[str, Any] = {"columns": len(current), "previous_month": str(previous)}
    if previous_columns is None:
        return Verdict(True, f"{previous} was not exported: nothing to compare", metadata)
    diff = schema_diff(previous_columns, current)
    if diff.unchanged:
        return Verdict(True, f"same {len(current)} columns as {previous}", metadata)
    metadata.update(
        added=diff.added, removed=diff.removed, changed=diff.changed, reordered=diff.reordered
    )
    parts = [
        f"{label} {', '.join(items)}"
        for label, items in (
            ("added", diff.added),
            ("removed", diff.removed),
            ("changed", diff.changed),
        )
        if items
    ]
    if diff.reordered:
        parts.append("column order changed")
    return Verdict(False, f"columns differ from {previous}: {'; '.join(parts)}", metadata)
