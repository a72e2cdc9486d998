"""Live progress of a run, read back from its event log.

The export IO manager reports progress every 5 s from a thread of its own
(`io_managers/progress.py`), as events whose metadata holds `progress_rows`:
- one per export running for 5 s or more: `progress_dataset` (e.g. `orders`),
  `progress_partition`, rows, bytes, rows/s and, when an estimate exists, estimated rows,
  percent and ETA; `progress_waiting_for_first_row` while the query has not returned a row;
- for a ranged step, the step's own line: `progress_partitions_done` (and `_failed`) of
  `progress_partitions_total`, rows, rows/s, ETA.

Whatever the event type (an engine event, an asset observation, a materialization), the
reader takes the latest event of the run that carries `progress_rows`, per dataset. Steps'
starts, successes and failures drive the state shown when no progress event exists yet; a
failed step's `failed_partitions` rows give each partition its own error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from export_pipeline.defs.runs import StepFailure, dataset_of_step, step_failures
from export_pipeline.io_managers.metadata import dataset_of, plain_values
from export_pipeline.io_managers.progress import (
    PROGRESS_BYTES,
    PROGRESS_DATASET,
    PROGRESS_ELAPSED_SECONDS,
    PROGRESS_ESTIMATE_SOURCE,
    PROGRESS_ESTIMATED_ROWS,
    PROGRESS_ETA_SECONDS,
    PROGRESS_PARTITION,
    PROGRESS_PARTITIONS_DONE,
    PROGRESS_PARTITIONS_FAILED,
    PROGRESS_PARTITIONS_TOTAL,
    PROGRESS_PERCENT,
    PROGRESS_ROWS,
    PROGRESS_ROWS_PER_SECOND,
    PROGRESS_WAITING_FOR_FIRST_ROW,
)

_STEP_STATES = {
    dg.DagsterEventType.STEP_START: "running",
    dg.DagsterEventType.STEP_SUCCESS: "done",
    dg.DagsterEventType.STEP_FAILURE: "failed",
    dg.DagsterEventType.STEP_UP_FOR_RETRY: "retrying",
    dg.DagsterEventType.STEP_SKIPPED: "skipped",
}


@dataclass(frozen=True)
class LoggedProgress:
    """One progress report read back from the event log: of one export, or of a ranged step
    (`partitions_total` set). The optional fields are None when unknown."""

    rows: int
    bytes: int | None = None
    rows_per_second: float | None = None
    estimated_rows: int | None = None
    percent: float | None = None
    eta_seconds: float | None = None
    estimate_source: str | None = None
    partition: str | None = None
    elapsed_seconds: float | None = None
    waiting_for_first_row: bool = False
    partitions_done: int | None = None
    partitions_failed: int | None = None
    partitions_total: int | None = None

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> LoggedProgress:
        def number(key: str) -> Any:
            value = md.get(key)
            return value if isinstance(value, int | float) and not isinstance(value, bool) else None

        def text(key: str) -> str | None:
            value = md.get(key)
            return str(value) if value is not None else None

        return cls(
            rows=int(md[PROGRESS_ROWS]),
            bytes=number(PROGRESS_BYTES),
            rows_per_second=number(PROGRESS_ROWS_PER_SECOND),
            estimated_rows=number(PROGRESS_ESTIMATED_ROWS),
            percent=number(PROGRESS_PERCENT),
            eta_seconds=number(PROGRESS_ETA_SECONDS),
            estimate_source=text(PROGRESS_ESTIMATE_SOURCE),
            partition=text(PROGRESS_PARTITION),
            elapsed_seconds=number(PROGRESS_ELAPSED_SECONDS),
            waiting_for_first_row=md.get(PROGRESS_WAITING_FOR_FIRST_ROW) is True,
            partitions_done=number(PROGRESS_PARTITIONS_DONE),
            partitions_failed=number(PROGRESS_PARTITIONS_FAILED),
            partitions_total=number(PROGRESS_PARTITIONS_TOTAL),
        )

    @property
    def is_batch(self) -> bool:
        """The line of a ranged step (partitions done of N), not of one export."""
        return self.partitions_total is not None

    def describe(self) -> str:
        if self.waiting_for_first_row:
            waited = f" for {self.elapsed_seconds:,.0f} s" if self.elapsed_seconds else ""
            return f"waiting for the first row{waited}"
        parts = []
        if self.is_batch:
            failed = f" ({self.partitions_failed} failed)" if self.partitions_failed else ""
            parts.append(
                f"{self.partitions_done or 0} of {self.partitions_total} partitions{failed}"
            )
        parts.append(f"{self.rows:,} rows")
        if self.percent is not None:
            parts.append(f"{self.percent:.0f}%")
        if self.rows_per_second is not None:
            parts.append(f"{self.rows_per_second:,.0f} rows/s")
        if self.eta_seconds is not None:
            parts.append(f"ETA {self.eta_seconds:.0f}s")
        return ", ".join(parts)


def event_metadata(entry: dg.EventLogEntry) -> dict[str, Any] | None:
    """The metadata an event carries, as plain values, wherever its type keeps it."""
    event = entry.dagster_event
    if event is None:
        return None
    data = event.event_specific_data
    holders = (
        data,
        getattr(data, "materialization", None),
        getattr(data, "asset_observation", None),
    )
    for holder in holders:
        metadata = getattr(holder, "metadata", None)
        if isinstance(metadata, Mapping) and metadata:
            return plain_values(metadata)
    return None


@dataclass
class RunProgress:
    """What a run's event log says so far, per dataset; feed it records in order."""

    run_id: str
    cursor: str | None = None
    steps: dict[str, str] = field(default_factory=dict)  # dataset -> running/done/failed...
    progress: dict[str, LoggedProgress] = field(default_factory=dict)  # the latest, per dataset
    batches: dict[str, LoggedProgress] = field(default_factory=dict)  # a ranged step's own line
    materialized: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, StepFailure] = field(default_factory=dict)  # dataset -> its step's
    other_failures: list[StepFailure] = field(default_factory=list)  # manifest, checks
    run_error: str | None = None  # the run's failure message (e.g. before any step started)
    pids: set[int] = field(default_factory=set)  # processes that wrote the run's events

    def read(self, instance: dg.DagsterInstance) -> None:
        """Read the records added since the last call."""
        while True:
            conn = instance.get_records_for_run(self.run_id, cursor=self.cursor, limit=1000)
            for record in conn.records:
                self.add(record.event_log_entry)
            self.cursor = conn.cursor
            if not conn.has_more:
                return

    def add(self, entry: dg.EventLogEntry) -> None:
        event = entry.dagster_event
        metadata = event_metadata(entry)
        if metadata is not None and PROGRESS_ROWS in metadata:
            self._add_progress(entry, LoggedProgress.from_metadata(metadata), metadata)
        if event is None:
            return
        if event.pid is not None:
            self.pids.add(event.pid)
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            self.run_error = event.message or entry.user_message
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            name = dataset_of(event.asset_key) if event.asset_key is not None else None
            if name is not None:
                self.materialized[name] = metadata or {}
        dataset = dataset_of_step(event.step_key)
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            [failure] = step_failures([event])
            if dataset is not None:
                self.failures[dataset] = failure
            else:
                self.other_failures.append(failure)
        state = _STEP_STATES.get(event.event_type)
        if dataset is not None and state is not None:
            self.steps[dataset] = state

    def _add_progress(
        self, entry: dg.EventLogEntry, report: LoggedProgress, metadata: Mapping[str, Any]
    ) -> None:
        if report.is_batch:  # its progress_dataset is the asset (`exports/orders`)
            dataset = dataset_of_step(entry.step_key)
            if dataset is not None:
                self.batches[dataset] = report
            return
        dataset = metadata.get(PROGRESS_DATASET) or dataset_of_step(entry.step_key)
        if dataset:
            self.progress[str(dataset)] = report

    def error(self, dataset: str, partition: str | None = None) -> str | None:
        """The error of `dataset`'s step: the row of `partition` where the failure lists its
        partitions one by one, else the failure's own message; None if it did not fail."""
        failure = self.failures.get(dataset)
        if failure is None:
            return None
        return partition_error(failure, partition) or failure.message

    def report(self, dataset: str, partition: str | None = None) -> LoggedProgress | None:
        """What to show for `dataset` (and `partition`, in a ranged run): the export's own
        latest report if it is that partition's, else the step's line of the range."""
        export = self.progress.get(dataset)
        if export is not None and (partition is None or export.partition in (None, partition)):
            return export
        return self.batches.get(dataset)


def partition_error(failure: StepFailure, partition: str | None) -> str | None:
    """The `failed_partitions` row's error for `partition` (a single-partition step has one
    row, its own); None if the failure has no such row."""
    rows = failure.partitions
    if partition is None and len(rows) == 1:
        return str(rows[0].get("error") or "") or None
    for row in rows:
        if row.get("partition") == partition:
            return str(row.get("error") or "") or None
    return None


def latest_progress(instance: dg.DagsterInstance, run_id: str) -> RunProgress:
    """Everything a run's event log says so far (one pass over it)."""
    progress = RunProgress(run_id)
    progress.read(instance)
    return progress
