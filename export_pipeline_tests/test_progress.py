"""Progress reporting: the meter's rate limit (injected clock) and the engine's write loops."""

from __future__ import annotations

import time
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
    Estimate,
    Progress,
    ProgressMeter,
    ProgressReporting,
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


def _meter(clock: FakeClock, seen: list[Progress], estimate: Estimate) -> ProgressMeter:
    return ProgressMeter(seen.append, estimate, interval_seconds=5.0, every_rows=1000, clock=clock)


def test_meter_reports_when_both_the_interval_and_the_rows_have_passed() -> None:
    clock, seen = FakeClock(), []
    meter = _meter(clock, seen, Estimate(10_000, PLANNER))
    meter.update(999, 10)  # not enough rows: the clock is not even read
    assert clock.reads == 1 and seen == []  # the one read is the start
    clock.now += 4.9
    meter.update(5000, 500)  # enough rows, not enough time
    assert seen == []
    clock.now += 0.1
    meter.update(5000, 500)
    [first] = seen
    assert (first.rows, first.bytes_written, first.elapsed_seconds) == (5000, 500, 5.0)
    assert first.estimated_rows == 10_000 and first.estimate_source == PLANNER
    assert first.percent == 50.0 and first.rows_per_second == 1000.0 and first.eta_seconds == 5.0
    clock.now += 60
    meter.update(5999, 600)  # time enough, but fewer than every_rows since the last report
    assert len(seen) == 1
    meter.update(6000, 600)
    clock.now += 4.9
    meter.update(9000, 900)  # rows enough, but under 5 s since the last report
    assert [p.rows for p in seen] == [5000, 6000] and meter.reports == 2


def test_meter_report_count_is_bounded_by_elapsed_over_interval() -> None:
    clock, seen = FakeClock(), []
    meter = _meter(clock, seen, Estimate.none())
    rows = 0
    for _ in range(100_000):  # a batch of 100 rows every 10 ms for 1,000 s
        clock.now += 0.01
        rows += 100
        meter.update(rows, rows * 10)
    elapsed = 100_000 * 0.01
    assert len(seen) <= elapsed / 5.0 + 1
    assert len(seen) >= elapsed / 5.0 - 1  # and it does report at about that rate
    assert [p.rows for p in seen] == sorted(p.rows for p in seen)


def test_unknown_and_overrun_estimates() -> None:
    unknown = Progress(100, 10, 2.0, None, NO_ESTIMATE)
    assert unknown.percent is None and unknown.eta_seconds is None
    assert unknown.rows_per_second == 50.0
    overrun = Progress(150, 10, 3.0, 100, PREVIOUS_MONTH)
    assert overrun.percent == 100.0 and overrun.eta_seconds == 0.0
    assert Progress(0, 0, 0.0, 100, PLANNER).eta_seconds is None  # no rate yet


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


@pytest.mark.parametrize("fmt", [Format.CSV, Format.JSONL, Format.PARQUET])
def test_slow_export_reports_increasing_rows_with_the_planner_estimate(
    scratch_dsn: str, tmp_path: Path, fmt: Format
) -> None:
    _slow_source(scratch_dsn)
    seen: list[Progress] = []
    interval = 0.2
    stream = ExportStream(
        SourceConfig(scratch_dsn),
        _slow_query(SLOW_ROWS),
        {},
        name="slow",
        format=fmt,
        compression=Compression.NONE,
        # Small COPY chunks and Arrow batches, so the loops see many of them.
        tuning=EngineTuning(chunk_size=2048, batch_size_hint_bytes=1024),
        progress=ProgressReporting(seen.append, interval_seconds=interval, every_rows=20),
    )
    store = LocalObjectStore(str(tmp_path), "exports")
    started = time.monotonic()
    with store.open_writer("slow.out", _headers()) as writer:
        written = stream.write_to(writer)
        stored = writer.commit()
    elapsed = time.monotonic() - started
    assert written.rows == SLOW_ROWS
    assert len(seen) >= 3, f"{len(seen)} reports in {elapsed:.1f}s"
    assert len(seen) <= elapsed / interval + 1
    assert len(seen) <= SLOW_ROWS / 20 + 1
    rows = [p.rows for p in seen]
    assert rows == sorted(set(rows)) and 0 < rows[-1] <= SLOW_ROWS
    assert [p.bytes_written for p in seen] == sorted(p.bytes_written for p in seen)
    assert 0 < seen[-1].bytes_written <= stored.size_bytes
    # generate_series with constant bounds: the planner knows the exact row count.
    assert {(p.estimated_rows, p.estimate_source) for p in seen} == {(SLOW_ROWS, PLANNER)}
    assert all(p.percent is not None and 0 < p.percent <= 100 for p in seen)
    assert all(p.eta_seconds is not None for p in seen)


def test_a_given_estimate_is_used_and_no_progress_means_no_calls(
    scratch_dsn: str, tmp_path: Path
) -> None:
    _slow_source(scratch_dsn)
    seen: list[Progress] = []
    store = LocalObjectStore(str(tmp_path), "exports")
    for progress in (
        ProgressReporting(seen.append, 0.0, 1, Estimate(600, PREVIOUS_MONTH)),
        None,
    ):
        stream = ExportStream(
            SourceConfig(scratch_dsn),
            _slow_query(300),
            {},
            name="slow",
            format=Format.CSV,
            compression=Compression.GZIP,
            tuning=EngineTuning(chunk_size=512),
            progress=progress,
        )
        with store.open_writer("slow.csv.gz", _headers()) as writer:
            assert stream.write_to(writer).rows == 300
            writer.commit()
    assert seen and {(p.estimated_rows, p.estimate_source) for p in seen} == {(600, PREVIOUS_MONTH)}
    # Interval 0 and every row: one report per COPY chunk, none per row.
    assert 1 < len(seen) < 300
    assert max(p.percent or 0 for p in seen) <= 50.0


def _headers() -> ObjectHeaders:
    return ObjectHeaders("application/octet-stream", "slow")
