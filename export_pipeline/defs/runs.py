"""What a finished run was about: its partitions, datasets, failures and delivered file URIs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from export_pipeline.dagster_private import run_partition_range
from export_pipeline.io_managers.exports import FAILED_PARTITIONS
from export_pipeline.io_managers.metadata import EXPORTS_KEY_PREFIX, dataset_of
from export_pipeline.partitions import PARTITION_TAG, PartitionKeyError, split_partition_key


@dataclass(frozen=True)
class RunPartitions:
    """The partitions a run covered: one (`3|2025-03-01`), a range (`1|2025-03-01...
    20|2025-03-01`), or none. Customer and month (YYYY-MM) are set when they are one."""

    partition_key: str | None
    customer: str | None
    month: str | None


def run_partitions(run: dg.DagsterRun) -> RunPartitions:
    """From the run's tags; all None for a run without partitions (ad-hoc, unpartitioned)."""
    key = run.tags.get(PARTITION_TAG)
    if key is not None:
        return _of_keys(key, key, key)
    ranged = run_partition_range(run)
    if ranged is None:
        return RunPartitions(None, None, None)
    first, last = ranged
    return _of_keys(f"{first}...{last}", first, last)


def _of_keys(label: str, first: str, last: str) -> RunPartitions:
    try:
        (c1, m1), (c2, m2) = split_partition_key(first), split_partition_key(last)
    except PartitionKeyError:
        return RunPartitions(label, None, None)
    return RunPartitions(label, c1 if c1 == c2 else None, str(m1) if m1 == m2 else None)


def run_datasets(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """Datasets (`exports/<name>` assets) the run selected, or planned when it selected all."""
    keys: set[dg.AssetKey] = set(run.asset_selection or ())
    if not keys:
        planned = instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        )
        keys = {
            e.dagster_event.asset_key
            for e in planned
            if e.dagster_event and e.dagster_event.asset_key
        }
    return sorted(d for k in keys if (d := dataset_of(k)) is not None)


def run_uris(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The `uri` metadata of every materialization the run recorded, in event order."""
    uris: list[str] = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        value = materialization.metadata.get("uri") if materialization else None
        if value is not None:
            uris.append(str(value.value))
    return uris


def dataset_of_step(step_key: str | None) -> str | None:
    """`exports__orders` (the step of asset exports/orders) -> `orders`; None for any other
    step (the manifest's, a check step `exports__orders__checks`)."""
    prefix = f"{EXPORTS_KEY_PREFIX}__"
    if step_key and step_key.startswith(prefix):
        name = step_key[len(prefix) :]
        return name if "__" not in name else None
    return None


@dataclass(frozen=True)
class StepFailure:
    """A failed step: its message, and the partitions it names one by one (each with
    partition, customer, month, dataset, error), if it is an export step that says."""

    step_key: str | None
    message: str
    partitions: list[dict[str, Any]]

    @property
    def dataset(self) -> str | None:
        """The dataset of an export step, else None."""
        return dataset_of_step(self.step_key)


def step_failures(events: Sequence[dg.DagsterEvent]) -> list[StepFailure]:
    """What each STEP_FAILURE event says: a `dg.Failure`'s description and its
    `failed_partitions` rows, else the root cause's message."""
    failures: list[StepFailure] = []
    for event in events:
        data = event.step_failure_data
        user = data.user_failure_data
        text = user.description if user else None
        rows: list[dict[str, Any]] = []
        if user is not None and FAILED_PARTITIONS in user.metadata:
            value = user.metadata[FAILED_PARTITIONS].value
            rows = [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []
        error = data.error
        while not text and error is not None and error.cause is not None:
            error = error.cause  # the root cause, under Dagster's "error in op" wrappers
        if not text and error is not None:
            text = error.message.strip()
        failures.append(StepFailure(event.step_key, text or "step failed", rows))
    return failures


def failure_message(context: dg.RunFailureSensorContext) -> str:
    """The steps' own messages, else the run's failure message."""
    messages = [
        f"{f.step_key}: {f.message}" for f in step_failures(context.get_step_failure_events())
    ]
    return "\n".join(messages) or context.failure_event.message or "run failed"
