"""JSON Lines rendered on the client by DuckDB from the ADBC Arrow stream: speed and contract.

    python bench/jsonl_duckdb.py --dsn DSN                    # time it on `events`
    python bench/jsonl_duckdb.py --server-dsn DSN --contract  # compare with row_to_json

A measurement for issue 11, not an export path: the engine keeps PostgreSQL's `row_to_json`.
`--contract` loads the torture table of the type-contract tests into a scratch database and
prints every value whose JSON differs from `row_to_json`'s (docs/types.md), first one first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import duckdb
import psycopg


def render(dsn: str, query: str, out: Path) -> float:
    """Stream the query's Arrow batches through DuckDB's JSON writer; return the seconds."""
    started = time.perf_counter()
    with adbc.connect(dsn) as conn:
        cur = conn.cursor()
        cur.execute(query)
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.from_arrow(cur.fetch_record_batch()).create_view("src")
        con.execute(f"COPY (SELECT * FROM src) TO '{out}' (FORMAT json)")  # noqa: S608 (bench path)
        con.close()
    return time.perf_counter() - started


def _parse(line: str) -> Any:
    """Numbers kept as their text, objects as ordered pairs: digits and key order compared."""
    return json.loads(
        line,
        parse_float=lambda x: ("number", x),
        parse_int=lambda x: ("number", x),
        object_pairs_hook=lambda pairs: ("object", pairs),
    )


def contract(server_dsn: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers
    from export_pipeline_tests.formats.torture import create_torture_tables
    from export_pipeline_tests.services import scratch_database

    with scratch_database(server_dsn, "jsonl_duckdb") as dsn, tempfile.TemporaryDirectory() as d:
        create_torture_tables(dsn)
        with psycopg.connect(dsn) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            rows = conn.execute("SELECT row_to_json(r)::text FROM torture r ORDER BY id")
            server = [row[0] for row in rows]
        out = Path(d) / "torture.jsonl"
        render(dsn, "SELECT * FROM torture ORDER BY id", out)
        client = out.read_text().splitlines()
    for s_line, c_line in zip(server, client, strict=True):
        s, c = dict(_parse(s_line)[1]), dict(_parse(c_line)[1])
        for column, expected in s.items():
            if c.get(column) != expected:
                key = json.dumps(column) + ":"
                want = s_line.split(key, 1)[1][:60]
                got = c_line.split(key, 1)[1][:60]
                sys.stdout.write(
                    f"id {s['id'][1]} {column}: row_to_json {want[:60]} | duckdb {got}\n"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("EXPORT_BENCH_PG_DSN", ""))
    parser.add_argument("--server-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--contract", action="store_true")
    args = parser.parse_args()
    if args.contract:
        contract(args.server_dsn)
        return
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as d:
        out = Path(d) / "events.jsonl"
        seconds = render(args.dsn, "SELECT * FROM events", out)
        sys.stdout.write(f"duckdb jsonl: {seconds:.2f} s, {out.stat().st_size / 1e6:.0f} MB\n")


if __name__ == "__main__":
    main()
