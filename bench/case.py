"""One engine export (or several), run as its own process so the benchmark can read its peak RSS.

    python bench/case.py --dsn DSN --format parquet --compression zstd --out DIR [--limit N]
        [--batch-hint BYTES] [--row-group-rows N] [--row-group-bytes BYTES]
        [--progress [--progress-interval S]] [--variant parallel|no-session-check]
        [--path stream|step] [--exports K [--session reuse|new]] [--no-export]

`SELECT * FROM events` (or its first `--limit` rows) into local storage (sha256, fsync and
atomic rename included), one object per export:
- `--path stream` (default): the engine alone, `write_query` below (an `ExportStream` written
  into a writer and committed; what `export_pipeline_tests.harness.write_query` does, copied
  here because the harness imports Dagster: 2 s and 85 MB more for every case process);
- `--path step`: through `batch.export_batch` as a Dagster step runs it (partition locks on
  the session, the manifest withdrawal, one orphan listing, the replica check, the commit on
  a commit thread), one partition (customer `bench`, a month each) per export.
`--exports K` exports K times one after the other; `--session reuse` reads them all on one
`SourceSession` (as a run does: connections opened and checked once), `--session new` opens a
session for each (as every export did before one-path).

`--progress` meters the export as a Dagster step does: an `ExportMeter` updated per Arrow batch
or COPY chunk (and, without an estimate, the planner's, one `EXPLAIN`), and a
`ProgressReporter` thread that every `--progress-interval` seconds (5, as the IO manager) builds
a report and writes it as lines to stderr (the Dagster adapter writes to the event log there).

Variants (issue 16, bench only: nothing in the package changes):
- `parallel`: the session without `max_parallel_workers_per_gather=0` and
  `synchronize_seqscans=off` (the server's defaults, as `psql` has them); the session check
  accepts any value of those two;
- `no-session-check`: new connections skip the verification of their settings (one round
  trip per connection).

`--row-group-bytes 1` writes one row group per ADBC batch: the layout before issue 11.
`--no-export` imports what an export imports and exits: the interpreter's start and the
imports every case's wall time includes.

Prints one JSON line: rows, bytes (all exports), seconds (in process, all exports), exports
(each export's seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from export_pipeline.batch import BatchItem, export_batch
from export_pipeline.engine import EngineTuning, ExportStream, object_headers
from export_pipeline.extract import connection as pg_connection
from export_pipeline.extract import session as pg_session
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.extract.contract import ContractOptions
from export_pipeline.extract.session import SourceSession
from export_pipeline.formats.naming import extension
from export_pipeline.partitions import Month, partition_key
from export_pipeline.progress import ExportMeter, ExportProgress, ProgressReporter, Report
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.writer import ObjectStore, StoredObject

VARIANTS = ("parallel", "no-session-check")
# What the `parallel` variant leaves out of the session's libpq options.
PARALLEL_OFF = ("-c max_parallel_workers_per_gather=0", "-c synchronize_seqscans=off")
SHOW_SETTINGS = (
    "SELECT current_setting('max_parallel_workers_per_gather'),"
    " current_setting('synchronize_seqscans')"
)


def write_query(
    source: SourceConfig,
    store: ObjectStore,
    key: str,
    query: sql.Composed,
    params: Mapping[str, Any],
    fmt: Format,
    compression: Compression,
    *,
    name: str,
    tuning: EngineTuning | None = None,
    session: SourceSession | None = None,
    meter: ExportMeter | None = None,
) -> tuple[StoredObject, int]:
    """Stream the query's rows into the object `key` (on `session`, or a session of its own):
    (what was stored, rows). export_pipeline_tests.harness.write_query, without Dagster."""
    stream = ExportStream(
        source,
        query,
        params,
        name=name,
        format=fmt,
        compression=compression,
        tuning=tuning or EngineTuning(),
        contract=ContractOptions(),
    )
    with store.open_writer(key, object_headers(stream, key)) as writer:
        written = stream.write_to(writer, session=session, meter=meter)
        return writer.commit(), written.rows


# -- variants (bench-only hooks) -------------------------------------------------------------
@dataclass(frozen=True)
class ServerDefaultsConfig(SourceConfig):
    """The engine's session less the two settings that keep row order repeatable."""

    def conninfo(self) -> str:
        params = conninfo_to_dict(super().conninfo())
        options = str(params["options"])
        for setting in PARALLEL_OFF:
            options = options.replace(setting, "")
        return make_conninfo("", **{**params, "options": " ".join(options.split())})


