"""Where export files live, as a Dagster resource: a local folder or an S3 bucket.

The export IO manager depends on it (`ResourceDependency`); the checks, the manifest asset
and the CLI use it directly. `store()` is the engine's `ObjectStore` over it, made once per
resource instance (one boto3 client and session per run), as dagster-aws's S3 IO manager
makes its client once.
"""

from __future__ import annotations

from abc import abstractmethod

import dagster as dg
from pydantic import Field, PrivateAttr

from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.storage.keys import DEFAULT_PREFIX
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.parts import (
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PART_SIZE,
)
from export_pipeline.storage.s3 import MAX_LINK_TTL_SECONDS, S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectStore

EXPORT_STORAGE_KEY = "export_storage"


class ExportStorageResource(dg.ConfigurableResource):
    """The store export files are written to and read from; see the subclasses."""

    prefix: str = Field(
        default=DEFAULT_PREFIX,
        description="Key prefix: objects are <prefix>/<customer>/<YYYY-MM>/<dataset>.<ext> "
        "(EXPORT_S3_PREFIX).",
    )
    _store: ObjectStore | None = PrivateAttr(default=None)

    @abstractmethod
    def _make_store(self) -> ObjectStore: ...

    def store(self) -> ObjectStore:
        """The object store (and its client), made on first use."""
        if self._store is None:
            self._store = self._make_store()
        return self._store

    @property
    def record_links(self) -> bool:
        """Whether materializations record a presigned download link (S3 only)."""
        return False


class LocalExportStorageResource(ExportStorageResource):
    """Export files in a local folder (development, tests): written under a temporary name,
    fsynced and renamed into place."""

    base_dir: str = Field(description="Folder the files go to (EXPORT_STORAGE_DIR).")

    def _make_store(self) -> ObjectStore:
        return LocalObjectStore(self.base_dir, self.prefix)


class S3ExportStorageResource(ExportStorageResource):
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

    @property
    def record_links(self) -> bool:
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
            read_timeout_seconds=self.s3.read_timeout_seconds,
            max_attempts=self.s3.max_attempts,
            use_ssl=self.s3.use_ssl,
            verify=self.s3.verify,
        )
        # One session for the client and the store: a link's expiry is read from the
        # credentials that signed it. The pool serves the part uploads of an export and the
        # commits and checks that overlap it.
        session = self.s3.session()
        client = self.s3.client(min_pool_connections=4 * self.max_concurrency, session=session)
        return S3ObjectStore(config, client=client, session=session)
