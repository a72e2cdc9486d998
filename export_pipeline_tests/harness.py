"""The one way tests build and run the exports: engine calls and in-process Dagster runs.

Engine level (no Dagster): `export_one` exports one customer-month of a dataset through the
same `export_batch` the IO manager uses; `write_query` streams any query into one object.
Dagster level: `export_resources` wires real resources (a real PostgreSQL, local storage or an
S3 endpoint), `export_definitions` builds the assets, checks and manifest of a spec (as the
code location does, with the retry policy a test wants), and `materialize` runs `exports_job`
for one partition or a range, in process, on a given instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import dagster as dg

from export_pipeline.batch import BatchItem, BatchResult, Retries, export_batch
from export_pipeline.dagster_private import ranged_run_tags
from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.checks import build_export_checks
from export_pipeline.defs.jobs import exports_job
from export_pipeline.defs.manifest import build_manifest_asset
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.engine import (
    EngineTuning,
    ExportResult,
    ExportStream,
    object_headers,
    partition_stream,
)
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.extract.contract import ContractOptions
from export_pipeline.extract.session import SourceSession
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, ExportIOManager
from export_pipeline.io_managers.metadata import export_asset_key, latest_metadata
from export_pipeline.partitions import Month, partition_key
from export_pipeline.progress import ExportMeter
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.resources.storage import (
    EXPORT_STORAGE_KEY,
    ExportStorageResource,
    LocalExportStorageResource,
    S3ExportStorageResource,
)
from export_pipeline.settings import DELIVERY_WEBHOOK_KEY
from export_pipeline.spec import Compression, DatasetSpec, ExportSpec, Format
from export_pipeline.storage.writer import ObjectStore, StoredObject

# Retries in tests: the production policy's shape, in fractions of a second.
FAST_RETRY = dg.RetryPolicy(max_retries=2, delay=0.1)


# -- engine ---------------------------------------------------------------------------------
def export_one(
    source: SourceConfig | SourceSession,
    store: ObjectStore,
    dataset: DatasetSpec,
    customer: str,
    month: Month,
    tuning: EngineTuning | None = None,
    retries: Retries | None = None,
) -> ExportResult:
    """Export one customer-month as a step does (locks, withdrawal, orphans, commit); raise
    the partition's error if it failed."""
    session = source if isinstance(source, SourceSession) else None
    config = source.config if isinstance(source, SourceSession) else source
    stream = partition_stream(config, dataset, customer, month, tuning)
    key = partition_key(customer, month)
    result = export_batch(
        [BatchItem(key, customer, month, stream)],
        store,
        dataset.name,
        session=session,
        retries=retries,
    )
    if key in result.failed:
        raise result.failed[key].error
    return result.delivered[key]


def export_many(
    session: SourceSession,
    store: ObjectStore,
    dataset: DatasetSpec,
    partitions: Iterable[tuple[str, Month]],
    retries: Retries | None = None,
) -> BatchResult:
    """A batch of customer-months of one dataset, as a ranged step exports them."""
    items = [
        BatchItem(partition_key(c, m), c, m, partition_stream(session.config, dataset, c, m))
        for c, m in partitions
    ]
    return export_batch(items, store, dataset.name, session=session, retries=retries)


def write_query(
    source: SourceConfig,
    store: ObjectStore,
    key: str,
    query: Any,
    params: Mapping[str, Any],
    fmt: Format,
    compression: Compression,
    *,
    name: str,
    tuning: EngineTuning | None = None,
    contract: ContractOptions | None = None,
    meter: ExportMeter | None = None,
) -> tuple[StoredObject, int]:
    """Stream any query's result into the object `key`: (what was stored, rows)."""
    stream = ExportStream(
        source,
        query,
        params,
        name=name,
        format=fmt,
        compression=compression,
        tuning=tuning or EngineTuning(),
        contract=contract or ContractOptions(),
    )
    with store.open_writer(key, object_headers(stream, key)) as writer:
        written = stream.write_to(writer, meter=meter)
        return writer.commit(), written.rows


# -- Dagster --------------------------------------------------------------------------------
def local_storage(base_dir: Path | str) -> LocalExportStorageResource:
    return LocalExportStorageResource(base_dir=str(base_dir))


