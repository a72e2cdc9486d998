"""Read exported Parquet files back the way customers do: pyarrow and DuckDB.

    python bench/readers.py FILE [FILE ...] [--repeat 3] [--day 2025-06-15]

For each file: its row groups, footer size and whether it has the page index, then the median
wall time of `--repeat` reads (after one unrecorded read, so every file is in the page cache):
- full scan: every row and column into an Arrow table (`pyarrow.parquet.read_table`; DuckDB
  `SELECT *` from a `read_parquet` view, fetched as Arrow);
- one day: the rows whose `occurred_at` falls on `--day` (UTC), a filter both engines push down
  to the row-group statistics (pyarrow `filters=`, DuckDB `WHERE`);
- DuckDB aggregate: one aggregate over every column (the scan without building a result).
Both engines must return the same number of rows for each query, or the run fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

QUERIES = ("pyarrow full", "pyarrow day", "duckdb full", "duckdb day", "duckdb agg")
# Every column read, nothing materialized: the scan an analyst's aggregate pays for.
AGGREGATE = (
    "SELECT count(*), max(id), count(DISTINCT customer_id), max(occurred_at), "
    "count(DISTINCT event_type), sum(amount), max(length(payload::VARCHAR)), "
    "sum(len(tags)), count(DISTINCT session_id), count_if(is_test) FROM f"
)


@dataclass
class FileReads:
    label: str
    path: Path
    rows: int
    row_groups: int
    size_mb: float
    footer_kb: float
    page_index: bool
    seconds: dict[str, float]
    day_rows: int


def _timed(read: Callable[[], pa.Table], repeat: int) -> tuple[float, int]:
    rows = read().num_rows  # warm-up: page cache, DuckDB's metadata cache
    walls = []
    for _ in range(repeat):
        started = time.perf_counter()
        got = read().num_rows
        walls.append(time.perf_counter() - started)
        if got != rows:
            raise SystemExit(f"a repeated read returned {got} rows, then {rows}")
    return statistics.median(walls), rows


def measure(label: str, path: Path, day: datetime, repeat: int) -> FileReads:
    meta = pq.ParquetFile(path).metadata
    column0 = meta.row_group(0).column(0) if meta.num_row_groups else None
    start, end = day, day + timedelta(days=1)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.read_parquet(str(path)).create_view("f")
    scan = "SELECT * FROM f"
    reads: dict[str, Callable[[], pa.Table]] = {
        "pyarrow full": lambda: pq.read_table(path),
        "pyarrow day": lambda: pq.read_table(
            path, filters=[("occurred_at", ">=", start), ("occurred_at", "<", end)]
        ),
        "duckdb full": lambda: con.sql(scan).to_arrow_table(),
        "duckdb day": lambda: con.sql(
            f"{scan} WHERE occurred_at >= $1 AND occurred_at < $2", params=[start, end]
        ).to_arrow_table(),
        "duckdb agg": lambda: con.sql(AGGREGATE).to_arrow_table(),
    }
    seconds, rows = {}, {}
    for name, read in reads.items():
        seconds[name], rows[name] = _timed(read, repeat)
    con.close()
    if rows["pyarrow full"] != rows["duckdb full"] or rows["pyarrow day"] != rows["duckdb day"]:
        raise SystemExit(f"{path}: pyarrow and DuckDB disagree on the rows: {rows}")
    return FileReads(
        label=label,
        path=path,
        rows=meta.num_rows,
        row_groups=meta.num_row_groups,
        size_mb=path.stat().st_size / 1e6,
        footer_kb=meta.serialized_size / 1e3,
        page_index=bool(column0 and column0.has_column_index and column0.has_offset_index),
        seconds=seconds,
        day_rows=rows["pyarrow day"],
    )


def report(results: list[FileReads], day: datetime, repeat: int) -> str:
    lines = [
        f"readers (median of {repeat}; one day = {day.date()} UTC, "
        f"{results[0].day_rows if results else 0:,} rows):",
        f"{'file':<34} {'rows':>11} {'groups':>7} {'rows/group':>10} {'MB':>6} "
        f"{'footer KB':>9} {'page idx':>8}",
    ]
    for r in results:
        per = r.rows / r.row_groups if r.row_groups else 0
        lines.append(
            f"{r.label:<34} {r.rows:>11,} {r.row_groups:>7} {per:>10,.0f} {r.size_mb:>6.0f} "
            f"{r.footer_kb:>9.1f} {'yes' if r.page_index else 'no':>8}"
        )
    lines.append(f"{'seconds':<34} " + " ".join(f"{q:>12}" for q in QUERIES))
    for r in results:
        lines.append(f"{r.label:<34} " + " ".join(f"{r.seconds[q]:>12.3f}" for q in QUERIES))
    if len(results) == 2:
        before, after = results
        lines.append(
            f"{'second / first':<34} "
            + " ".join(f"{after.seconds[q] / before.seconds[q]:>11.2f}x" for q in QUERIES)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="FILE or LABEL=FILE")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--day", default="2025-06-15")
    args = parser.parse_args(argv)
    day = datetime.fromisoformat(args.day).replace(tzinfo=UTC)
    results = []
    for spec in args.files:
        label, _, file = spec.rpartition("=")
        path = Path(file)
        results.append(measure(label or path.name, path, day, args.repeat))
    sys.stdout.write(report(results, day, args.repeat) + "\n")


if __name__ == "__main__":
    main()
