"""What the export checks compare, as plain functions (no Dagster).

The Dagster layer (`defs/checks.py`) reads the recorded metadata of a partition and of the
same customer's previous month, calls these, and turns each `Verdict` into an asset check
result with its own severity. Nothing here downloads a file: the size comes from a HEAD or a
stat (`ExportFiles.handle`), the Parquet row count from the footer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from export_pipeline.partitions import Month
from export_pipeline.spec import Format
from export_pipeline.storage.files import StoredFile

Columns = Sequence[tuple[str, str]]  # (name, PostgreSQL type), in file order


@dataclass(frozen=True)
class Verdict:
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def footer_row_count(stored: StoredFile) -> int:
    """Rows in a Parquet file, from its footer only (ranged reads on S3; no download)."""
    filesystem, root = stored.store.arrow_filesystem()
    with filesystem.open_input_file(f"{root}/{stored.key}") as source:
        return int(pq.ParquetFile(source).metadata.num_rows)


def verify_row_count(stored: StoredFile) -> Verdict:
    """Parquet: the footer's `num_rows` against the recorded count. Text formats: not checked
    (counting needs the whole file); the verdict passes and says so in its metadata."""
    recorded = stored.row_count
    if stored.format is not Format.PARQUET:
        return Verdict(
            True,
            f"{stored.uri}: row count not verified for {stored.format.value} "
            "(it would need a full download); the recorded count stands",
            {"checked": False, "recorded_rows": recorded, "reason": "text format"},
        )
    try:
        found = footer_row_count(stored)
    except (OSError, pa.ArrowException) as exc:
        return Verdict(
            False,
            f"{stored.uri}: the Parquet footer cannot be read ({exc}); re-materialize it",
            {"checked": True, "recorded_rows": recorded},
        )
    metadata = {"checked": True, "recorded_rows": recorded, "footer_rows": found}
    if found != recorded:
        return Verdict(
            False,
            f"{stored.uri}: the Parquet footer says {found} rows, the materialization recorded "
            f"{recorded}; re-materialize the partition",
            metadata,
        )
    return Verdict(True, f"{stored.uri}: {found} rows, as recorded", metadata)


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
