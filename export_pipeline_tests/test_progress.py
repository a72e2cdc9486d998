"""Progress reporting: meters that only count, a reporter that reports by the clock (injected
clock, and its real thread), and the engine's write loops feeding a meter (real PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from export_pipeline.engine import EngineTuning, ExportStream
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.progress import (
    NO_ESTIMATE,
    PLANNER,
    PREVIOUS_MONTH,
    BatchProgress,
    Estimate,
    ExportMeter,
    ExportProgress,
    ProgressReporter,
    Report,
    Waiting,
)
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.writer import ObjectHeaders

SLOW_ROWS = 1500


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def _reporter(clock: FakeClock, total: int = 1, interval: float = 5.0) -> ProgressReporter:
    """A reporter whose thread is never started: `report()` is what a tick would hand over."""
    return ProgressReporter(
        lambda report: None,
        name="exports/orders",
        total=total,
        interval_seconds=interval,
        clock=clock,
    )


def test_the_write_loop_only_counts_and_reads_the_clock_once_for_the_first_row() -> None:
    clock = FakeClock()
    meter = ExportMeter("orders", "1|2025-03-01", Estimate(10_000, PLANNER), clock)
    assert clock.reads == 1  # the start
    for rows in range(0, 1_000_000, 100):  # a batch of 100 rows at a time
        meter.update(rows, rows * 10)
    assert clock.reads == 2  # the first row's arrival, nothing per update
    assert (meter.rows, meter.bytes_written) == (999_900, 9_999_000)


def test_an_export_is_reported_once_it_ran_one_interval_rows_or_not() -> None:
    """Issue 15: an export of 1,234 rows that took 12 s reported nothing (a 10,000-row
    threshold held it back). Now any export running for an interval is reported, and one still
    waiting for its first row says so, with the time waited."""
    clock = FakeClock()
    reporter = _reporter(clock)
    meter = reporter.meter("orders", "3|2025-03-01", Estimate(1_234, PLANNER))
    clock.now += 4.9
    assert reporter.report() == Report(None, ())  # shorter than an interval: nothing
    clock.now += 0.1
    [waiting] = reporter.report().exports
    assert waiting.waiting_for_first_row and waiting.first_row_seconds is None
    assert (waiting.rows, waiting.elapsed_seconds) == (0, 5.0)
    assert waiting.percent == 0.0 and waiting.eta_seconds is None  # no rate yet
    clock.now += 3.0
    meter.update(400, 4_000)  # the first rows, 8 s in
    clock.now += 2.0
    [running] = reporter.report().exports
    assert not running.waiting_for_first_row and running.first_row_seconds == 8.0
    assert (running.dataset, running.partition) == ("orders", "3|2025-03-01")
    assert (running.rows, running.bytes_written, running.elapsed_seconds) == (400, 4_000, 10.0)
    assert (running.estimated_rows, running.estimate_source) == (1_234, PLANNER)
    assert running.rows_per_second == 40.0
    assert running.percent == pytest.approx(100 * 400 / 1_234)
    assert running.eta_seconds == pytest.approx((1_234 - 400) / 40.0)
    reporter.finished(meter, delivered=True)
    assert reporter.report() == Report(None, ())  # a batch of one: its result says it all


def test_a_wait_before_the_exports_is_reported_once_it_lasted_one_interval() -> None:
    clock = FakeClock()
    reporter = _reporter(clock)
    with reporter.waiting("the partition locks"):
        clock.now += 4.9
        assert reporter.report().waiting is None
        clock.now += 2.1
        assert reporter.report().waiting == Waiting(reporter.name, "the partition locks", 7.0)
    assert reporter.report().waiting is None


def test_a_batch_reports_partitions_done_rows_rate_and_eta() -> None:
    clock = FakeClock()
    reporter = _reporter(clock, total=4)
    first = reporter.meter("orders", "1|2025-03-01")
    clock.now += 2.0
    first.update(1_000, 10_000)
    reporter.finished(first, delivered=True)
    retried = reporter.meter("orders", "2|2025-03-01")
    retried.update(50, 500)
    reporter.finished(retried, delivered=None)  # transient: tried again, not counted yet
    failed = reporter.meter("orders", "2|2025-03-01")
    clock.now += 1.0
    reporter.finished(failed, delivered=False)  # final
    running = reporter.meter("orders", "3|2025-03-01")
    clock.now += 1.0
    running.update(200, 2_000)
    clock.now += 2.0
    report = reporter.report()
    assert report.batch == BatchProgress(
        name="exports/orders",
        total=4,
        done=1,
        failed=1,
        rows=1_200,  # the delivered partition's and the running one's
        bytes_written=12_000,
        elapsed_seconds=6.0,
    )
    assert report.batch.rows_per_second == 200.0
    assert report.batch.eta_seconds == 6.0  # 3 s per finished partition, 2 left
    assert report.exports == ()  # the running export is 3 s old, under the interval
    clock.now += 2.0
    assert [p.partition for p in reporter.report().exports] == ["3|2025-03-01"]
    assert BatchProgress("b", 2, 0, 0, 0, 0, 1.0).eta_seconds is None  # nothing finished
    assert BatchProgress("b", 2, 1, 1, 0, 0, 1.0).eta_seconds == 0.0  # all finished


def test_unknown_and_overrun_estimates() -> None:
    unknown = ExportProgress("d", "p", 100, 10, 2.0, None, NO_ESTIMATE, 0.5)
    assert unknown.percent is None and unknown.eta_seconds is None
    assert unknown.rows_per_second == 50.0
    overrun = ExportProgress("d", "p", 150, 10, 3.0, 100, PREVIOUS_MONTH, 0.5)
    assert overrun.percent == 100.0 and overrun.eta_seconds == 0.0
    assert ExportProgress("d", "p", 0, 0, 0.0, 100, PLANNER).eta_seconds is None  # no rate yet
    assert ExportMeter("d", "p").snapshot(time.monotonic()).estimate_source == NO_ESTIMATE


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition with a deadline


def _reporter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "export-progress"]


def test_the_reporter_ticks_by_the_clock_and_close_stops_it() -> None:
    seen: list[Report] = []
    reporter = ProgressReporter(seen.append, total=3, interval_seconds=0.02)
    started = time.monotonic()
    with reporter:
        [thread] = _reporter_threads()
        assert thread.daemon  # a hung write never keeps the process alive
        _wait_for(lambda: len(seen) >= 3, "three ticks")
    elapsed = time.monotonic() - started
    count = len(seen)
    assert not _reporter_threads()  # close() joined it: no report can land afterwards
    assert len(seen) == count == reporter.reports
    assert count <= elapsed / 0.02 + 1  # at most one report per interval
    assert all(r.batch is not None and r.batch.total == 3 for r in seen)


def test_a_failing_callback_is_reported_once_and_reporting_stops() -> None:
    errors: list[BaseException] = []
    calls: list[Report] = []

    def broken(report: Report) -> None:
        calls.append(report)
        raise RuntimeError("the instance's database hiccups")

    reporter = ProgressReporter(
        broken, total=2, interval_seconds=0.01, on_error=errors.append
    ).start()
    try:
        _wait_for(lambda: bool(errors), "the error")
        _wait_for(lambda: not _reporter_threads(), "the thread to stop by itself")
    finally:
        reporter.close()
    assert len(calls) == 1 and [str(e) for e in errors] == ["the instance's database hiccups"]
    assert reporter.reports == 0


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_seconds must be positive"):
        ProgressReporter(lambda report: None, interval_seconds=0)


# -- the engine's write loops ---------------------------------------------------------------
def _slow_source(dsn: str) -> None:
    """A function that takes about 1 ms a row (pg_sleep's shortest wait)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION slow_row(g int) RETURNS int LANGUAGE plpgsql VOLATILE"
            " AS $$ BEGIN PERFORM pg_sleep(0.0005); RETURN g; END $$"
        )


