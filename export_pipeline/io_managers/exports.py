"""The export IO managers: a file stream in, an object in storage out; a handle back.

Shaped like dagster-aws's S3 IO manager: a plain worker (`ExportFiles`, no Dagster) does the
work, and thin `ConfigurableIOManager`s translate Dagster's context into its calls.

- `handle_output` takes the asset's `FileContent` (an `ExportStream` has read nothing yet),
  builds the object key from the asset key and the customer|month partition, streams it into
  the store's atomic writer (memory stays flat; nothing is published unless complete) and
  records the materialization metadata. Source connections live only inside the write, so
  none is open before it starts or after it ends, whatever fails.
- `load_input` gives downstream assets a `StoredFile` handle (uri, size, sha256, rows,
  format, `open()`, `dataset()`, `presign()`), never the data.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from export_pipeline.engine import ExportResult, ExportStream, FileContent, export_key, publish
from export_pipeline.errors import ExportError
from export_pipeline.formats.naming import extension
from export_pipeline.io_managers.failures import export_failure
from export_pipeline.io_managers.metadata import latest_metadata, materialization_metadata
from export_pipeline.io_managers.progress import event_log_reporter, previous_month_estimate
from export_pipeline.manifest import ManifestDelivery, ManifestEntry, write_manifest
from export_pipeline.partitions import Month, split_partition_key
from export_pipeline.progress import DEFAULT_EVERY_ROWS, DEFAULT_INTERVAL_SECONDS, ProgressReporting
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.files import StoredFile, StoredFileError
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.parts import (
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PART_SIZE,
)
from export_pipeline.storage.s3 import MAX_LINK_TTL_SECONDS, S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectStore

EXPORTS_IO_MANAGER_KEY = "exports_io_manager"


class ExportFiles:
    """Export files in one store, by dataset and customer-month. No Dagster here."""

    def __init__(self, store: ObjectStore, record_links: bool = True) -> None:
        self.store = store
        self.record_links = record_links

    def write(
        self, content: FileContent, dataset: str, customer: str, month: Month
    ) -> ExportResult:
        """Publish `content`; the result carries a download link only if links are recorded."""
        return publish(content, self.store, dataset, customer, month, self.record_links)

    def handle(
        self, dataset: str, customer: str, month: Month, recorded: Mapping[str, Any]
    ) -> StoredFile:
        """The file a materialization recorded, checked to still be there at that size."""
        fmt = Format(recorded["format"])
        compression = Compression(recorded["compression"])
        key = export_key(self.store, dataset, customer, month, extension(fmt, compression))
        uri = self.store.uri(key)
        if recorded["uri"] != uri:
            raise StoredFileError(
                f"{dataset} {customer} {month}: recorded at {recorded['uri']}, but the "
                f"configured storage holds it at {uri}; was the bucket or prefix changed?"
            )
        size = self.store.size(key)
        if size is None or size != recorded["size_bytes"]:
            found = "missing" if size is None else f"{size} bytes"
            raise StoredFileError(
                f"{uri}: recorded {recorded['size_bytes']} bytes, found {found}; "
                "re-materialize the partition"
            )
        schema = recorded.get("dagster/column_schema")
        return StoredFile(
            store=self.store,
            key=key,
            uri=uri,
            size_bytes=size,
            sha256=recorded["sha256"],
            row_count=recorded["dagster/row_count"],
            format=fmt,
            compression=compression,
            columns=tuple((c.name, c.type) for c in getattr(schema, "columns", ())),
            snapshot_at=_instant(recorded.get("snapshot_at")),
            link_expires_at=_instant(recorded.get("download_url_expires_at")),
        )

    def write_manifest(
        self, customer: str, month: Month, entries: Sequence[ManifestEntry]
    ) -> ManifestDelivery:
        """The customer-month's manifest.json, then _SUCCESS (see `export_pipeline.manifest`)."""
        return write_manifest(self.store, customer, month, entries)


def _instant(recorded: float | None) -> datetime | None:
    """A timestamp as recorded metadata holds it (seconds since the epoch), as a datetime."""
    return None if recorded is None else datetime.fromtimestamp(recorded, UTC)


