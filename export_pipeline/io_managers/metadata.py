"""What a materialization records about a delivered file, and how to read it back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from export_pipeline.engine import ExportResult


def materialization_metadata(
    result: ExportResult, extra: Mapping[str, str | bool]
) -> dict[str, Any]:
    """The metadata of a delivered file: what the UI shows, dashboards read and `load_input`
    turns back into a handle. `extra` holds the content's own facts (type-contract options)."""
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
    }
    for name, value in extra.items():
        metadata[name] = (
            dg.MetadataValue.bool(value)
            if isinstance(value, bool)
            else dg.MetadataValue.text(value)
        )
    if result.snapshot_at is not None:
        metadata["snapshot_at"] = dg.MetadataValue.timestamp(result.snapshot_at)
    if result.link is not None:
        metadata["download_url"] = dg.MetadataValue.url(result.link.url)
        metadata["download_url_expires_at"] = dg.MetadataValue.timestamp(result.link.expires_at)
    return metadata


def plain_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Recorded metadata as plain Python values (MetadataValue.value where wrapped)."""
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def latest_metadata(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str
) -> dict[str, Any] | None:
    """The plain metadata of the partition's latest materialization, or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    event = records[0].asset_materialization if records else None
    return None if event is None else plain_values(event.metadata)
