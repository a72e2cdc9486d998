"""Live progress in the Dagster event log (docs/progress.md).

The engine's `ProgressReporter` (one per step, a thread of its own) hands over a `Report`
every 5 s; each line of it becomes, at once:
- a human-readable line through `context.log.info` (the run view, and the run's stdout), and
- an engine event whose metadata carries the figures under the `progress_*` keys below, for
  programs (the CLI reads them back: `export_pipeline.cli.progress`).

Both are written to the event log storage immediately, from the reporter's thread; the
reporter is closed before the step's output is recorded, so no report lands after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

from export_pipeline.dagster_private import report_progress_event
from export_pipeline.io_managers.metadata import ROW_COUNT, latest_records
from export_pipeline.partitions import previous_month_partition
from export_pipeline.progress import (
    PREVIOUS_MONTH,
    BatchProgress,
    Estimate,
    ExportProgress,
    ProgressReporter,
    Report,
    Waiting,
)

# The metadata keys of a progress event: a contract the CLI reads; add, never rename.
PROGRESS_ROWS = "progress_rows"
PROGRESS_BYTES = "progress_bytes"
PROGRESS_ROWS_PER_SECOND = "progress_rows_per_second"
PROGRESS_ESTIMATED_ROWS = "progress_estimated_rows"
PROGRESS_PERCENT = "progress_percent"
PROGRESS_ETA_SECONDS = "progress_eta_seconds"
PROGRESS_ESTIMATE_SOURCE = "progress_estimate_source"
PROGRESS_ELAPSED_SECONDS = "progress_elapsed_seconds"
PROGRESS_DATASET = "progress_dataset"
PROGRESS_PARTITION = "progress_partition"
PROGRESS_WAITING_FOR_FIRST_ROW = "progress_waiting_for_first_row"
# A ranged step's own line: partitions done (and failed) of the range.
PROGRESS_PARTITIONS_DONE = "progress_partitions_done"
PROGRESS_PARTITIONS_FAILED = "progress_partitions_failed"
PROGRESS_PARTITIONS_TOTAL = "progress_partitions_total"
# A step waiting before its exports (for partition locks): what it waits for.
PROGRESS_WAITING_FOR = "progress_waiting_for"


def export_metadata(progress: ExportProgress) -> dict[str, Any]:
    """An export's progress as event metadata: numbers as numbers; unknowns left out."""
    metadata: dict[str, Any] = {
        PROGRESS_DATASET: dg.MetadataValue.text(progress.dataset),
        PROGRESS_PARTITION: dg.MetadataValue.text(progress.partition),
        PROGRESS_ROWS: dg.MetadataValue.int(progress.rows),
        PROGRESS_BYTES: dg.MetadataValue.int(progress.bytes_written),
        PROGRESS_ROWS_PER_SECOND: dg.MetadataValue.float(round(progress.rows_per_second, 1)),
        PROGRESS_ELAPSED_SECONDS: dg.MetadataValue.float(round(progress.elapsed_seconds, 3)),
        PROGRESS_ESTIMATE_SOURCE: dg.MetadataValue.text(progress.estimate_source),
        PROGRESS_WAITING_FOR_FIRST_ROW: dg.MetadataValue.bool(progress.waiting_for_first_row),
    }
    if progress.estimated_rows is not None:
        metadata[PROGRESS_ESTIMATED_ROWS] = dg.MetadataValue.int(progress.estimated_rows)
    if progress.percent is not None:
        metadata[PROGRESS_PERCENT] = dg.MetadataValue.float(round(progress.percent, 2))
    if progress.eta_seconds is not None:
        metadata[PROGRESS_ETA_SECONDS] = dg.MetadataValue.float(round(progress.eta_seconds, 1))
    return metadata


def export_message(progress: ExportProgress) -> str:
    """E.g. `orders 3|2026-10-01: 1,200,000 of ~10,000,000 rows (12%), 410,000 rows/s,
    45.1 MB, ETA 21 s (planner estimate)`, or `... waiting for the first row for 7 s`."""
    where = f"{progress.dataset} {progress.partition}"
    if progress.waiting_for_first_row:
        return (
            f"{where}: waiting for the first row for {progress.elapsed_seconds:,.0f} s "
            "(the query is running on the server)"
        )
    done = f"{progress.rows:,}"
    if progress.estimated_rows is not None and progress.percent is not None:
        done += f" of ~{progress.estimated_rows:,} rows ({progress.percent:.0f}%)"
    else:
        done += " rows (no estimate)"
    parts = [
        f"{where}: {done}",
        f"{progress.rows_per_second:,.0f} rows/s",
        f"{progress.bytes_written / 1e6:,.1f} MB",
    ]
    if progress.eta_seconds is not None:
        parts.append(f"ETA {progress.eta_seconds:,.0f} s ({progress.estimate_source} estimate)")
    return ", ".join(parts)


