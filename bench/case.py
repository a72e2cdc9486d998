"""One engine export, run as its own process so the benchmark can read its peak RSS.

    python bench/case.py --dsn DSN --format parquet --compression zstd --out DIR [--limit N]
        [--batch-hint BYTES] [--row-group-rows N] [--row-group-bytes BYTES]

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
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.local import LocalObjectStore


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
    )
    elapsed = time.perf_counter() - started
    sys.stdout.write(
        json.dumps({"rows": delivery.rows, "bytes": delivery.stored.size_bytes, "seconds": elapsed})
        + "\n"
    )


if __name__ == "__main__":
    main()
