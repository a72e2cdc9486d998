"""Where export files go, as a Dagster resource: S3 when a bucket is set, else a local folder."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MAX_LINK_TTL_SECONDS, S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectStore

DEFAULT_LOCAL_DIR = ".local/storage"


class ExportStorageResource(dg.ConfigurableResource):
    """Object storage for export files. AWS credentials come from the standard AWS_* variables
    (or an instance role); they are never part of this resource's config."""

    bucket: str | None = Field(
        default=None, description="S3 bucket (EXPORT_S3_BUCKET). Unset: use local_dir."
    )
    prefix: str = Field(default="exports", description="Key prefix (EXPORT_S3_PREFIX).")
    endpoint_url: str | None = Field(
        default=None,
        description="S3-protocol endpoint for MinIO, R2 or a local server "
        "(EXPORT_S3_ENDPOINT_URL); unset for AWS.",
    )
    region_name: str | None = Field(
        default=None, description="AWS region (AWS_REGION, else AWS_DEFAULT_REGION)."
    )
    local_dir: str = Field(
        default=DEFAULT_LOCAL_DIR,
        description="Folder used when no bucket is set (EXPORT_STORAGE_DIR; from the "
        "environment, the default is .local/storage at the repository root).",
    )
    link_ttl_seconds: int = Field(
        default=MAX_LINK_TTL_SECONDS,
        description="Lifetime of presigned download links, at most 604800 (7 days) "
        "(EXPORT_LINK_TTL_SECONDS).",
    )
    part_size_bytes: int = Field(
        default=16 * 1024 * 1024,
        description="Multipart upload part size (at least 5 MiB).",
    )
    max_concurrency: int = Field(
        default=4,
        description="Parts uploaded at once. Buffer memory is about part_size_bytes x "
        "(this + 2).",
    )

    def object_store(self) -> ObjectStore:
        if not self.bucket:
            return LocalObjectStore(self.local_dir, self.prefix)
        return S3ObjectStore(
            S3Config(
                bucket=self.bucket,
                prefix=self.prefix,
                endpoint_url=self.endpoint_url,
                region_name=self.region_name,
                link_ttl_seconds=self.link_ttl_seconds,
                part_size=self.part_size_bytes,
                max_concurrency=self.max_concurrency,
            )
        )
