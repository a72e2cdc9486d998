"""Progress of running exports, reported by the clock, not by row counts (no Dagster here).

The write loops only count: `ExportMeter.update(rows, bytes_written)` once per Arrow batch
(Parquet) or COPY chunk (text formats), never per row, stores two integers. A
`ProgressReporter`, one per batch of exports (a Dagster step exports a range of partitions),
runs one daemon thread that every `interval_seconds` reads the meters and hands a `Report` to
its callback:
- the batch's own line when it has more than one partition: partitions done of N, rows, rate
  and an ETA for the batch;
- while the batch waits before its exports (`waiting`: for the partition locks of
  customer-months another run is writing), how long it has waited;
- one line per export that has been running for at least one interval, whether or not rows
  arrived: an export still waiting for its first row (a slow query on the server) says so,
  with the time waited. So an export of 1,234 rows whose query takes 12 s reports at 5 s and
  10 s, and an export shorter than one interval reports nothing (its result says it all).

Lifecycle: `close()` (call it in `finally`, or use the reporter as a context manager) stops
the thread and waits, at most `close_timeout_seconds` (10 s), for a report being written, so
no report lands after the batch's own result unless that write hangs longer; the thread is a
daemon, so a hung write never keeps the process alive. At most one report is in flight: the
next is computed only after the previous one was handed over. Reporting is best effort: a
callback that raises is reported once to `on_error` and reporting stops; the exports go on.

The estimate of a partition's rows costs no second scan: a figure the caller already has (the
previous month's recorded row count, source "previous_month") or the planner's row estimate
of the export query (`EXPLAIN (FORMAT JSON)`, source "planner"); "none" when neither is
available, and then percent and ETA are unknown. docs/progress.md has the whole story.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType

DEFAULT_INTERVAL_SECONDS = 5.0
DEFAULT_CLOSE_TIMEOUT_SECONDS = 10.0

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
class ExportProgress:
    """One export's figures at one instant."""

    dataset: str
    partition: str
    rows: int
    bytes_written: int
    elapsed_seconds: float
    estimated_rows: int | None
    estimate_source: str
    # Seconds from the start to the first row; None while still waiting for it.
    first_row_seconds: float | None = None

    @property
    def waiting_for_first_row(self) -> bool:
        return self.first_row_seconds is None

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