def allow_server_defaults() -> None:
    """Let the session check accept any value of the settings `ServerDefaultsConfig` drops."""
    dropped = {"max_parallel_workers_per_gather", "synchronize_seqscans"}
    pg_connection.EXPECTED_SETTINGS = tuple(
        (name, sent, _Anything() if name in dropped else allowed)
        for name, sent, allowed in pg_connection.EXPECTED_SETTINGS
    )


class _Anything(frozenset[str]):
    def __contains__(self, item: object) -> bool:
        return True


def skip_session_checks() -> None:
    """New connections are opened as the engine opens them, less the settings query."""

    def open_connection(config: SourceConfig) -> psycopg.Connection:
        return psycopg.connect(config.conninfo(), autocommit=True)

    def open_arrow_connection(config: SourceConfig) -> adbc.Connection:
        return adbc.connect(config.conninfo())

    pg_session.open_connection = open_connection
    pg_session.open_arrow_connection = open_arrow_connection


def source_config(dsn: str, variant: str) -> SourceConfig:
    if variant == "parallel":
        allow_server_defaults()
        return ServerDefaultsConfig(dsn, statement_timeout_seconds=0)
    if variant == "no-session-check":
        skip_session_checks()
    return SourceConfig(dsn, statement_timeout_seconds=0)


# -- progress --------------------------------------------------------------------------------
def _line(p: ExportProgress) -> str:
    """What the Dagster adapter's line says (io_managers/progress.export_message)."""
    if p.waiting_for_first_row:
        return f"bench: {p.partition}: waiting for the first row for {p.elapsed_seconds:,.0f} s"
    percent = "?" if p.percent is None else f"{p.percent:.0f}"
    return (
        f"bench: {p.partition}: {p.rows:,} of ~{p.estimated_rows or 0:,} rows ({percent}%), "
        f"{p.rows_per_second:,.0f} rows/s, {p.bytes_written / 1e6:,.1f} MB, "
        f"ETA {p.eta_seconds or 0:,.0f} s ({p.estimate_source})"
    )


def _report(report: Report) -> None:
    """On the reporter's thread: what the Dagster callback does, less the event log write."""
    lines = [_line(p) for p in report.exports]
    if report.batch is not None:
        b = report.batch
        lines.insert(0, f"bench: {b.done} of {b.total} exports, {b.rows:,} rows")
    sys.stderr.write("".join(f"{line}\n" for line in lines))


@contextmanager
def reporting(enabled: bool, total: int, interval: float) -> Iterator[ProgressReporter | None]:
    if not enabled:
        yield None
        return
    reporter = ProgressReporter(_report, name="bench", total=total, interval_seconds=interval)
    with reporter:
        yield reporter


# -- the exports -----------------------------------------------------------------------------
@dataclass
class Outcome:
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    exports: list[float] = field(default_factory=list)
    connects: int | None = None  # new backends the exports' sessions opened (ADBC's as one)

    def add(self, rows: int, size: int, seconds: float) -> None:
        self.rows += rows
        self.bytes += size
        self.seconds += seconds
        self.exports.append(seconds)


