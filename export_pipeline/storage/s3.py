"""S3 (or any S3-protocol endpoint) as object storage, written with a multipart upload.

Bytes are cut into parts and uploaded by a small thread pool while the caller keeps
producing, so reading the database never waits on one HTTP request. Parts start at
`part_size` and double every 1,000 parts, so S3's 10,000-part limit is never the reason an
export fails (16 MiB parts reach 16 GiB by part 1,000 and terabytes by part 10,000).
Memory: about `part_size * (max_concurrency + 2)` bytes (parts in flight, the one waiting for a
slot, and the buffer being filled). An export smaller than one part is sent as a single PUT.
The object exists only after `CompleteMultipartUpload` (or the PUT) succeeds; on any error the
multipart upload is aborted, leaving nothing under the key. A process killed outright cannot
abort: a bucket lifecycle rule `AbortIncompleteMultipartUpload` cleans those up (README).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
import pyarrow.fs as pafs
from botocore.config import Config
from botocore.exceptions import ClientError

from export_pipeline.storage.keys import StorageConfigError, normalize_prefix
from export_pipeline.storage.writer import DownloadLink, ObjectHeaders, ObjectStore, ObjectWriter

logger = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
PARTS_PER_SIZE_STEP = 1000  # part size doubles after this many parts
MAX_LINK_TTL_SECONDS = 604800  # SigV4 presigned URLs cannot live longer than 7 days.


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = "exports"
    endpoint_url: str | None = None
    region_name: str | None = None
    link_ttl_seconds: int = MAX_LINK_TTL_SECONDS
    part_size: int = 16 * 1024 * 1024
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise StorageConfigError(f"EXPORT_S3_BUCKET {self.bucket!r} is not a bucket name")
        check_link_ttl(self.link_ttl_seconds)
        if self.part_size < MIN_PART_SIZE:
            raise StorageConfigError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if self.max_concurrency < 1:
            raise StorageConfigError("max_concurrency must be at least 1")


def check_link_ttl(ttl_seconds: int) -> int:
    if not 1 <= ttl_seconds <= MAX_LINK_TTL_SECONDS:
        raise StorageConfigError(
            f"EXPORT_LINK_TTL_SECONDS must be between 1 and {MAX_LINK_TTL_SECONDS} "
            f"(7 days, the SigV4 maximum), got {ttl_seconds}"
        )
    return ttl_seconds


def client_config(
    endpoint_url: str | None, max_pool_connections: int = 10, max_attempts: int = 5
) -> Config:
    """botocore settings for every S3 client of the project.

    SigV4 everywhere: without `signature_version="s3v4"` boto3 presigns with SigV2 for
    us-east-1 and custom endpoints. Custom endpoints (MinIO, moto, R2) get path-style
    addressing. Retries use botocore's `standard` mode (5xx, SlowDown, throttling).
    """
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # total_max_attempts counts the first try, as dagster-aws's `max_attempts` does
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=max_pool_connections,
    )


def make_s3_client(config: S3Config, session: boto3.session.Session | None = None) -> Any:
    """A boto3 S3 client for `config`, from `session` (default: boto3's credential chain)."""
    return (session or boto3.session.Session()).client(
        "s3",
        endpoint_url=config.endpoint_url or None,
        region_name=config.region_name or None,
        config=client_config(config.endpoint_url, max(10, config.max_concurrency * 2)),
    )


def part_size(base: int, parts_so_far: int) -> int:
    """The size of the next part: `base`, doubled every PARTS_PER_SIZE_STEP parts."""
    return base << (parts_so_far // PARTS_PER_SIZE_STEP)


class S3ObjectWriter(ObjectWriter):
    def __init__(self, client: Any, config: S3Config, key: str, headers: ObjectHeaders) -> None:
        super().__init__(key)
        self._client = client
        self._config = config
        self._headers = headers
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._failure: BaseException | None = None

    def _object_args(self) -> dict[str, Any]:
        return {
            "Bucket": self._config.bucket,
            "Key": self.key,
            "ContentType": self._headers.content_type,
            "ContentDisposition": self._headers.content_disposition,
        }

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        while len(self._buffer) >= (size := part_size(self._config.part_size, len(self._parts))):
            with memoryview(self._buffer) as view:
                part = bytes(view[:size])  # one copy, not two
            del self._buffer[:size]
            self._submit(part)

    def _submit(self, body: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._client.create_multipart_upload(**self._object_args())[
                "UploadId"
            ]
            self._pool = ThreadPoolExecutor(
                self._config.max_concurrency, thread_name_prefix="s3-part"
            )
        self._slots.acquire()  # back-pressure: at most max_concurrency parts in flight
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        number = len(self._parts) + 1
        assert self._pool is not None
        future = self._pool.submit(self._upload_part, number, body)
        future.add_done_callback(self._part_done)
        self._parts.append(future)

    def _part_done(self, future: Future[dict[str, Any]]) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()
        self._slots.release()

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        response = self._client.upload_part(
            Bucket=self._config.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _commit(self) -> str:
        if self._upload_id is None:
            self._client.put_object(Body=bytes(self._buffer), **self._object_args())
        else:
            if self._buffer:
                self._submit(bytes(self._buffer))
            parts = [future.result() for future in self._parts]
            self._client.complete_multipart_upload(
                Bucket=self._config.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
            self._shutdown()
        self._buffer = bytearray()
        return f"s3://{self._config.bucket}/{self.key}"

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        for future in self._parts:
            future.cancel()
        self._shutdown()
        try:
            self._client.abort_multipart_upload(
                Bucket=self._config.bucket, Key=self.key, UploadId=self._upload_id
            )
        except Exception as exc:  # the error being raised matters more; say this one too
            logger.warning(
                "could not abort multipart upload %s of s3://%s/%s (%s); a bucket lifecycle "
                "rule AbortIncompleteMultipartUpload removes it",
                self._upload_id,
                self._config.bucket,
                self.key,
                exc,
            )

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class S3ObjectStore(ObjectStore):
    """Objects in one bucket. The client is built on first use from `session` (credentials,
    profile) unless one is given."""

    def __init__(
        self,
        config: S3Config,
        client: Any | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        self.config = config
        self.prefix = normalize_prefix(config.prefix)
        self._client = client
        self._session = session or boto3.session.Session()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_s3_client(self.config, self._session)
        return self._client

    def open_writer(self, key: str, headers: ObjectHeaders) -> ObjectWriter:
        return S3ObjectWriter(self.client, self.config, key, headers)

    def uri(self, key: str) -> str:
        return f"s3://{self.config.bucket}/{key}"

    def remove_orphans(self, key: str) -> int:
        """Abort the open multipart uploads of exactly `key` (a killed run's parts)."""
        listing = self.client.list_multipart_uploads(Bucket=self.config.bucket, Prefix=key)
        removed = 0
        for upload in listing.get("Uploads", []):
            if upload["Key"] != key:
                continue
            self.client.abort_multipart_upload(
                Bucket=self.config.bucket, Key=key, UploadId=upload["UploadId"]
            )
            removed += 1
        if removed:
            logger.warning("aborted %s orphaned multipart upload(s) of %s", removed, self.uri(key))
        return removed

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(head["ContentLength"])

    def remove(self, key: str) -> None:
        """DELETE is idempotent in S3: a missing key answers 204 too."""
        try:
            self.client.delete_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "AccessDenied":
                raise
            raise StorageConfigError(
                f"cannot delete {self.uri(key)}: access denied; the exporter needs "
                "s3:DeleteObject on its prefix to withdraw a delivery's manifest before "
                "re-exporting (docs/manifest.md)"
            ) from exc

    def open_reader(self, key: str) -> BinaryIO:
        body = self.client.get_object(Bucket=self.config.bucket, Key=key)["Body"]
        return cast(BinaryIO, body)

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """pyarrow's own S3 client, with this store's credentials, region and endpoint.

        Reads ranges on demand (a Parquet footer, then the row groups asked for): nothing is
        downloaded first.
        """
        creds = self._session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
        kwargs: dict[str, Any] = {
            "region": self.config.region_name or self._session.region_name or "us-east-1"
        }
        if frozen is not None:
            kwargs.update(
                access_key=frozen.access_key,
                secret_key=frozen.secret_key,
                session_token=frozen.token,
            )
        if self.config.endpoint_url:
            parsed = urlsplit(self.config.endpoint_url)
            kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
        return pafs.S3FileSystem(**kwargs), self.config.bucket

    def download_link(self, key: str, ttl_seconds: int | None = None) -> DownloadLink:
        """A presigned GET (SigV4) valid for `ttl_seconds` (default: the configured TTL).

        Never presigns PUT.
        """
        ttl = check_link_ttl(self.config.link_ttl_seconds if ttl_seconds is None else ttl_seconds)
        issued = datetime.now(UTC)
        url = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.config.bucket, "Key": key},
            ExpiresIn=ttl,
            HttpMethod="GET",
        )
        return DownloadLink(url, issued + timedelta(seconds=ttl))
