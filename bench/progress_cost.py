"""What progress reporting costs, part by part, in process (issues 9 and 16).

    .venv/bin/python bench/progress_cost.py --dsn DSN [--rows-limit N] [--rounds 6]

Wall-time ratios of whole exports (`bench/run.py --progress`) cannot resolve 1% on a shared,
busy machine, so this measures the parts that progress adds, each where it runs. Progress is
time-based (export_pipeline/progress.py): the write loop only counts, and a reporter thread
builds and hands over a report every interval (5 s). So what costs is:
- on the export's thread: `ExportMeter.update(rows, bytes)`, once per Arrow batch (Parquet) or
  COPY chunk (text formats), never per row; the planner's estimate (one `EXPLAIN`, once per
  export without a previous month's figure); and in the COPY loop, numbering the COPY
  messages (`enumerate`, the only per-row cost), as this process's CPU time over `events`,
  with and without `on_chunk`, rounds interleaved;
- once per step: starting and closing the `ProgressReporter` (its thread);
- on the reporter's thread, once per interval: building a `Report` (`ProgressReporter.report`,
  for one running export and for a range of 500 partitions), and handing it to the Dagster
  adapter (`event_log_reporter`: a log line and an engine event per line, into a SQLite test
  instance). Nothing of that runs on the export's thread.
"""

import argparse
import statistics
import sys
import time
import timeit

import dagster as dg
import psycopg
from psycopg import sql

from export_pipeline.extract.copy import copy_chunks
from export_pipeline.extract.estimate import planner_estimate
from export_pipeline.io_managers.progress import event_log_reporter
from export_pipeline.progress import PLANNER, Estimate, ExportMeter, ProgressReporter, Report

# Reporter threads of these tests never tick on their own: reports are asked for explicitly.
NEVER = 3600.0


def meter_update_ns() -> float:
    meter = ExportMeter("bench", "1|2025-01-01", Estimate(10**7, PLANNER))
    rows = [i * 20_000 for i in range(1, 100_001)]

    def updates() -> None:
        for r in rows:
            meter.update(r, r)

    seconds = min(timeit.repeat(updates, number=1, repeat=5))
    return seconds / len(rows) * 1e9


def reporter_lifecycle_us() -> float:
    """Start and close a reporter (its thread): once per step."""
    walls = []
    for _ in range(50):
        started = time.perf_counter()
        ProgressReporter(lambda report: None, interval_seconds=NEVER).start().close()
        walls.append(time.perf_counter() - started)
    return statistics.median(walls) * 1e6


def _running(reporter: ProgressReporter, exports: int) -> list[ExportMeter]:
    meters = []
    for n in range(exports):
        meter = reporter.meter("bench", f"{n + 1}|2025-01-01", Estimate(1_000_000, PLANNER))
        meter.update(500_000, 50_000_000)
        meters.append(meter)
    return meters


def build_report_us(total: int) -> float:
    """`ProgressReporter.report()` with one export running, in a batch of `total`: what the
    reporter's thread computes each interval before handing the report over."""
    reporter = ProgressReporter(lambda report: None, total=total, interval_seconds=1e-9)
    _running(reporter, 1)
    seconds = min(timeit.repeat(reporter.report, number=1000, repeat=5)) / 1000
    return seconds * 1e6


def hand_over_ms() -> float:
    """ms per report of the Dagster adapter's callback, for a report of two lines (a range of
    500 and one running export): each line a log line and an engine event."""

    @dg.op
    def probe(context: dg.OpExecutionContext) -> float:
        step_key = context.get_step_execution_context().step.key
        reporter = event_log_reporter(
            context.log, context.instance, context.run, step_key, "bench", 500, NEVER
        )
        try:
            [meter] = _running(reporter, 1)
            report = Report(reporter.report().batch, (meter.snapshot(time.monotonic()),))
            # The adapter's callback (private), as the reporter's thread calls it.
            on_report = reporter._on_report
            walls = []
            for _ in range(30):
                started = time.perf_counter()
                on_report(report)
                walls.append(time.perf_counter() - started)
        finally:
            reporter.close()
        return statistics.median(walls) * 1000

    @dg.job
    def measure() -> None:
        probe()

    with dg.instance_for_test() as instance:
        result = measure.execute_in_process(instance=instance)
        return float(result.output_for_node("probe"))


def estimate_ms(dsn: str, limit: int) -> float:
    walls = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT * FROM events LIMIT {}").format(sql.Literal(limit)).as_string(conn)
        for _ in range(20):
            started = time.perf_counter()
            planner_estimate(conn, query)
            walls.append(time.perf_counter() - started)
    return statistics.median(walls) * 1000


def copy_cpu(dsn: str, limit: int, rounds: int) -> tuple[list[float], list[float], int]:
    statement = sql.SQL("COPY (SELECT * FROM events LIMIT {}) TO STDOUT (FORMAT csv)").format(
        sql.Literal(limit)
    )
    plain: list[float] = []
    counted: list[float] = []
    meter = ExportMeter("bench", "1|2025-01-01")
    with psycopg.connect(dsn) as conn:
        for round_no in range(rounds):
            order = [False, True] if round_no % 2 == 0 else [True, False]
            for with_count in order:
                started = time.process_time()
                with conn.cursor() as cur:
                    on_chunk = (lambda n: meter.update(n, n)) if with_count else None
                    for _ in copy_chunks(cur, statement, on_chunk=on_chunk):
                        pass
                (counted if with_count else plain).append(time.process_time() - started)
    return plain, counted, limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rows-limit", type=int, default=3_000_000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    update = meter_update_ns()
    lifecycle = reporter_lifecycle_us()
    build_one, build_range = build_report_us(1), build_report_us(500)
    hand_over = hand_over_ms()
    estimate = estimate_ms(args.dsn, args.rows_limit)
    plain, counted, rows = copy_cpu(args.dsn, args.rows_limit, args.rounds)
    per_row = (statistics.median(counted) - statistics.median(plain)) / rows * 1e9
    per_row_min = (min(counted) - min(plain)) / rows * 1e9
    out = [
        "on the export's thread:",
        f"  ExportMeter.update, per Arrow batch or COPY chunk: {update:.0f} ns a call",
        f"  planner estimate (EXPLAIN), once per export without one: {estimate:.2f} ms",
        f"  COPY loop client CPU over {rows:,} rows, {args.rounds} interleaved rounds:",
        f"    without counting:          {' '.join(f'{v:.3f}' for v in sorted(plain))} s",
        f"    with on_chunk + the meter: {' '.join(f'{v:.3f}' for v in sorted(counted))} s",
        f"    difference: {per_row:.1f} ns a row (medians), {per_row_min:.1f} ns (minima)",
        "once per step:",
        f"  ProgressReporter start + close (its thread): {lifecycle:.0f} us",
        "on the reporter's thread, once per interval (5 s), none of it on the export's thread:",
        f"  build the report: {build_one:.1f} us (one export), {build_range:.1f} us "
        "(one running in a range of 500)",
        f"  hand it to the Dagster adapter (a log line + an engine event for the range and for "
        f"the export, SQLite instance): {hand_over:.2f} ms",
    ]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
