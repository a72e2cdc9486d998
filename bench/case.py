"""One engine export, run as its own process so the benchmark can read its peak RSS.

    python bench/case.py --dsn DSN --format parquet --compression zstd --out DIR [--limit N]
        [--batch-hint BYTES] [--row-group-rows N] [--row-group-bytes BYTES] [--progress]

`--progress` meters the export as a Dagster run does (export_pipeline/progress.py: every 5 s
and 10,000 rows, with the planner's estimate) and writes each report as a line to stderr.

`--row-group-bytes 1` writes one row group per ADBC batch: the layout before issue 11.

Prints one JSON line: rows, bytes, seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from psycopg import sql

from export_pipeline.engine import EngineTuning, export_query
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.formats.naming import extension
from export_pipeline.progress import Progress, ProgressReporting
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.local import LocalObjectStore


def _report(p: Progress) -> None:
    """What the Dagster callback does, less the event log write (once per 5 s there)."""
    percent = "?" if p.percent is None else f"{p.percent:.0f}"
    sys.stderr.write(
        f"bench: {p.rows:,} of ~{p.estimated_rows or 0:,} rows ({percent}%), "
        f"{p.rows_per_second:,.0f} rows/s, {p.bytes_written / 1e6:,.1f} MB, "
        f"ETA {p.eta_seconds or 0:,.0f} s ({p.estimate_source})\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--format", required=True, choices=[f.value for f in Format])
    parser.add_argument("--compression", default="none")
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--batch-hint", type=int, default=0)
    parser.add_argument("--row-group-rows", type=int, default=0)
    parser.add_argument("--row-group-bytes", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    fmt, comp = Format(args.format), Compression(args.compression)
    query = sql.SQL("SELECT * FROM events")
    if args.limit:
        query = sql.SQL("SELECT * FROM events LIMIT {}").format(sql.Literal(args.limit))
    knobs = {
        "batch_size_hint_bytes": args.batch_hint,
        "parquet_row_group_rows": args.row_group_rows,
        "parquet_row_group_bytes": args.row_group_bytes,
    }
    tuning = EngineTuning(**{k: v for k, v in knobs.items() if v})
    started = time.perf_counter()
    delivery = export_query(
        SourceConfig(args.dsn, statement_timeout_seconds=0),
        LocalObjectStore(args.out, prefix=""),
        f"events{extension(fmt, comp)}",
        sql.Composed([query]),
        {},
        fmt,
        comp,
        name="bench",
        tuning=tuning,
        progress=ProgressReporting(_report) if args.progress else None,
    )
    elapsed = time.perf_counter() - started
    sys.stdout.write(
        json.dumps({"rows": delivery.rows, "bytes": delivery.stored.size_bytes, "seconds": elapsed})
        + "\n"
    )


if __name__ == "__main__":
    main()
