"""Live progress in the Dagster event log (docs/progress.md).

The engine's `ProgressMeter` calls back at a bounded rate; each `Progress` becomes, at once:
- a human-readable line through `context.log.info` (run view, and the run's stdout), and
- an engine event whose metadata carries the figures under the `progress_*` keys below, for
  programs (the CLI reads them back: `export_pipeline.cli.progress`).

Why not `OutputContext.log_event`: Dagster buffers those events and writes them only after
`handle_output` returns (dagster/_core/execution/plan/execute_step.py, `consume_events`), that
is after the export. `context.log` and `DagsterInstance.report_engine_event` write to the
event log storage immediately, in the process running the step.
"""

from __future__ import annotations

import threading
from typing import Any

import dagster as dg
from dagster._core.events import EngineEventData

from export_pipeline.io_managers.metadata import latest_metadata
from export_pipeline.partitions import Month
from export_pipeline.progress import (
    PREVIOUS_MONTH,
    Estimate,
    Progress,
    ProgressCallback,
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


def progress_metadata(progress: Progress, dataset: str, partition: str) -> dict[str, Any]:
    """A progress report as event metadata: numbers as numbers; unknowns left out."""
    metadata: dict[str, Any] = {
        PROGRESS_DATASET: dg.MetadataValue.text(dataset),
        PROGRESS_PARTITION: dg.MetadataValue.text(partition),
        PROGRESS_ROWS: dg.MetadataValue.int(progress.rows),
        PROGRESS_BYTES: dg.MetadataValue.int(progress.bytes_written),
        PROGRESS_ROWS_PER_SECOND: dg.MetadataValue.float(round(progress.rows_per_second, 1)),
        PROGRESS_ELAPSED_SECONDS: dg.MetadataValue.float(round(progress.elapsed_seconds, 3)),
        PROGRESS_ESTIMATE_SOURCE: dg.MetadataValue.text(progress.estimate_source),
    }
    if progress.estimated_rows is not None:
        metadata[PROGRESS_ESTIMATED_ROWS] = dg.MetadataValue.int(progress.estimated_rows)
    if progress.percent is not None:
        metadata[PROGRESS_PERCENT] = dg.MetadataValue.float(round(progress.percent, 2))
    if progress.eta_seconds is not None:
        metadata[PROGRESS_ETA_SECONDS] = dg.MetadataValue.float(round(progress.eta_seconds, 1))
    return metadata


def progress_message(progress: Progress, dataset: str, partition: str) -> str:
    """E.g. `orders 3|2026-10-01: 1,200,000 of ~10,000,000 rows (12%), 410,000 rows/s,
    45.1 MB, ETA 21 s (planner estimate)`."""
    done = f"{progress.rows:,}"
    if progress.estimated_rows is not None and progress.percent is not None:
        done += f" of ~{progress.estimated_rows:,} rows ({progress.percent:.0f}%)"
    else:
        done += " rows (no estimate)"
    parts = [
        f"{dataset} {partition}: {done}",
        f"{progress.rows_per_second:,.0f} rows/s",
        f"{progress.bytes_written / 1e6:,.1f} MB",
    ]
    if progress.eta_seconds is not None:
        parts.append(f"ETA {progress.eta_seconds:,.0f} s ({progress.estimate_source} estimate)")
    return ", ".join(parts)


def event_log_reporter(
    log: dg.DagsterLogManager,
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    step_key: str | None,
    dataset: str,
    partition: str,
) -> ProgressCallback:
    """A callback that writes each report to the run's event log immediately, on a thread of
    its own: a write to the instance's database (tens of milliseconds on a busy SQLite) never
    stalls the export. A report that comes while the previous one is still being written is
    dropped (the next one, 5 s later, carries the newer figures), so reports stay in order.

    Progress is best effort: if writing a report fails, the export goes on, with one warning
    and no further reports.
    """
    writing: threading.Thread | None = None
    failed = False

    def write(progress: Progress) -> None:
        nonlocal failed
        message = progress_message(progress, dataset, partition)
        try:
            log.info(message)
            instance.report_engine_event(
                message,
                dagster_run=run,
                engine_event_data=EngineEventData(progress_metadata(progress, dataset, partition)),
                step_key=step_key,
            )
        except Exception as exc:
            failed = True
            log.warning(
                f"{dataset} {partition}: progress reporting stopped, the export goes on "
                f"({type(exc).__name__}: {exc})"
            )

    def report(progress: Progress) -> None:
        nonlocal writing
        if failed or (writing is not None and writing.is_alive()):
            return
        # Not a daemon: a report being written when the run ends still gets written.
        writing = threading.Thread(target=write, args=(progress,), name="export-progress")
        writing.start()

    return report


def previous_month_estimate(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, customer: str, month: Month
) -> Estimate | None:
    """The row count recorded for the same customer and dataset a month earlier, if any."""
    partition = f"{customer}|{month.previous().start.isoformat()}"
    recorded = latest_metadata(instance, asset_key, partition)
    rows = None if recorded is None else recorded.get("dagster/row_count")
    return Estimate(rows, PREVIOUS_MONTH) if isinstance(rows, int) and rows > 0 else None
