"""What progress reporting costs, part by part, in process (issue 9).

    .venv/bin/python bench/progress_cost.py --dsn DSN [--rows-limit N] [--rounds 6]

Wall-time ratios of whole exports (`bench/run.py --progress`) cannot resolve 1% on a shared,
busy machine, so this measures the parts that progress adds, each where it runs:
- `ProgressMeter.update` when no report is due (what every Arrow batch / COPY chunk pays);
- one report through the Dagster reporter (`context.log.info` + an engine event) into a
  SQLite test instance (once per 5 s): what the export's thread pays (starting the writer
  thread) and how long the write takes on its own thread;
- the COPY loop with and without `on_chunk` (the text path numbers COPY messages with
  `enumerate`: the only per-row cost), as this process's CPU time over `events`, rounds
  interleaved.
"""

import argparse
import statistics
import sys
import threading
import time
import timeit

import dagster as dg
import psycopg
from psycopg import sql

from export_pipeline.extract.copy import copy_chunks
from export_pipeline.io_managers.progress import event_log_reporter
from export_pipeline.progress import PLANNER, Estimate, Progress, ProgressMeter


def meter_update_ns() -> float:
    meter = ProgressMeter(lambda p: None, Estimate(10**7, PLANNER), 5.0, 10_000)
    rows = [i * 20_000 for i in range(1, 100_001)]  # every call passes the row threshold
    seconds = min(timeit.repeat(lambda: [meter.update(r, r) for r in rows], number=1, repeat=5))
    return seconds / len(rows) * 1e9


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "export-progress"]


def report_ms() -> tuple[float, float]:
    """(ms on the export's thread, ms until the report is in the event log) per report."""

    @dg.op
    def probe(context: dg.OpExecutionContext) -> tuple[float, float]:
        step_key = context.get_step_execution_context().step.key
        report = event_log_reporter(
            context.log, context.instance, context.run, step_key, "bench", "1|2025-01-01"
        )
        progress = Progress(1_000_000, 50_000_000, 2.5, 10_000_000, PLANNER)
        caller = written = 0.0
        for _ in range(30):
            started = time.perf_counter()
            report(progress)
            caller += time.perf_counter() - started
            for thread in _writers():
                thread.join()
            written += time.perf_counter() - started
        return caller / 30 * 1000, written / 30 * 1000

    @dg.job
    def measure() -> None:
        probe()

    with dg.instance_for_test() as instance:
        result = measure.execute_in_process(instance=instance)
        caller_ms, written_ms = result.output_for_node("probe")
        return float(caller_ms), float(written_ms)


def copy_cpu(dsn: str, limit: int, rounds: int) -> tuple[list[float], list[float], int]:
    statement = sql.SQL("COPY (SELECT * FROM events LIMIT {}) TO STDOUT (FORMAT csv)").format(
        sql.Literal(limit)
    )
    plain: list[float] = []
    counted: list[float] = []
    with psycopg.connect(dsn) as conn:
        for round_no in range(rounds):
            order = [False, True] if round_no % 2 == 0 else [True, False]
            for with_count in order:
                started = time.process_time()
                with conn.cursor() as cur:
                    on_chunk = (lambda n: None) if with_count else None
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
    caller_ms, written_ms = report_ms()
    plain, counted, rows = copy_cpu(args.dsn, args.rows_limit, args.rounds)
    per_row = (statistics.median(counted) - statistics.median(plain)) / rows * 1e9
    per_row_min = (min(counted) - min(plain)) / rows * 1e9
    out = [
        f"ProgressMeter.update, no report due: {update:.0f} ns a call",
        f"one report (log line + engine event, SQLite instance): {caller_ms:.2f} ms on the "
        f"export's thread, written {written_ms:.1f} ms later (on its own thread)",
        f"COPY loop client CPU over {rows:,} rows, {args.rounds} interleaved rounds:",
        f"  without counting: {' '.join(f'{v:.3f}' for v in sorted(plain))} s",
        f"  with on_chunk:    {' '.join(f'{v:.3f}' for v in sorted(counted))} s",
        f"  difference: {per_row:.1f} ns a row (medians), {per_row_min:.1f} ns (minima)",
    ]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
