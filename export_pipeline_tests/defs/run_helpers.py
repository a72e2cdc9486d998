"""Real runs of `exports_job` and the contexts the run-status sensors get for them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.jobs import exports_job
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, LocalExportIOManager
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import ExportSpec

UNREACHABLE_SOURCE = "postgresql://u:pw-source-123@127.0.0.1:1/x"


def run_exports_job(
    instance: dg.DagsterInstance,
    spec: ExportSpec,
    source_dsn: str,
    storage_dir: Path,
    partition_key: str,
    asset_selection: Sequence[dg.AssetKey],
    tags: Mapping[str, str] | None = None,
) -> dg.DagsterRun:
    partitions_def = build_export_partitions_def(spec.months_start)
    defs = dg.Definitions(
        # No RetryPolicy: these runs fail on purpose (an unreachable source is transient).
        assets=[
            build_export_asset(d, partitions_def, retry_policy=None) for d in spec.datasets.values()
        ],
        jobs=[exports_job],
        resources={
            "source": PostgresSourceResource(dsn=source_dsn),
            EXPORTS_IO_MANAGER_KEY: LocalExportIOManager(base_dir=str(storage_dir)),
        },
    )
    result = defs.resolve_job_def("exports_job").execute_in_process(
        instance=instance,
        partition_key=partition_key,
        asset_selection=list(asset_selection),
        tags=dict(tags or {}),
        raise_on_error=False,
    )
    return result.dagster_run


def status_context(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    event_type: dg.DagsterEventType,
    sensor_name: str,
    resources: Mapping[str, object],
) -> dg.RunStatusSensorContext:
    [entry] = instance.all_logs(run.run_id, of_type=event_type)
    assert entry.dagster_event is not None
    return dg.build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_event=entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources=resources,
    )


def failure_context(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    sensor_name: str,
    resources: Mapping[str, object],
) -> dg.RunFailureSensorContext:
    context = status_context(instance, run, dg.DagsterEventType.RUN_FAILURE, sensor_name, resources)
    return context.for_run_failure()