def batch_metadata(batch: BatchProgress) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        PROGRESS_DATASET: dg.MetadataValue.text(batch.name),
        PROGRESS_PARTITIONS_DONE: dg.MetadataValue.int(batch.done),
        PROGRESS_PARTITIONS_FAILED: dg.MetadataValue.int(batch.failed),
        PROGRESS_PARTITIONS_TOTAL: dg.MetadataValue.int(batch.total),
        PROGRESS_ROWS: dg.MetadataValue.int(batch.rows),
        PROGRESS_BYTES: dg.MetadataValue.int(batch.bytes_written),
        PROGRESS_ROWS_PER_SECOND: dg.MetadataValue.float(round(batch.rows_per_second, 1)),
        PROGRESS_ELAPSED_SECONDS: dg.MetadataValue.float(round(batch.elapsed_seconds, 3)),
    }
    if batch.eta_seconds is not None:
        metadata[PROGRESS_ETA_SECONDS] = dg.MetadataValue.float(round(batch.eta_seconds, 1))
    return metadata


def batch_message(batch: BatchProgress) -> str:
    """E.g. `exports/events: 120 of 500 partitions (2 failed), 1,234,567 rows, 45,000 rows/s,
    ETA 96 s`."""
    failed = f" ({batch.failed} failed)" if batch.failed else ""
    parts = [
        f"{batch.name}: {batch.done} of {batch.total} partitions{failed}",
        f"{batch.rows:,} rows",
        f"{batch.rows_per_second:,.0f} rows/s",
    ]
    if batch.eta_seconds is not None:
        parts.append(f"ETA {batch.eta_seconds:,.0f} s")
    return ", ".join(parts)


def waiting_metadata(waiting: Waiting) -> dict[str, Any]:
    return {
        PROGRESS_DATASET: dg.MetadataValue.text(waiting.name),
        PROGRESS_WAITING_FOR: dg.MetadataValue.text(waiting.what),
        PROGRESS_ELAPSED_SECONDS: dg.MetadataValue.float(round(waiting.seconds, 3)),
    }


def waiting_message(waiting: Waiting) -> str:
    """E.g. `exports/events: waiting for the customer-months another run is writing (their
    partition locks) for 25 s`."""
    return f"{waiting.name}: waiting for {waiting.what} for {waiting.seconds:,.0f} s"


def event_log_reporter(
    log: dg.DagsterLogManager,
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    step_key: str | None,
    name: str,
    total: int,
    interval_seconds: float,
) -> ProgressReporter:
    """A reporter writing each line of each report to the run's event log (started; close it).

    Progress is best effort: if writing fails, the exports go on, with one warning and no
    further reports.
    """

    def write(message: str, metadata: dict[str, Any]) -> None:
        log.info(message)
        report_progress_event(instance, run, step_key, message, metadata)

    def on_report(report: Report) -> None:
        if report.waiting is not None:
            write(waiting_message(report.waiting), waiting_metadata(report.waiting))
        if report.batch is not None:
            write(batch_message(report.batch), batch_metadata(report.batch))
        for progress in report.exports:
            write(export_message(progress), export_metadata(progress))

    def on_error(exc: BaseException) -> None:
        log.warning(
            f"{name}: progress reporting stopped, the exports go on ({type(exc).__name__}: {exc})"
        )

    return ProgressReporter(
        on_report,
        name=name,
        total=total,
        interval_seconds=interval_seconds,
        on_error=on_error,
    ).start()


def previous_month_estimates(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: Sequence[str]
) -> dict[str, Estimate]:
    """For each partition, the row count recorded for the same customer and dataset a month
    earlier, where there is one (a few queries for the whole range)."""
    before = {previous_month_partition(partition): partition for partition in partitions}
    records = latest_records(instance, asset_key, list(before))
    estimates: dict[str, Estimate] = {}
    for previous, recorded in records.items():
        rows = recorded.metadata.get(ROW_COUNT)
        if isinstance(rows, int) and rows > 0:
            estimates[before[previous]] = Estimate(rows, PREVIOUS_MONTH)
    return estimates
