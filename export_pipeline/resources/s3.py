"""S3 credentials and client settings: dagster-aws's `S3Resource`, with the client we need."""

from __future__ import annotations

from typing import Any

import boto3
from dagster_aws.s3 import S3Resource
from pydantic import Field

from export_pipeline.storage.keys import StorageConfigError
from export_pipeline.storage.s3 import make_s3_client


class ExportS3Resource(S3Resource):
    """dagster-aws's `S3Resource` (credentials, profile, region, endpoint, SSL, attempts).

    Subclassed because `S3Resource.get_client()` cannot set what export files need: SigV4
    signing for presigned links (boto3 otherwise signs links with SigV2 on us-east-1 and custom
    endpoints), path-style addressing for MinIO and local servers, a connection pool as large
    as the parallel part uploads, and botocore's `standard` retry mode.
    """

    max_pool_connections: int = Field(
        default=10,
        description="HTTP connections kept per client (at least 2x the parts uploaded at once).",
    )
    read_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Seconds to wait for an answer before botocore retries the request.",
    )

    def session(self) -> boto3.session.Session:
        """A boto3 session from this resource's profile and explicit credentials, if any;
        otherwise boto3's default chain (environment, config files, instance or task role)."""
        return boto3.session.Session(
            profile_name=self.profile_name,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            region_name=self.region_name,
        )

    def get_client(self) -> Any:
        return self.client()

    def client(
        self, min_pool_connections: int = 0, session: boto3.session.Session | None = None
    ) -> Any:
        """The S3 client, with at least `min_pool_connections` pooled HTTP connections (an
        upload with N parts in flight needs N), from `session` (default: a new `session()`).
        Pass the session whose credentials' expiry download links are to report."""
        if self.use_unsigned_session:
            raise StorageConfigError(
                "use_unsigned_session cannot be used for exports: uploads and download links "
                "must be signed"
            )
        return make_s3_client(
            session or self.session(),
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            max_pool_connections=max(self.max_pool_connections, min_pool_connections),
            max_attempts=self.max_attempts,
            read_timeout_seconds=self.read_timeout_seconds,
            use_ssl=self.use_ssl,
            verify=self.verify,
        )