def _slow_query(rows: int) -> sql.Composed:
    return sql.SQL(
        "SELECT slow_row(g) AS id, repeat('x', 40) AS pad FROM generate_series(1, {}) AS g"
    ).format(sql.Literal(rows))


def _stream(
    dsn: str,
    query: sql.Composable,
    fmt: Format,
    compression: Compression = Compression.NONE,
    **tuning: int,
) -> ExportStream:
    return ExportStream(
        SourceConfig(dsn),
        sql.Composed([query]),
        {},
        name="slow",
        format=fmt,
        compression=compression,
        tuning=EngineTuning(**tuning),
    )


@pytest.mark.parametrize("fmt", [Format.CSV, Format.JSONL, Format.PARQUET])
def test_slow_export_reports_increasing_rows_with_the_planner_estimate(
    scratch_dsn: str, tmp_path: Path, fmt: Format
) -> None:
    _slow_source(scratch_dsn)
    seen: list[Report] = []
    interval = 0.2
    # Small COPY chunks and Arrow batches, so the loops see many of them.
    stream = _stream(
        scratch_dsn, _slow_query(SLOW_ROWS), fmt, chunk_size=2048, batch_size_hint_bytes=1024
    )
    store = LocalObjectStore(str(tmp_path), "exports")
    started = time.monotonic()
    with ProgressReporter(seen.append, interval_seconds=interval) as reporter:
        meter = reporter.meter("slow", "1|2025-03-01")  # no estimate: the planner's
        with store.open_writer("slow.out", _headers()) as writer:
            written = stream.write_to(writer, meter=meter)
            stored = writer.commit()
        reporter.finished(meter, delivered=True)
    elapsed = time.monotonic() - started
    assert written.rows == SLOW_ROWS
    assert meter.rows == SLOW_ROWS and 0 < meter.bytes_written <= stored.size_bytes
    progress = [p for report in seen for p in report.exports]
    assert len(seen) == len(progress) >= 3, f"{len(seen)} reports in {elapsed:.1f}s"
    assert len(seen) <= elapsed / interval + 1
    rows = [p.rows for p in progress]
    assert rows == sorted(rows) and rows[0] < rows[-1] <= SLOW_ROWS
    assert [p.bytes_written for p in progress] == sorted(p.bytes_written for p in progress)
    assert 0 < progress[-1].bytes_written <= stored.size_bytes
    # generate_series with constant bounds: the planner knows the exact row count.
    assert {(p.estimated_rows, p.estimate_source) for p in progress} == {(SLOW_ROWS, PLANNER)}
    assert all(p.percent is not None and p.percent <= 100 for p in progress)
    assert all(p.eta_seconds is not None for p in progress if p.rows)