class ExportIOManager(dg.ConfigurableIOManager):
    """The export IO manager's behaviour; `LocalExportIOManager` and `S3ExportIOManager` say
    where the files go. Ops that write export files take it as `ResourceParam[ExportIOManager]`
    and call `files()`."""

    prefix: str = Field(
        default="exports",
        description="Key prefix: objects are <prefix>/<customer>/<YYYY-MM>/<dataset>.<ext> "
        "(EXPORT_S3_PREFIX).",
    )
    progress_interval_seconds: float = Field(
        default=DEFAULT_INTERVAL_SECONDS,
        ge=0,
        description="A running export reports progress to the event log at most this often "
        "(and only after `progress_every_rows` more rows); see docs/progress.md.",
    )
    progress_every_rows: int = Field(
        default=DEFAULT_EVERY_ROWS,
        ge=0,
        description="Rows between progress reports, at least (the later of the two wins).",
    )
    _store: ObjectStore | None = PrivateAttr(default=None)

    @abstractmethod
    def _make_store(self) -> ObjectStore: ...

    def _record_links(self) -> bool:
        return False

    def files(self) -> ExportFiles:
        """The worker over this manager's store (the store and its client are made once)."""
        if self._store is None:
            self._store = self._make_store()
        return ExportFiles(self._store, self._record_links())

    def handle_output(self, context: dg.OutputContext, obj: FileContent) -> None:
        if not callable(getattr(obj, "write_to", None)):
            raise dg.Failure(
                description=f"{context.asset_key.to_user_string()} returned "
                f"{type(obj).__name__}; the export IO manager stores file streams "
                "(export_pipeline.engine.FileContent) only"
            )
        dataset = context.asset_key.path[-1]
        what = f"{context.asset_key.to_user_string()} {context.asset_partition_key}"
        try:
            customer, month = split_partition_key(context.asset_partition_key)
            obj = self._with_progress(context, obj, customer, month)
            result = self.files().write(obj, dataset, customer, month)
        except Exception as exc:
            raise export_failure(what, exc) from exc
        context.log.info(
            f"exported {result.rows} rows ({result.stored.size_bytes} bytes) to "
            f"{result.stored.uri} in {result.duration_seconds:.2f}s"
        )
        context.add_output_metadata(materialization_metadata(result, obj.facts()))

    def progress(
        self,
        log: dg.DagsterLogManager,
        instance: dg.DagsterInstance,
        run: dg.DagsterRun,
        step_key: str | None,
        dataset: str,
        partition: str,
        previous: tuple[str, Month] | None = None,
    ) -> ProgressReporting:
        """Live progress into the run's event log. With `previous` (customer, month), the
        estimate is that customer's row count of the month before, where one is recorded;
        otherwise the engine asks the planner."""
        estimate = None
        if previous is not None:
            asset_key = dg.AssetKey(["exports", dataset])
            estimate = previous_month_estimate(instance, asset_key, *previous)
        return ProgressReporting(
            event_log_reporter(log, instance, run, step_key, dataset, partition),
            self.progress_interval_seconds,
            self.progress_every_rows,
            estimate,
        )

    def _with_progress(
        self, context: dg.OutputContext, obj: FileContent, customer: str, month: Month
    ) -> FileContent:
        if not isinstance(obj, ExportStream) or obj.progress is not None:
            return obj
        try:
            step = context.step_context
        except dg.DagsterInvariantViolationError:  # a context built outside a run
            return obj
        try:
            reporting = self.progress(
                context.log,
                step.instance,
                step.dagster_run,
                context.step_key,
                context.asset_key.path[-1],
                context.asset_partition_key,
                previous=(customer, month),
            )
        except Exception as exc:  # progress is best effort; the export is not
            context.log.warning(f"no progress reports for this export: {exc}")
            return obj
        return replace(obj, progress=reporting)

    def load_input(self, context: dg.InputContext) -> StoredFile:
        asset_key = context.asset_key
        partition = context.asset_partition_key
        recorded = latest_metadata(context.instance, asset_key, partition)
        if recorded is None:
            raise dg.Failure(
                description=f"{asset_key.to_user_string()} {partition} has not been "
                "materialized yet: nothing to load"
            )
        try:
            customer, month = split_partition_key(partition)
            return self.files().handle(asset_key.path[-1], customer, month, recorded)
        except ExportError as exc:
            what = f"loading {asset_key.to_user_string()} {partition}"
            raise export_failure(what, exc) from exc


class LocalExportIOManager(ExportIOManager):
    """Export files in a local folder (development, tests): written under a temporary name,
    fsynced and renamed into place."""

    base_dir: str = Field(description="Folder the files go to (EXPORT_STORAGE_DIR).")

    def _make_store(self) -> ObjectStore:
        return LocalObjectStore(self.base_dir, self.prefix)


class S3ExportIOManager(ExportIOManager):
    """Export files in S3 or any S3-protocol server, written with multipart uploads.

    Buffer memory per running export: at most max_buffer_bytes, at any object size up to
    S3's 5 TiB (parts grow and fewer upload at once as the object grows; docs/operations.md,
    "Upload memory").
    """

    s3: ExportS3Resource = Field(
        description="Credentials, region, endpoint and client settings (dagster-aws)."
    )
    bucket: str = Field(description="Bucket for the files (EXPORT_S3_BUCKET).")
    link_ttl_seconds: int = Field(
        default=MAX_LINK_TTL_SECONDS,
        description="Lifetime of the presigned download link recorded with each file, "
        "at most 604800 (7 days) (EXPORT_LINK_TTL_SECONDS).",
    )
    record_download_links: bool = Field(
        default=True,
        description="Record a presigned download link (a bearer credential) in each "
        "materialization's metadata. False keeps links out of metadata and the event log; "
        "uri and key are still recorded and a fresh link is signed on demand "
        "(EXPORT_RECORD_DOWNLOAD_LINKS; SECURITY.md).",
    )
    part_size_bytes: int = Field(
        default=DEFAULT_PART_SIZE,
        description="Size of the first multipart parts (at least 5 MiB); later parts grow.",
    )
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY,
        description="Parts uploaded at once, at most (fewer once parts are large).",
    )
    max_buffer_bytes: int = Field(
        default=DEFAULT_MAX_BUFFER_BYTES,
        description="Upload memory limit per export: the part being filled plus the parts "
        "uploading never exceed it, at any object size up to 5 TiB; a limit too small to reach "
        "5 TiB is refused with the minimum (EXPORT_S3_MAX_BUFFER_BYTES).",
    )

    def _record_links(self) -> bool:
        return self.record_download_links

    def _make_store(self) -> ObjectStore:
        config = S3Config(
            bucket=self.bucket,
            prefix=self.prefix,
            endpoint_url=self.s3.endpoint_url,
            region_name=self.s3.region_name,
            link_ttl_seconds=self.link_ttl_seconds,
            part_size=self.part_size_bytes,
            max_concurrency=self.max_concurrency,
            max_buffer_bytes=self.max_buffer_bytes,
        )
        # One session for the client and the store: a link's expiry is read from the
        # credentials that signed it.
        session = self.s3.session()
        client = self.s3.client(min_pool_connections=2 * self.max_concurrency, session=session)
        return S3ObjectStore(config, client=client, session=session)
