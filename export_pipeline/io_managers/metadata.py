"""What a materialization records about a delivered file, and how to read it back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from export_pipeline.engine import ExportResult, export_key
from export_pipeline.formats.naming import extension
from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.files import StoredFile, StoredFileError
from export_pipeline.storage.writer import ObjectStore

EXPORTS_KEY_PREFIX = "exports"  # export assets are exports/<dataset>
ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"


def export_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey([EXPORTS_KEY_PREFIX, dataset])


def dataset_of(asset_key: dg.AssetKey) -> str | None:
    """The dataset of an `exports/<dataset>` asset key, else None."""
    path = asset_key.path
    return path[1] if len(path) == 2 and path[0] == EXPORTS_KEY_PREFIX else None


def materialization_metadata(
    result: ExportResult, extra: Mapping[str, str | bool]
) -> dict[str, Any]:
    """The metadata of a delivered file: what the UI shows, dashboards read and `load_input`
    turns back into a handle. `extra` holds the content's own facts (type-contract options)."""
    stored = result.stored
    metadata: dict[str, Any] = {
        ROW_COUNT: dg.MetadataValue.int(result.rows),
        "size_bytes": dg.MetadataValue.int(stored.size_bytes),
        "uri": uri_value(stored.uri),
        "sha256": dg.MetadataValue.text(stored.sha256),
        "format": dg.MetadataValue.text(result.format.value),
        "compression": dg.MetadataValue.text(result.compression.value),
        COLUMN_SCHEMA: dg.TableSchema(
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


def uri_value(uri: str) -> dg.MetadataValue:
    """An object's URI as metadata: text for `s3://`, a path for a local file."""
    return dg.MetadataValue.text(uri) if uri.startswith("s3://") else dg.MetadataValue.path(uri)


def plain_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Recorded metadata as plain Python values (MetadataValue.value where wrapped)."""
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


@dataclass(frozen=True)
class Recorded:
    """A partition's latest materialization: its plain metadata (and as recorded), and the run
    that made it."""

    metadata: dict[str, Any]
    run_id: str
    storage_id: int
    recorded: Mapping[str, Any]  # the metadata values as Dagster stores them


def latest_records(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: Sequence[str]
) -> dict[str, Recorded]:
    """The latest materialization of each of `partitions` that has one, in a few queries
    however many partitions (pages of materializations, newest first)."""
    wanted = set(partitions)
    found: dict[str, Recorded] = {}
    if not wanted:
        return found
    page = max(100, 2 * len(wanted))
    cursor: str | None = None
    while len(found) < len(wanted):
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=sorted(wanted)),
            limit=page,
            cursor=cursor,
        )
        for record in result.records:
            event = record.asset_materialization
            partition = record.partition_key
            if event is None or partition is None or partition in found:
                continue
            found[partition] = Recorded(
                plain_values(event.metadata), record.run_id, record.storage_id, event.metadata
            )
        if not result.has_more:
            break
        cursor = result.cursor
    return found


def latest_metadata(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str
) -> dict[str, Any] | None:
    """The plain metadata of the partition's latest materialization, or None."""
    recorded = latest_records(instance, asset_key, [partition]).get(partition)
    return None if recorded is None else recorded.metadata


def recorded_file(
    store: ObjectStore,
    dataset: str,
    customer: str,
    month: Month,
    recorded: Mapping[str, Any],
    verify: bool = True,
) -> StoredFile:
    """The file a materialization recorded, as a handle. With `verify`, checked to still be in
    `store` at the recorded size (a HEAD or a stat); raises `ExportError` if it is not, or if
    the recorded metadata is incomplete."""
    try:
        fmt = Format(recorded["format"])
        compression = Compression(recorded["compression"])
        size_bytes = int(recorded["size_bytes"])
        sha256 = str(recorded["sha256"])
        rows = int(recorded[ROW_COUNT])
        recorded_uri = str(recorded["uri"])
    except (KeyError, ValueError, TypeError) as exc:
        raise StoredFileError(
            f"{dataset} {customer} {month}: the materialization lacks {exc}; re-materialize"
        ) from exc
    key = export_key(store, dataset, customer, month, extension(fmt, compression))
    uri = store.uri(key)
    if recorded_uri != uri:
        raise StoredFileError(
            f"{dataset} {customer} {month}: recorded at {recorded_uri}, but the "
            f"configured storage holds it at {uri}; was the bucket or prefix changed?"
        )
    if verify:
        size = store.size(key)
        if size is None or size != size_bytes:
            found = "missing" if size is None else f"{size} bytes"
            raise StoredFileError(
                f"{uri}: recorded {size_bytes} bytes, found {found}; re-materialize the partition"
            )
    schema = recorded.get(COLUMN_SCHEMA)
    return StoredFile(
        store=store,
        key=key,
        uri=uri,
        size_bytes=size_bytes,
        sha256=sha256,
        row_count=rows,
        format=fmt,
        compression=compression,
        columns=tuple((c.name, c.type) for c in getattr(schema, "columns", ())),
        snapshot_at=timestamp_datetime(recorded.get("snapshot_at")),
        link_expires_at=timestamp_datetime(recorded.get("download_url_expires_at")),
    )


def recorded_columns(recorded: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    schema = recorded.get(COLUMN_SCHEMA)
    if not isinstance(schema, dg.TableSchema):
        return None
    return [(column.name, column.type) for column in schema.columns]


def timestamp_datetime(recorded: float | None) -> datetime | None:
    """A recorded timestamp (seconds since the epoch, as metadata holds it) as a datetime."""
    return None if recorded is None else datetime.fromtimestamp(recorded, UTC)
