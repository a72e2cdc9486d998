"""One partitioned asset per dataset of the spec: `exports/<dataset>`.

The asset writes the file itself through the engine and returns only metadata. An IO manager
would add nothing here: the asset's product *is* the file, no downstream asset loads it as a
Python value, and the engine needs the partition's customer and month to build the query, not
just a place to put a return value.
"""

from typing import Any

import dagster as dg

from export_pipeline.engine import EngineTuning, ExportResult, export_partition
from export_pipeline.errors import ExportError
from export_pipeline.partitions import CUSTOMER_DIMENSION, MONTH_DIMENSION, Month
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.resources.storage import ExportStorageResource
from export_pipeline.spec import DatasetSpec, Format

SOURCE_POOL = "export_source_db"


def build_export_asset(
    dataset: DatasetSpec, partitions_def: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    source_desc = str(dataset.table) if dataset.table else "SQL query"

    @dg.asset(
        key=dg.AssetKey(["exports", dataset.name]),
        partitions_def=partitions_def,
        group_name="exports",
        kinds={"postgres", dataset.format.value},
        pool=SOURCE_POOL,
        description=f"Monthly {dataset.format.value} export of `{dataset.name}` "
        f"({source_desc}) per customer.",
        metadata={"format": dataset.format.value, "compression": dataset.compression.value},
    )
    def _export(
        context: dg.AssetExecutionContext,
        source: PostgresSourceResource,
        storage: ExportStorageResource,
    ) -> dg.MaterializeResult:
        key = context.partition_key
        if not isinstance(key, dg.MultiPartitionKey):
            raise dg.Failure(description=f"expected a customer|month partition key, got {key!r}")
        dims = key.keys_by_dimension
        try:
            result = export_partition(
                source.source_config(),
                storage.object_store(),
                dataset,
                dims[CUSTOMER_DIMENSION],
                Month.parse(dims[MONTH_DIMENSION]),
                EngineTuning(batch_size_hint_bytes=source.batch_size_hint_bytes),
            )
        except ExportError as exc:
            raise dg.Failure(description=str(exc)) from None
        context.log.info(
            f"exported {result.rows} rows ({result.stored.size_bytes} bytes) to "
            f"{result.stored.uri} in {result.duration_seconds:.2f}s"
        )
        return dg.MaterializeResult(metadata=materialization_metadata(result, dataset))

    return _export


def materialization_metadata(result: ExportResult, dataset: DatasetSpec) -> dict[str, Any]:
    """What the UI shows for a delivered file, and the contract options it was written with."""
    stored = result.stored
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(result.rows),
        "size_bytes": dg.MetadataValue.int(stored.size_bytes),
        "uri": (
            dg.MetadataValue.text(stored.uri)
            if stored.uri.startswith("s3://")
            else dg.MetadataValue.path(stored.uri)
        ),
        "sha256": dg.MetadataValue.text(stored.sha256),
        "format": dg.MetadataValue.text(result.format.value),
        "compression": dg.MetadataValue.text(result.compression.value),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(c.name, c.pg_type) for c in result.columns]
        ),
        "duration_seconds": dg.MetadataValue.float(round(result.duration_seconds, 3)),
        "rows_per_second": dg.MetadataValue.float(round(result.rows_per_second, 1)),
        "unrepresentable": dg.MetadataValue.text(dataset.unrepresentable.value),
    }
    if dataset.format is Format.CSV:
        metadata["csv_formula_guard"] = dg.MetadataValue.bool(dataset.csv_formula_guard)
    if result.link is not None:
        metadata["download_url"] = dg.MetadataValue.url(result.link.url)
        metadata["download_url_expires_at"] = dg.MetadataValue.timestamp(result.link.expires_at)
    return metadata