def stream_exports(
    args: argparse.Namespace,
    config: SourceConfig,
    store: ObjectStore,
    query: sql.Composed,
    tuning: EngineTuning,
    reporter: ProgressReporter | None,
) -> Outcome:
    fmt, comp = Format(args.format), Compression(args.compression)
    outcome = Outcome(connects=0)
    shared = SourceSession(config) if args.session == "reuse" else None
    try:
        for n in range(args.exports):
            key = f"events-{n}{extension(fmt, comp)}"
            meter = reporter.meter("events", f"export {n + 1}") if reporter else None
            started = time.perf_counter()
            # Without a shared one, a session of the export's own, closed when it is written:
            # what `ExportStream.write_to` opens without a session (made here to count it).
            session = shared or SourceSession(config)
            try:
                stored, rows = write_query(
                    config,
                    store,
                    key,
                    query,
                    {},
                    fmt,
                    comp,
                    name="bench",
                    tuning=tuning,
                    session=session,
                    meter=meter,
                )
            finally:
                if session is not shared:
                    session.close()
                    outcome.connects = (outcome.connects or 0) + session.connects
            outcome.add(rows, stored.size_bytes, time.perf_counter() - started)
            if reporter and meter:
                reporter.finished(meter, delivered=True)
    finally:
        if shared is not None:
            shared.close()
            outcome.connects = (outcome.connects or 0) + shared.connects
    return outcome


def step_exports(
    args: argparse.Namespace,
    config: SourceConfig,
    store: ObjectStore,
    query: sql.Composed,
    tuning: EngineTuning,
    reporter: ProgressReporter | None,
) -> Outcome:
    """One `export_batch` of `--exports` partitions, as a ranged step writes them."""
    fmt, comp = Format(args.format), Compression(args.compression)
    items = []
    month = Month(2025, 1)
    for _ in range(args.exports):
        stream = ExportStream(
            config,
            query,
            {},
            name="bench",
            format=fmt,
            compression=comp,
            tuning=tuning,
            replayed_past=datetime.now(UTC),
        )
        items.append(BatchItem(partition_key("bench", month), "bench", month, stream))
        month = month.next()
    session = SourceSession(config) if args.session == "reuse" else None
    started = time.perf_counter()
    try:
        result = export_batch(
            items, store, "events", session=session, reporter=reporter, sign_links=False
        )
    finally:
        if session is not None:
            session.close()
    seconds = time.perf_counter() - started
    if result.failed:
        first = next(iter(result.failed.values()))
        raise SystemExit(f"{len(result.failed)} export(s) failed: {first.message}")
    delivered = list(result.delivered.values())
    return Outcome(
        rows=sum(d.rows for d in delivered),
        bytes=sum(d.stored.size_bytes for d in delivered),
        seconds=seconds,
        exports=[d.duration_seconds for d in delivered],
        connects=session.connects if session is not None else None,
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
    parser.add_argument("--progress-interval", type=float, default=5.0)
    parser.add_argument("--variant", choices=VARIANTS, default=None)
    parser.add_argument("--path", choices=("stream", "step"), default="stream")
    parser.add_argument("--exports", type=int, default=1)
    parser.add_argument("--session", choices=("reuse", "new"), default="new")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument(
        "--show-settings", action="store_true", help="report the session's settings (tests)"
    )
    args = parser.parse_args()
    if args.no_export:
        sys.stdout.write(json.dumps({"rows": 0, "bytes": 0, "seconds": 0.0, "exports": []}))
        sys.stdout.write("\n")
        return
    query = sql.Composed([sql.SQL("SELECT * FROM events")])
    if args.limit:
        query = sql.SQL("SELECT * FROM events LIMIT {}").format(sql.Literal(args.limit))
    knobs = {
        "batch_size_hint_bytes": args.batch_hint,
        "parquet_row_group_rows": args.row_group_rows,
        "parquet_row_group_bytes": args.row_group_bytes,
    }
    tuning = EngineTuning(**{k: v for k, v in knobs.items() if v})
    config = source_config(args.dsn, args.variant or "")
    store = LocalObjectStore(args.out, prefix="")
    export = step_exports if args.path == "step" else stream_exports
    with reporting(args.progress, args.exports, args.progress_interval) as reporter:
        outcome = export(args, config, store, query, tuning, reporter)
    result = {
        "rows": outcome.rows,
        "bytes": outcome.bytes,
        "seconds": outcome.seconds,
        "exports": outcome.exports,
        "connects": outcome.connects,
    }
    if args.show_settings:  # after the exports, outside their timer
        with SourceSession(config) as session:
            row = session.connection().execute(SHOW_SETTINGS).fetchone()
        assert row is not None
        result["settings"] = {"parallel_workers": row[0], "synchronize_seqscans": row[1]}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