class _CountingMeter(ExportMeter):
    """A real meter that also keeps every count the write loop handed it."""

    def __init__(self, estimate: Estimate | None) -> None:
        super().__init__("slow", "1|2025-03-01", estimate)
        self.seen: list[int] = []

    def update(self, rows: int, bytes_written: int) -> None:
        self.seen.append(rows)
        super().update(rows, bytes_written)


def test_a_given_estimate_is_kept_and_the_loop_updates_per_chunk_not_per_row(
    scratch_dsn: str, tmp_path: Path
) -> None:
    _slow_source(scratch_dsn)
    store = LocalObjectStore(str(tmp_path), "exports")
    meter = _CountingMeter(Estimate(600, PREVIOUS_MONTH))
    stream = _stream(scratch_dsn, _slow_query(300), Format.CSV, Compression.GZIP, chunk_size=512)
    for given in (meter, None):
        with store.open_writer("slow.csv.gz", _headers()) as writer:
            assert stream.write_to(writer, meter=given).rows == 300
            writer.commit()
    assert meter.estimate == Estimate(600, PREVIOUS_MONTH)  # the planner was not asked
    assert 1 < len(meter.seen) < 300  # once per COPY chunk, not per row
    assert meter.seen == sorted(meter.seen) and meter.seen[-1] == 300
    assert meter.snapshot(time.monotonic()).percent == 50.0


def test_a_query_slow_to_its_first_row_reports_the_wait(scratch_dsn: str, tmp_path: Path) -> None:
    """The server takes 1 s before the first row (a slow plan), then sends 3 rows: every tick
    meanwhile says the export waits for its first row, and for how long."""
    seen: list[Report] = []
    query = sql.SQL("SELECT g FROM pg_sleep(1.0), generate_series(1, 3) AS g")
    stream = _stream(scratch_dsn, query, Format.JSONL)
    store = LocalObjectStore(str(tmp_path), "exports")
    with ProgressReporter(seen.append, interval_seconds=0.2) as reporter:
        meter = reporter.meter("slow", "1|2025-03-01", Estimate(3, PREVIOUS_MONTH))
        with store.open_writer("slow.jsonl", _headers()) as writer:
            assert stream.write_to(writer, meter=meter).rows == 3
            writer.commit()
    waits = [p for report in seen for p in report.exports if p.waiting_for_first_row]
    assert len(waits) >= 3, seen
    assert all(p.rows == 0 and p.elapsed_seconds >= 0.2 for p in waits)
    elapsed = [p.elapsed_seconds for p in waits]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 0.6
    assert meter.rows == 3 and meter.snapshot(time.monotonic()).first_row_seconds is not None


def _headers() -> ObjectHeaders:
    return ObjectHeaders("application/octet-stream", "slow")
