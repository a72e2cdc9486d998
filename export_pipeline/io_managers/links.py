"""Fresh download links, signed on demand from what a materialization recorded.

With `record_download_links=False` (EXPORT_RECORD_DOWNLOAD_LINKS=false) no link is stored in
the event log; whoever may download asks for one here (the `export-pipeline link` command, an
op, a notebook), with the IO manager's configured store and credentials.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dagster as dg

from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, ExportIOManager
from export_pipeline.io_managers.metadata import latest_metadata
from export_pipeline.partitions import split_partition_key
from export_pipeline.storage.files import StoredFileError
from export_pipeline.storage.writer import DownloadLink


def sign_download_link(
    io_manager: ExportIOManager,
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    partition: str,
    ttl_seconds: int | None = None,
) -> DownloadLink:
    """A new presigned GET link to the partition's latest file, checked to still be there at
    its recorded size (the handle `load_input` gives). TTL default: the configured one."""
    recorded = latest_metadata(instance, asset_key, partition)
    if recorded is None:
        raise StoredFileError(
            f"{asset_key.to_user_string()} {partition} has not been materialized yet: no file "
            "to link to"
        )
    customer, month = split_partition_key(partition)
    handle = io_manager.files().handle(asset_key.path[-1], customer, month, recorded)
    return handle.presign(ttl_seconds)


def sign_key_link(
    io_manager: ExportIOManager, key: str, ttl_seconds: int | None = None
) -> DownloadLink:
    """A new presigned GET link to the object `key` of the configured store (S3 only)."""
    store = io_manager.files().store
    link = store.download_link(key, ttl_seconds)
    if link is None:
        raise StoredFileError(f"{store.uri(key)}: local files have no download links (S3 only)")
    return link


@contextmanager
def configured_io_manager(resources: Mapping[str, object]) -> Iterator[ExportIOManager]:
    """The export IO manager of `resources` (e.g. `settings.build_resources()`), with its
    `dg.EnvVar`s resolved, as a run would see it."""
    with dg.build_resources({EXPORTS_IO_MANAGER_KEY: resources[EXPORTS_IO_MANAGER_KEY]}) as built:
        manager = getattr(built, EXPORTS_IO_MANAGER_KEY)
        if not isinstance(manager, ExportIOManager):
            raise TypeError(f"{EXPORTS_IO_MANAGER_KEY} is {type(manager).__name__}")
        yield manager
