"""One partitioned asset per dataset of the spec: `exports/<dataset>`.

For the partitions of its run (one customer-month, or a range of them: a backfill, the monthly
schedule) the asset returns one `ExportStream` each (query, format, compression, type
contract; nothing read, no connection open) together with the run's source session. The
export IO manager (`io_managers/exports.py`) writes them into storage and records what each
partition delivered, so every asset that produces a file goes through the same writer, and
downstream assets can load a handle to the file.

A UI backfill of N customers x M months becomes a few ranged runs, not N x M runs
(`EXPORT_BACKFILL_POLICY`).
"""

import warnings

import dagster as dg

from export_pipeline.batch import ExportStreams
from export_pipeline.dagster_private import cancel_ends_the_run, pool_instance_connections
from export_pipeline.engine import ExportStream, partition_stream
from export_pipeline.errors import ExportError
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY
from export_pipeline.io_managers.failures import export_failure
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.partitions import split_partition_key
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import DatasetSpec

SOURCE_POOL = "export_source_db"
EXPORTS_GROUP = "exports"

# Transient failures (see export_pipeline.retryable) are retried after about 30 s, 60 s and
# 120 s (+-50% jitter, so a fleet of failed runs does not come back at once); permanent ones
# are never retried. The export IO manager applies it to each partition in place (the others
# go on meanwhile, and nothing delivered is exported again); Dagster applies it to the step
# when it fails before any partition was delivered.
EXPORT_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

# A backfill's run covers at most this many partitions of each selected asset. 500: a month of
# 1,000 customers is two runs that drain side by side (each its own source session and
# commit threads) instead of one; Dagster's fixed cost per run (about 5 s to launch, some
# seconds of code loading) is then under 2% of a run; a failed or cancelled run touches at
# most 500 customer-months; and at the reference's 10M-row customer (about 20 s an export) a
# full run of 3 datasets (about 8 h) stays under the 12-hour `max_runtime_seconds` backstop of
# deploy/dagster.yaml.
MAX_PARTITIONS_PER_RUN = 500
EXPORT_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN)


def build_export_asset(
    dataset: DatasetSpec,
    partitions_def: dg.PartitionsDefinition,
    retry_policy: dg.RetryPolicy | None = EXPORT_RETRY_POLICY,
) -> dg.AssetsDefinition:
    with warnings.catch_warnings():
        # Backfill policies are beta in Dagster 1.13; chosen knowingly (docs/operations.md),
        # pinned by export_pipeline_tests/defs/test_definitions.py.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _export_asset(dataset, partitions_def, retry_policy)


def _export_asset(
    dataset: DatasetSpec,
    partitions_def: dg.PartitionsDefinition,
    retry_policy: dg.RetryPolicy | None,
) -> dg.AssetsDefinition:
    source_desc = str(dataset.table) if dataset.table else "SQL query"

    @dg.asset(
        key=export_asset_key(dataset.name),
        partitions_def=partitions_def,
        group_name=EXPORTS_GROUP,
        kinds={"postgres", dataset.format.value},
        pool=SOURCE_POOL,
        io_manager_key=EXPORTS_IO_MANAGER_KEY,
        retry_policy=retry_policy,
        backfill_policy=EXPORT_BACKFILL_POLICY,
        description=f"Monthly {dataset.format.value} export of `{dataset.name}` "
        f"({source_desc}) per customer.",
        metadata={"format": dataset.format.value, "compression": dataset.compression.value},
    )
    def _export(context: dg.AssetExecutionContext, source: PostgresSourceResource) -> ExportStreams:
        asset = context.asset_key.to_user_string()
        with cancel_ends_the_run(asset):
            pool_instance_connections(context.instance)  # events follow, a run's worth
            config, tuning = source.source_config(), source.engine_tuning()
            streams: dict[str, ExportStream] = {}
            for key in context.partition_keys:
                try:
                    customer, month = split_partition_key(key)
                    streams[key] = partition_stream(config, dataset, customer, month, tuning)
                except ExportError as exc:  # a key that is no customer|month: nothing can run
                    raise export_failure(f"{asset} {key}", exc) from exc
            return ExportStreams(streams, source.session())

    return _export
