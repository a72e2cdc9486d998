"""One partitioned asset per dataset of the spec: `exports/<dataset>`.

The asset validates its partition and returns an `ExportStream`: the query, format,
compression and type contract, with nothing read and no connection open. The export IO manager
(`io_managers/exports.py`) streams it into storage and records what was delivered, so every
asset that produces a file goes through the same writer, and downstream assets can load a
handle to the file.
"""

import dagster as dg

from export_pipeline.engine import ExportStream, partition_stream
from export_pipeline.errors import ExportError
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY
from export_pipeline.io_managers.failures import export_failure
from export_pipeline.partitions import split_partition_key
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import DatasetSpec

SOURCE_POOL = "export_source_db"

# Transient failures (see export_pipeline.retryable) are retried after about 30 s, 60 s and
# 120 s (+-50% jitter, so a fleet of failed runs does not come back at once); permanent ones
# raise dg.Failure(allow_retries=False) and are never retried.
EXPORT_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def build_export_asset(
    dataset: DatasetSpec,
    partitions_def: dg.PartitionsDefinition,
    retry_policy: dg.RetryPolicy | None = EXPORT_RETRY_POLICY,
) -> dg.AssetsDefinition:
    source_desc = str(dataset.table) if dataset.table else "SQL query"

    @dg.asset(
        key=dg.AssetKey(["exports", dataset.name]),
        partitions_def=partitions_def,
        group_name="exports",
        kinds={"postgres", dataset.format.value},
        pool=SOURCE_POOL,
        io_manager_key=EXPORTS_IO_MANAGER_KEY,
        retry_policy=retry_policy,
        description=f"Monthly {dataset.format.value} export of `{dataset.name}` "
        f"({source_desc}) per customer.",
        metadata={"format": dataset.format.value, "compression": dataset.compression.value},
    )
    def _export(context: dg.AssetExecutionContext, source: PostgresSourceResource) -> ExportStream:
        key = context.partition_key
        try:
            customer, month = split_partition_key(key)
            return partition_stream(
                source.source_config(),
                dataset,
                customer,
                month,
                source.engine_tuning(),
            )
        except ExportError as exc:
            raise export_failure(f"{context.asset_key.to_user_string()} {key}", exc) from exc

    return _export