def s3_storage(endpoint: str, bucket: str, **settings: Any) -> S3ExportStorageResource:
    return S3ExportStorageResource(
        s3=ExportS3Resource(endpoint_url=endpoint, region_name="us-east-1"),
        bucket=bucket,
        **settings,
    )


def export_resources(
    source_dsn: str,
    storage: ExportStorageResource,
    *,
    statement_timeout_seconds: int = 60,
    state_dsn: str | None = None,
    delivery_webhook: DeliveryWebhookResource | None = None,
    progress_interval_seconds: float = 5.0,
    **source_settings: Any,
) -> dict[str, Any]:
    """The resources the code location builds from the environment, built directly."""
    return {
        "source": PostgresSourceResource(
            dsn=source_dsn, statement_timeout_seconds=statement_timeout_seconds, **source_settings
        ),
        EXPORT_STORAGE_KEY: storage,
        EXPORTS_IO_MANAGER_KEY: ExportIOManager(
            storage=storage, progress_interval_seconds=progress_interval_seconds
        ),
        DELIVERY_WEBHOOK_KEY: delivery_webhook or DeliveryWebhookResource(),
        "state": ExportStateResource(dsn=state_dsn),
    }


def export_definitions(
    spec: ExportSpec,
    resources: Mapping[str, Any],
    *,
    retry_policy: dg.RetryPolicy | None = FAST_RETRY,
    checks: bool = True,
    manifest: bool = True,
) -> dg.Definitions:
    """The spec's assets (and checks, and manifest) with `exports_job`, run in process."""
    partitions_def = build_export_partitions_def(spec.months_start)
    assets: list[dg.AssetsDefinition] = [
        build_export_asset(d, partitions_def, retry_policy=retry_policy)
        for d in spec.datasets.values()
    ]
    if manifest:
        assets.append(build_manifest_asset(spec, partitions_def, retry_policy=retry_policy))
    return dg.Definitions(
        assets=assets,
        asset_checks=(
            [build_export_checks(d, partitions_def) for d in spec.datasets.values()]
            if checks
            else []
        ),
        jobs=[exports_job],
        resources=dict(resources),
        executor=dg.in_process_executor,
    )


# Compute logs are not captured in the tests' instances: Dagster's local capture starts a
# `tail` and an orphan watcher for each stream of each run (about 0.07 s of CPU a run, a few
# hundred in-process runs in the suite), and no test reads them.
NO_COMPUTE_LOGS = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


def fresh_instance(temp_dir: str | None = None) -> AbstractContextManager[dg.DagsterInstance]:
    """`dg.instance_for_test`, without compute-log capture."""
    return dg.instance_for_test(overrides=NO_COMPUTE_LOGS, temp_dir=temp_dir)


def materialize(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    partitions: str | tuple[str, str],
    selection: Sequence[dg.AssetKey] | None = None,
    tags: Mapping[str, str] | None = None,
    raise_on_error: bool = False,
) -> dg.ExecuteInProcessResult:
    """A run of `exports_job` for one partition key, or a (first, last) range of them."""
    job = defs.resolve_job_def(exports_job.name)
    run_tags = dict(tags or {})
    partition: str | None = None
    if isinstance(partitions, tuple):
        run_tags.update(ranged_run_tags(*partitions))
    else:
        partition = partitions
    return job.execute_in_process(
        instance=instance,
        partition_key=partition,
        asset_selection=list(selection) if selection is not None else None,
        tags=run_tags,
        raise_on_error=raise_on_error,
    )


def add_customers(instance: dg.DagsterInstance, customers: Iterable[str]) -> None:
    instance.add_dynamic_partitions("customers", list(customers))


def recorded(instance: dg.DagsterInstance, dataset: str, partition: str) -> dict[str, Any] | None:
    """The plain metadata of the partition's latest materialization of `exports/<dataset>`."""
    return latest_metadata(instance, export_asset_key(dataset), partition)


def step_failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Step key -> the failure's description (or error message), for assertions."""
    failures: dict[str, str] = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE" and event.step_key:
            data = event.step_failure_data
            user = data.user_failure_data
            if user is not None and user.description:
                failures[event.step_key] = user.description
            else:
                failures[event.step_key] = data.error.message if data.error else ""
    return failures
