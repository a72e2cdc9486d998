"""What a finished run was about: partition, datasets, error and delivered file URIs."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from export_pipeline.partitions import CUSTOMER_DIMENSION, MONTH_DIMENSION

EXPORTS_PREFIX = "exports"
PARTITION_TAG = "dagster/partition"
_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"}


@dataclass(frozen=True)
class RunPartition:
    partition_key: str | None
    customer: str | None
    month: str | None  # YYYY-MM


def run_partition(run: dg.DagsterRun) -> RunPartition:
    """From the run's tags; all None for a run without a partition (ad-hoc, unpartitioned)."""
    tags = run.tags
    key = tags.get(PARTITION_TAG)
    customer = tags.get(f"{PARTITION_TAG}/{CUSTOMER_DIMENSION}")
    month = tags.get(f"{PARTITION_TAG}/{MONTH_DIMENSION}")
    if month is None and key is not None and "|" not in key:
        month = key  # monthly_exports_job: partitioned by month alone, many customers
    return RunPartition(key, customer, month[:7] if month else None)


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
    return sorted(k.path[1] for k in keys if len(k.path) == 2 and k.path[0] == EXPORTS_PREFIX)


def run_uris(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The `uri` metadata of every materialization the run recorded, in event order."""
    uris: list[str] = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        value = materialization.metadata.get("uri") if materialization else None
        if value is not None:
            uris.append(str(value.value))
    return uris


def failure_message(context: dg.RunFailureSensorContext) -> str:
    """The steps' own messages (a dg.Failure's description), else the run's failure message."""
    messages: list[str] = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        text = data.user_failure_data.description if data.user_failure_data else None
        error = data.error
        while error is not None and error.cause is not None and error.cls_name in _WRAPPERS:
            error = error.cause  # Dagster's "error occurred while executing op" wrapper
        if not text and error is not None:
            text = error.message.strip()
        messages.append(f"{event.step_key}: {text or 'step failed'}")
    return "\n".join(messages) or context.failure_event.message or "run failed"
