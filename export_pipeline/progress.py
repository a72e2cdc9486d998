"""Progress of a running export, reported at a bounded rate (no Dagster here).

The write loops call `ProgressMeter.update(rows, bytes_written)` once per Arrow batch (Parquet)
or COPY chunk (text formats), never per row. The meter compares the row count first (an int
comparison) and reads `time.monotonic` only once `every_rows` more rows are done; it calls
`on_progress` when both `every_rows` rows and `interval_seconds` have passed since the last
report (or the start), whichever is later. So a run reports at most elapsed / interval times,
and an export shorter than one interval reports nothing (its materialization says it all).

The estimate of the partition's rows costs no second scan: either a hint the caller already
has (the previous month's recorded row count, source "previous_month") or the planner's row
estimate of the export query (`EXPLAIN (FORMAT JSON)`, source "planner"); "none" when neither
is available, and then percent and ETA are unknown. docs/progress.md has the whole story.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL_SECONDS = 5.0
DEFAULT_EVERY_ROWS = 10_000

PREVIOUS_MONTH = "previous_month"
PLANNER = "planner"
NO_ESTIMATE = "none"


@dataclass(frozen=True)
class Estimate:
    """How many rows the partition probably has, and where that figure comes from."""

    rows: int | None
    source: str

    @classmethod
    def none(cls) -> Estimate:
        return cls(None, NO_ESTIMATE)


@dataclass(frozen=True)
class Progress:
    """One report: what was done so far, and what that says about the rest."""

    rows: int
    bytes_written: int
    elapsed_seconds: float
    estimated_rows: int | None
    estimate_source: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def percent(self) -> float | None:
        """Share of the estimate done, at most 100 (an estimate can be low)."""
        if not self.estimated_rows:
            return None
        return min(100.0, 100.0 * self.rows / self.estimated_rows)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average rate so far; 0 once the estimate is passed."""
        if not self.estimated_rows or self.rows_per_second <= 0:
            return None
        return max(0, self.estimated_rows - self.rows) / self.rows_per_second


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ProgressReporting:
    """What an export should do about progress: whom to tell, how often, and any estimate the
    caller already has (None: the engine asks the planner)."""

    on_progress: ProgressCallback
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    every_rows: int = DEFAULT_EVERY_ROWS
    estimate: Estimate | None = None

    def __post_init__(self) -> None:
        if self.interval_seconds < 0 or self.every_rows < 0:
            raise ValueError("progress interval_seconds and every_rows must not be negative")

    def meter(
        self, estimate: Estimate, clock: Callable[[], float] = time.monotonic
    ) -> ProgressMeter:
        return ProgressMeter(
            self.on_progress, estimate, self.interval_seconds, self.every_rows, clock
        )


class ProgressMeter:
    """Turns per-batch counts into reports at a bounded rate. `clock` is injectable for tests."""

    def __init__(
        self,
        on_progress: ProgressCallback,
        estimate: Estimate,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        every_rows: int = DEFAULT_EVERY_ROWS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_progress = on_progress
        self._estimate = estimate
        self._interval = interval_seconds
        self._every_rows = every_rows
        self._clock = clock
        self._started = clock()
        self._next_time = self._started + interval_seconds
        self._next_rows = every_rows
        self.reports = 0

    def update(self, rows: int, bytes_written: int) -> None:
        """Cumulative rows and bytes so far; reports when both thresholds are passed."""
        if rows < self._next_rows:
            return
        now = self._clock()
        if now < self._next_time:
            return
        self._next_time = now + self._interval
        self._next_rows = rows + self._every_rows
        self.reports += 1
        self._on_progress(
            Progress(
                rows=rows,
                bytes_written=bytes_written,
                elapsed_seconds=now - self._started,
                estimated_rows=self._estimate.rows,
                estimate_source=self._estimate.source,
            )
        )
