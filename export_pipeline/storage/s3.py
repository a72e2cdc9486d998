"""S3 (or any S3-protocol endpoint) as object storage, written with a multipart upload.

Bytes are cut into parts and uploaded by a small thread pool while the caller keeps
producing, so reading the database never waits on one HTTP request. Part sizes follow
`storage.parts.PartSchedule`: they start at `part_size`, double every `parts_per_step` parts
and stop at half of `max_buffer_bytes`, so S3's 10,000-part limit is never the reason an export
fails, and the data the writer holds (the part being filled plus the parts uploading) never
exceeds `max_buffer_bytes`, whatever the object's size (docs/operations.md, "Upload memory").
An export smaller than one part is sent as a single PUT.
The object exists only after `CompleteMultipartUpload` (or the PUT) succeeds; on any error the
multipart upload is aborted, leaving nothing under the key. A process killed outright cannot
abort: the next write of the same key aborts what it left (`remove_orphans`), and a bucket
lifecycle rule `AbortIncompleteMultipartUpload` cleans up keys never written again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
import pyarrow.fs as pafs
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from export_pipeline.errors import ExportError
from export_pipeline.retryable import TRANSIENT_S3_CODES, is_transient
from export_pipeline.storage.keys import DEFAULT_PREFIX, StorageConfigError, normalize_prefix
from export_pipeline.storage.parts import (
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PART_SIZE,
    DEFAULT_PARTS_PER_STEP,
    MAX_OBJECT_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    PartSchedule,
)
from export_pipeline.storage.writer import DownloadLink, ObjectHeaders, ObjectStore, ObjectWriter

logger = logging.getLogger(__name__)

__all__ = ["MIN_PART_SIZE", "S3Config", "S3ObjectStore", "S3ObjectWriter", "S3UploadError"]

MAX_LINK_TTL_SECONDS = 604800  # SigV4 presigned URLs cannot live longer than 7 days.
# An abort waits at most this long for part uploads already on the wire (queued ones are
# cancelled), then aborts the upload anyway: a cancelled run ends within seconds even when S3
# is slow. A part that lands after the abort is refused (NoSuchUpload) or, rarely, left for the
# next run's remove_orphans and the bucket's AbortIncompleteMultipartUpload rule.
ABORT_WAIT_SECONDS = 5.0
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys a request


@dataclass(frozen=True)
class S3Config:
    bucket: str
    prefix: str = DEFAULT_PREFIX
    endpoint_url: str | None = None
    region_name: str | None = None
    link_ttl_seconds: int = MAX_LINK_TTL_SECONDS
    part_size: int = DEFAULT_PART_SIZE  # the first parts; later ones grow (PartSchedule)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES  # upload memory limit, any object size
    parts_per_step: int = DEFAULT_PARTS_PER_STEP
    max_object_bytes: int = MAX_OBJECT_SIZE  # what the memory limit must reach (S3's 5 TiB)
    read_timeout_seconds: float = 60.0  # botocore's default
    max_attempts: int = 5  # botocore attempts per request, the first one included
    use_ssl: bool = True
    verify: bool | str | None = None  # botocore's: None checks certificates, a path a CA bundle
    abort_wait_seconds: float = ABORT_WAIT_SECONDS  # see ABORT_WAIT_SECONDS

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise StorageConfigError(f"EXPORT_S3_BUCKET {self.bucket!r} is not a bucket name")
        check_link_ttl(self.link_ttl_seconds)
        self.schedule.check()

    def client(self, session: boto3.session.Session | None = None) -> Any:
        """An S3 client with these settings and a connection pool for the part uploads."""
        return make_s3_client(
            session,
            endpoint_url=self.endpoint_url,
            region_name=self.region_name,
            max_pool_connections=max(10, self.max_concurrency * 2),
            max_attempts=self.max_attempts,
            read_timeout_seconds=self.read_timeout_seconds,
            use_ssl=self.use_ssl,
            verify=self.verify,
        )

    @property
    def schedule(self) -> PartSchedule:
        return PartSchedule(
            self.part_size,
            self.parts_per_step,
            self.max_buffer_bytes,
            self.max_concurrency,
            self.max_object_bytes,
        )


def check_link_ttl(ttl_seconds: int) -> int:
    if not 1 <= ttl_seconds <= MAX_LINK_TTL_SECONDS:
        raise StorageConfigError(
            f"EXPORT_LINK_TTL_SECONDS must be between 1 and {MAX_LINK_TTL_SECONDS} "
            f"(7 days, the SigV4 maximum), got {ttl_seconds}"
        )
    return ttl_seconds


def make_s3_client(
    session: boto3.session.Session | None = None,
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    max_pool_connections: int = 10,
    max_attempts: int = 5,
    read_timeout_seconds: float = 60.0,
    use_ssl: bool = True,
    verify: bool | str | None = None,
) -> Any:
    """The project's one S3 client factory (ExportS3Resource and S3Config use it).

    SigV4 everywhere: without `signature_version="s3v4"` boto3 presigns with SigV2 for
    us-east-1 and custom endpoints. Custom endpoints (MinIO, moto, R2) get path-style
    addressing. Retries use botocore's `standard` mode (5xx, SlowDown, throttling);
    `max_attempts` counts the first try, as dagster-aws's `max_attempts` does. `session`
    (default: boto3's credential chain) also decides whose credentials' expiry download links
    report.
    """
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        read_timeout=read_timeout_seconds,
    )
    return (session or boto3.session.Session()).client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region_name or None,
        use_ssl=use_ssl,
        verify=verify,
        config=config,
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3UploadError(ExportError):
    """An S3 request failed after botocore's retries (an upload's, a delete, a look at an
    object); names the object and says whether it is transient."""


class S3ObjectWriter(ObjectWriter):
    def __init__(self, client: Any, config: S3Config, key: str, headers: ObjectHeaders) -> None:
        super().__init__(key)
        self._client = client
        self._config = config
        self._headers = headers
        self._schedule = config.schedule
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._create_unanswered = False  # CreateMultipartUpload sent, its answer not taken
        self._parts: list[Future[dict[str, Any]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._uploads = threading.Condition()  # guards the in-flight counts and _failure
        self._in_flight_parts = 0
        self._in_flight_bytes = 0
        self._failure: BaseException | None = None
        self.peak_buffered_bytes = 0  # the most data held at once: filling part + uploading

    @property
    def buffered_only(self) -> bool:
        return self._upload_id is None

    def _held(self) -> None:
        held = len(self._buffer) + self._in_flight_bytes
        if held > self.peak_buffered_bytes:
            self.peak_buffered_bytes = held

    def _failed(self, action: str, exc: BaseException) -> S3UploadError:
        uri = f"s3://{self._config.bucket}/{self.key}"
        if isinstance(exc, ClientError) and _code(exc) == "NoSuchUpload":
            # Someone aborted our upload: another writer of the same key (its remove_orphans
            # took ours for a dead run's) or a lifecycle rule. Trying again can succeed.
            return S3UploadError(
                f"{uri}: {action} failed (transient): the multipart upload was aborted by "
                "another writer of the same key (a concurrent export of this partition) or a "
                f"bucket lifecycle rule: {exc}",
                transient=True,
            )
        transient = is_transient(exc)
        return S3UploadError(
            f"{uri}: {action} failed "
            f"({'transient' if transient else 'permanent'}): {type(exc).__name__}: {exc}",
            transient=transient,
        )

    def _object_args(self) -> dict[str, Any]:
        return {
            "Bucket": self._config.bucket,
            "Key": self.key,
            "ContentType": self._headers.content_type,
            "ContentDisposition": self._headers.content_disposition,
        }

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._fill(data)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("multipart upload", exc) from exc

    def _fill(self, data: bytes | bytearray | memoryview) -> None:
        """Append to the part being filled, never past its size (however large `data` is);
        hand each full part to the upload threads without copying it."""
        view = memoryview(data).cast("B")
        while len(view):
            size = self._schedule.part_size(len(self._parts))
            room = size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            self._held()
            if len(self._buffer) >= size:
                part, self._buffer = self._buffer, bytearray()
                self._submit(part, self._schedule.part_size(len(self._parts) + 1))
                del part  # the upload thread owns it now; its bytes are counted in flight

    def _submit(self, body: bytearray, next_size: int) -> None:
        """Upload `body` as the next part once it fits: at most max_concurrency parts in
        flight, and the parts in flight plus this one plus the next part to fill (`next_size`)
        within max_buffer_bytes. Blocks the producer until then (back-pressure)."""
        if self._upload_id is None:
            self._create_unanswered = True
            self._upload_id = self._client.create_multipart_upload(**self._object_args())[
                "UploadId"
            ]
            self._create_unanswered = False
            self._pool = ThreadPoolExecutor(
                self._config.max_concurrency, thread_name_prefix="s3-part"
            )
        if len(self._parts) >= MAX_PARTS:
            raise S3UploadError(
                f"s3://{self._config.bucket}/{self.key}: the object is larger than 10,000 parts "
                f"of this schedule hold ({self._schedule.reach()} bytes); raise max_buffer_bytes "
                "or max_object_bytes (permanent)"
            )
        limit = self._config.max_buffer_bytes
        with self._uploads:
            while self._failure is None and (
                self._in_flight_parts >= self._config.max_concurrency
                or self._in_flight_bytes + len(body) + next_size > limit
            ):
                # in short waits, so an interrupt (a cancelled run) is taken at once even
                # while a hung part upload holds the slot
                self._uploads.wait(timeout=0.1)
            if self._failure is not None:
                raise self._failure
            self._in_flight_parts += 1
            self._in_flight_bytes += len(body)
        self._held()
        number = len(self._parts) + 1
        assert self._pool is not None
        future = self._pool.submit(self._upload_part, number, body)
        future.add_done_callback(partial(self._part_done, len(body)))
        self._parts.append(future)

    def _part_done(self, size: int, future: Future[dict[str, Any]]) -> None:
        with self._uploads:
            if not future.cancelled() and future.exception() is not None:
                self._failure = self._failure or future.exception()
            self._in_flight_parts -= 1
            self._in_flight_bytes -= size
            self._uploads.notify_all()

    def _upload_part(self, number: int, body: bytearray) -> dict[str, Any]:
        response = self._client.upload_part(
            Bucket=self._config.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _commit(self) -> str:
        try:
            self._complete()
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("completing the upload", exc) from exc
        return f"s3://{self._config.bucket}/{self.key}"

    def _complete(self) -> None:
        if self._upload_id is None:
            self._client.put_object(Body=self._buffer, **self._object_args())
        else:
            if self._buffer:
                last, self._buffer = self._buffer, bytearray()
                self._submit(last, 0)
                del last
            parts = [future.result() for future in self._parts]
            # botocore turns a 200 answer whose body is an <Error> document into an error
            # (retried like a 500), so returning here means S3 really assembled the object.
            self._client.complete_multipart_upload(
                Bucket=self._config.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
            self._shutdown()
        self._buffer = bytearray()

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            if self._create_unanswered:
                self._abort_unanswered_create()
            return
        for future in self._parts:
            future.cancel()
        _, running = wait_for_futures(self._parts, timeout=self._config.abort_wait_seconds)
        if running:
            logger.warning(
                "aborting multipart upload %s of s3://%s/%s with %s part upload(s) still in "
                "flight after %.0fs",
                self._upload_id,
                self._config.bucket,
                self.key,
                len(running),
                self._config.abort_wait_seconds,
            )
        self._shutdown(wait=False)
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

    def _abort_unanswered_create(self) -> None:
        """Stopped (a cancel) after S3 may have opened the upload but before its id came back:
        abort the key's open uploads. The caller holds the key's partition lock, so any is this
        writer's or a dead one's (as for `remove_orphans`)."""
        try:
            listing = self._client.list_multipart_uploads(
                Bucket=self._config.bucket, Prefix=self.key
            )
            for upload in listing.get("Uploads", []):
                if upload["Key"] == self.key:
                    self._client.abort_multipart_upload(
                        Bucket=self._config.bucket, Key=self.key, UploadId=upload["UploadId"]
                    )
        except Exception as exc:  # the error being raised matters more; say this one too
            logger.warning(
                "could not abort the multipart upload of s3://%s/%s begun when the export "
                "stopped (%s); the next export of the key or a bucket lifecycle rule "
                "AbortIncompleteMultipartUpload removes it",
                self._config.bucket,
                self.key,
                exc,
            )

    def _shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


class S3ObjectStore(ObjectStore):
    """Objects in one bucket. The client is built on first use from `session` (credentials,
    profile) unless one is given; a given client must come from `session`, whose credentials'
    expiry bounds the download links' `expires_at`."""

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
            self._client = self.config.client(self._session)
        return self._client

    @property
    def location(self) -> str:
        return f"s3://{self.config.bucket}/{self.prefix}"

    def open_writer(self, key: str, headers: ObjectHeaders) -> ObjectWriter:
        return S3ObjectWriter(self.client, self.config, key, headers)

    def uri(self, key: str) -> str:
        return f"s3://{self.config.bucket}/{key}"

    def remove_orphans(self, keys: Sequence[str]) -> int:
        """Abort the open multipart uploads of exactly `keys` (a killed run's parts): one
        listing (1,000 uploads a page) under the keys' longest common prefix, so a range of
        partitions costs one request, not one per key."""
        wanted = set(keys)
        if not wanted:
            return 0
        prefix = os.path.commonprefix(sorted(wanted))  # noqa: RUF071 - an S3 key prefix
        paginator = self.client.get_paginator("list_multipart_uploads")
        orphans = [
            (upload["Key"], upload["UploadId"])
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix)
            for upload in page.get("Uploads", [])
            if upload["Key"] in wanted
        ]
        for key, upload_id in orphans:
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.config.bucket, Key=key, UploadId=upload_id
                )
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":  # gone meanwhile: what we wanted
                    raise
            logger.warning("aborted an orphaned multipart upload of %s", self.uri(key))
        return len(orphans)

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.config.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise self._look_failed(key, exc) from exc
        except BotoCoreError as exc:
            raise self._look_failed(key, exc) from exc
        return int(head["ContentLength"])

    def read_tail(self, key: str, length: int) -> tuple[int, bytes] | None:
        """One ranged GET (`bytes=-length`): the size from its Content-Range, and the bytes."""
        try:
            response = self.client.get_object(
                Bucket=self.config.bucket, Key=key, Range=f"bytes=-{length}"
            )
        except ClientError as exc:
            if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            if _code(exc) == "InvalidRange":  # an empty object has no last bytes
                size = self.size(key)
                return None if size is None else (size, b"")
            raise self._look_failed(key, exc) from exc
        except BotoCoreError as exc:
            raise self._look_failed(key, exc) from exc
        data = response["Body"].read()
        total = str(response.get("ContentRange", "")).rpartition("/")[2]
        return (int(total) if total.isdigit() else len(data)), data

    def remove_many(self, keys: Sequence[str]) -> None:
        """DeleteObjects, 1,000 keys a request (a missing key is no error in S3)."""
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _DELETE_BATCH):
            batch = unique[start : start + _DELETE_BATCH]
            try:
                response = self.client.delete_objects(
                    Bucket=self.config.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except ClientError as exc:
                raise self._delete_failed(batch[0], _code(exc)) from exc
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise self._delete_failed(
                    str(first.get("Key")), str(first.get("Code")), str(first.get("Message"))
                )

    def _look_failed(self, key: str, exc: BotoCoreError | ClientError) -> S3UploadError:
        transient = is_transient(exc)
        return S3UploadError(
            f"cannot look at {self.uri(key)}: {exc} ({'transient' if transient else 'permanent'})",
            transient=transient,
        )

    def _delete_failed(self, key: str, code: str, message: str = "") -> ExportError:
        if code == "AccessDenied":
            return StorageConfigError(
                f"cannot delete {self.uri(key)}: access denied; the exporter needs "
                "s3:DeleteObject on its prefix to withdraw a delivery's manifest before "
                "re-exporting (docs/manifest.md)"
            )
        transient = code in TRANSIENT_S3_CODES
        return S3UploadError(
            f"cannot delete {self.uri(key)}: {code} {message}".strip()
            + (" (transient)" if transient else " (permanent)"),
            transient=transient,
        )

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

        Never presigns PUT. A link dies with the credentials that signed it, so `expires_at` is
        the earlier of now + TTL and the signing credentials' own expiry (temporary ones).
        """
        ttl = check_link_ttl(self.config.link_ttl_seconds if ttl_seconds is None else ttl_seconds)
        issued = datetime.now(UTC)
        before = credentials_expiry(self._session)
        url = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.config.bucket, "Key": key},
            ExpiresIn=ttl,
            HttpMethod="GET",
        )
        # A refresh between the two reads means either set may have signed: take the earlier.
        expiries = [e for e in (before, credentials_expiry(self._session)) if e is not None]
        return DownloadLink(url, min([issued + timedelta(seconds=ttl), *expiries]))


def credentials_expiry(session: boto3.session.Session) -> datetime | None:
    """When the session's credentials stop working: temporary credentials (an assumed role,
    SSO, a container or instance role) have an expiry; static keys have none (None).

    botocore keeps it on `RefreshableCredentials` as `_expiry_time` and offers no public
    accessor. Frozen credentials are fetched first, so a refresh that is due happens before
    the expiry is read, as it would before signing.
    """
    credentials = session.get_credentials()
    if credentials is None:
        return None
    credentials.get_frozen_credentials()
    expiry = getattr(credentials, "_expiry_time", None)
    if not isinstance(expiry, datetime):
        return None
    return expiry if expiry.tzinfo is not None else expiry.replace(tzinfo=UTC)
