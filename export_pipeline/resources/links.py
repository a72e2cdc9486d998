"""Fresh download links, signed on demand from what a materialization recorded.

With `record_download_links=False` (EXPORT_RECORD_DOWNLOAD_LINKS=false) no link is stored in
the event log; whoever may download asks for one here (the `export-pipeline link` command, an
op, a notebook), with the configured export storage and its credentials.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dagster as dg

from export_pipeline.io_managers.metadata import latest_metadata, recorded_file
from export_pipeline.partitions import split_partition_key
from export_pipeline.resources.storage import EXPORT_STORAGE_KEY, ExportStorageResource
from export_pipeline.storage.files import StoredFile, StoredFileError
from export_pipeline.storage.writer import DownloadLink


def delivered_file(
    storage: ExportStorageResource,
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    partition: str,
) -> StoredFile:
    """The partition's latest file, checked to still be there at its recorded size (the
    handle `load_input` gives)."""
    recorded = latest_metadata(instance, asset_key, partition)
    if recorded is None:
        raise StoredFileError(
            f"{asset_key.to_user_string()} {partition} has not been materialized yet: no file "
            "to link to"
        )
    customer, month = split_partition_key(partition)
    return recorded_file(storage.store(), asset_key.path[-1], customer, month, recorded)


def sign_download_link(
    storage: ExportStorageResource,
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    partition: str,
    ttl_seconds: int | None = None,
) -> DownloadLink:
    """A new presigned GET link to the partition's latest file (S3 only). TTL default: the
    configured one."""
    return delivered_file(storage, instance, asset_key, partition).presign(ttl_seconds)


@contextmanager
def configured_storage(resources: Mapping[str, object]) -> Iterator[ExportStorageResource]:
    """The export storage of `resources` (e.g. `settings.build_resources()`), with its
    `dg.EnvVar`s resolved, as a run would see it."""
    with dg.build_resources({EXPORT_STORAGE_KEY: resources[EXPORT_STORAGE_KEY]}) as built:
        storage = getattr(built, EXPORT_STORAGE_KEY)
        if not isinstance(storage, ExportStorageResource):
            raise TypeError(f"{EXPORT_STORAGE_KEY} is {type(storage).__name__}")
        yield storage