@dataclass(frozen=True)
class BatchProgress:
    """A batch of exports (a ranged run's step) at one instant."""

    name: str
    total: int  # partitions in the batch
    done: int  # delivered
    failed: int
    rows: int  # rows of the delivered partitions and of those still running
    bytes_written: int
    elapsed_seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average time per finished partition so far."""
        finished = self.done + self.failed
        if not finished or finished >= self.total:
            return None if not finished else 0.0
        return self.elapsed_seconds / finished * (self.total - finished)


@dataclass(frozen=True)
class Waiting:
    """The batch has been waiting, before any export, for `what` (e.g. the partition locks of
    customer-months another run is writing)."""

    name: str
    what: str
    seconds: float


@dataclass(frozen=True)
class Report:
    """What one tick of the reporter says: the batch (None for a batch of one), the exports
    running for at least one interval, and a wait of at least one interval."""

    batch: BatchProgress | None
    exports: tuple[ExportProgress, ...] = ()
    waiting: Waiting | None = None


class ExportMeter:
    """The live counters of one running export; `update` is all the write loop calls."""

    def __init__(
        self,
        dataset: str,
        partition: str,
        estimate: Estimate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dataset = dataset
        self.partition = partition
        self.estimate = estimate
        self._clock = clock
        self.started = clock()
        self.rows = 0
        self.bytes_written = 0
        self._first_row_at: float | None = None

    def update(self, rows: int, bytes_written: int) -> None:
        """Cumulative rows and bytes so far (two stores; a clock read only on the first row)."""
        self.rows = rows
        self.bytes_written = bytes_written
        if self._first_row_at is None and rows:
            self._first_row_at = self._clock()

    def snapshot(self, now: float) -> ExportProgress:
        estimate = self.estimate or Estimate.none()
        first = self._first_row_at
        return ExportProgress(
            dataset=self.dataset,
            partition=self.partition,
            rows=self.rows,
            bytes_written=self.bytes_written,
            elapsed_seconds=now - self.started,
            estimated_rows=estimate.rows,
            estimate_source=estimate.source,
            first_row_seconds=None if first is None else first - self.started,
        )


@dataclass
class _Totals:
    done: int = 0
    failed: int = 0
    rows: int = 0
    bytes_written: int = 0
    running: list[ExportMeter] = field(default_factory=list)


class ProgressReporter:
    """Reports a batch of exports every `interval_seconds` on a thread of its own (see the
    module docstring). `on_report` runs on that thread; `on_error` gets the first exception
    it raises, after which reporting stops."""

    def __init__(
        self,
        on_report: Callable[[Report], None],
        *,
        name: str = "",
        total: int = 1,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        on_error: Callable[[BaseException], None] | None = None,
        close_timeout_seconds: float = DEFAULT_CLOSE_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("progress interval_seconds must be positive")
        self._on_report = on_report
        self._on_error = on_error
        self.name = name
        self.total = total
        self.interval_seconds = interval_seconds
        self._close_timeout = close_timeout_seconds
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._totals = _Totals()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiting: tuple[str, float] | None = None  # what, since
        self.reports = 0

    def start(self) -> ProgressReporter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="export-progress", daemon=True)
            self._thread.start()
        return self

    @contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """While the block runs, a wait of an interval or more is reported (`Report.waiting`)."""
        with self._lock:
            self._waiting = (what, self._clock())
        try:
            yield
        finally:
            with self._lock:
                self._waiting = None

    def meter(self, dataset: str, partition: str, estimate: Estimate | None = None) -> ExportMeter:
        """A meter for one export of the batch; hand it back with `finished`."""
        meter = ExportMeter(dataset, partition, estimate, self._clock)
        with self._lock:
            self._totals.running.append(meter)
        return meter

    def finished(self, meter: ExportMeter, delivered: bool | None) -> None:
        """The export of `meter` ended: delivered (its rows count), failed for good (False),
        or failed and will be tried again (None: not counted yet)."""
        with self._lock:
            totals = self._totals
            if meter in totals.running:
                totals.running.remove(meter)
            if delivered:
                totals.done += 1
                totals.rows += meter.rows
                totals.bytes_written += meter.bytes_written
            elif delivered is not None:
                totals.failed += 1

    def report(self) -> Report:
        """What a tick would report now."""
        now = self._clock()
        with self._lock:
            totals = self._totals
            running = [m.snapshot(now) for m in totals.running]
            batch = BatchProgress(
                name=self.name,
                total=self.total,
                done=totals.done,
                failed=totals.failed,
                rows=totals.rows + sum(p.rows for p in running),
                bytes_written=totals.bytes_written + sum(p.bytes_written for p in running),
                elapsed_seconds=now - self._started,
            )
            waiting = None
            if self._waiting is not None and now - self._waiting[1] >= self.interval_seconds:
                waiting = Waiting(self.name, self._waiting[0], now - self._waiting[1])
        slow = tuple(p for p in running if p.elapsed_seconds >= self.interval_seconds)
        return Report(batch if self.total > 1 else None, slow, waiting)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            report = self.report()
            if report.batch is None and not report.exports and report.waiting is None:
                continue
            try:
                self._on_report(report)
                self.reports += 1
            except Exception as exc:  # best effort: say it once, then stay quiet
                if self._on_error is not None:
                    self._on_error(exc)
                return

    def close(self) -> None:
        """Stop reporting; wait (bounded) for a report being written."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self._close_timeout)

    def __enter__(self) -> ProgressReporter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
