"""Live progress of a run, read back from its event log.

The export reports progress as events whose metadata holds `progress_rows` (plus bytes, rows/s
and, when an estimate exists, estimated rows, percent and ETA). Whatever the event type
(an asset observation, an engine event, a materialization), the reader takes the latest event
of the run that carries `progress_rows`, per dataset. Steps' starts, successes and failures
drive the state shown when no progress event exists yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from export_pipeline.io_managers.metadata import plain_values
from export_pipeline.io_managers.progress import (
    PROGRESS_BYTES,
    PROGRESS_DATASET,
    PROGRESS_ESTIMATE_SOURCE,
    PROGRESS_ESTIMATED_ROWS,
    PROGRESS_ETA_SECONDS,
    PROGRESS_PERCENT,
    PROGRESS_ROWS,
    PROGRESS_ROWS_PER_SECOND,
)

_STEP_STATES = {
    dg.DagsterEventType.STEP_START: "running",
    dg.DagsterEventType.STEP_SUCCESS: "done",
    dg.DagsterEventType.STEP_FAILURE: "failed",
    dg.DagsterEventType.STEP_UP_FOR_RETRY: "retrying",
    dg.DagsterEventType.STEP_SKIPPED: "skipped",
}


@dataclass(frozen=True)
class Progress:
    """One progress report of one dataset; the optional fields are None when unknown."""

    rows: int
    bytes: int | None = None
    rows_per_second: float | None = None
    estimated_rows: int | None = None
    percent: float | None = None
    eta_seconds: float | None = None
    estimate_source: str | None = None

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> Progress:
        def number(key: str) -> Any:
            value = md.get(key)
            return value if isinstance(value, int | float) and not isinstance(value, bool) else None

        source = md.get(PROGRESS_ESTIMATE_SOURCE)
        return cls(
            rows=int(md[PROGRESS_ROWS]),
            bytes=number(PROGRESS_BYTES),
            rows_per_second=number(PROGRESS_ROWS_PER_SECOND),
            estimated_rows=number(PROGRESS_ESTIMATED_ROWS),
            percent=number(PROGRESS_PERCENT),
            eta_seconds=number(PROGRESS_ETA_SECONDS),
            estimate_source=str(source) if source is not None else None,
        )

    def describe(self) -> str:
        parts = [f"{self.rows:,} rows"]
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


def dataset_of_step(step_key: str | None) -> str | None:
    """`exports__orders` (the step of asset exports/orders) -> `orders`."""
    if step_key and step_key.startswith("exports__"):
        return step_key[len("exports__") :]
    return None


@dataclass
class RunProgress:
    """What a run's event log says so far, per dataset; feed it records in order."""

    run_id: str
    cursor: str | None = None
    steps: dict[str, str] = field(default_factory=dict)  # dataset -> running/done/failed...
    progress: dict[str, Progress] = field(default_factory=dict)
    materialized: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    run_error: str | None = None  # the run's failure message (e.g. before any step started)

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
            dataset = metadata.get(PROGRESS_DATASET) or dataset_of_step(entry.step_key)
            if dataset:
                self.progress[str(dataset)] = Progress.from_metadata(metadata)
        if event is None:
            return
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            self.run_error = event.message or entry.user_message
        dataset = dataset_of_step(event.step_key)
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            key = event.asset_key
            if key is not None and len(key.path) == 2 and key.path[0] == "exports":
                self.materialized[key.path[1]] = metadata or {}
        if dataset is None:
            return
        state = _STEP_STATES.get(event.event_type)
        if state is not None:
            self.steps[dataset] = state
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            self.errors[dataset] = step_failure_message(event)


_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"}


def step_failure_message(event: dg.DagsterEvent) -> str:
    """A failed step's own message (a dg.Failure's description, else the error's)."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    error = data.error
    while error is not None and error.cause is not None and error.cls_name in _WRAPPERS:
        error = error.cause
    return error.message.strip() if error is not None else "step failed"


def latest_progress(instance: dg.DagsterInstance, run_id: str) -> RunProgress:
    """Everything a run's event log says so far (one pass over it)."""
    progress = RunProgress(run_id)
    progress.read(instance)
    return progress
