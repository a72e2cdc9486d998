"""S3 failures injected by the fault proxy (real HTTP, real botocore retries, moto behind).

Each failing case asserts: the export fails with an error naming the object (its key holds
the customer and month), classified transient; nothing is under the final key; no multipart
upload is left open once cleanup has run; and a retry writes the byte-identical object.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import pytest

from export_pipeline.retryable import is_transient
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore, S3UploadError
from export_pipeline.storage.writer import ObjectHeaders, StoredObject
from export_pipeline_tests.helpers import list_keys, pending_uploads
from export_pipeline_tests.sigv4_proxy import Faults

pytestmark = (
    pytest.mark.slow
)  # fault injection, with its timeouts and back-offs: not the inner loop

KEY = "exports/42/2025-03/orders.csv"
HEADERS = ObjectHeaders("text/csv; charset=utf-8", "orders.csv")
DATA = os.urandom(2 * MIN_PART_SIZE + 4321)  # three parts
ATTEMPTS = 3  # botocore attempts per request in these tests (the first one included)

UPLOAD_PART_2 = ("PUT", "partNumber=2")
COMPLETE = ("POST", "uploadId=")  # CreateMultipartUpload is POST ?uploads, without an id
ABORT = ("DELETE", "uploadId=")


def _store(endpoint: str, bucket: str) -> S3ObjectStore:
    return S3ObjectStore(
        S3Config(
            bucket=bucket,
            endpoint_url=endpoint,
            part_size=MIN_PART_SIZE,
            max_attempts=ATTEMPTS,
            read_timeout_seconds=0.5,  # a held request times out fast
        )
    )


def _export(store: S3ObjectStore) -> StoredObject:
    """What `batch.export_batch` does: remove a dead writer's upload, write, commit."""
    store.remove_orphans([KEY])
    with store.open_writer(KEY, HEADERS) as writer:
        for i in range(0, len(DATA), 1_000_000):
            writer.write(DATA[i : i + 1_000_000])
        return writer.commit()


def _assert_retry_is_identical(store: S3ObjectStore, client: Any, bucket: str) -> None:
    stored = _export(store)
    assert stored.sha256 == hashlib.sha256(DATA).hexdigest()
    body = client.get_object(Bucket=bucket, Key=KEY)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == stored.sha256
    assert list_keys(client, bucket) == [KEY]
    assert pending_uploads(client, bucket) == []


FAILURES = {
    "UploadPart 500": (UPLOAD_PART_2, 500, "InternalError"),
    "UploadPart 503 SlowDown": (UPLOAD_PART_2, 503, "SlowDown"),
    "UploadPart timeout": (UPLOAD_PART_2, Faults.HOLD, ""),
    "Complete 500": (COMPLETE, 500, "InternalError"),
    "Complete 503 SlowDown": (COMPLETE, 503, "SlowDown"),
    "Complete timeout": (COMPLETE, Faults.HOLD, ""),
    "Complete 200 with an Error body": (COMPLETE, 200, "InternalError"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_s3_failure_past_the_retries_fails_cleanly(
    case: str, s3_faults: tuple[str, Faults], bucket: str, s3_client: Any
) -> None:
    endpoint, faults = s3_faults
    (method, fragment), status, code = FAILURES[case]
    if status == Faults.HOLD:
        faults.hold_next(method, fragment, ATTEMPTS)
    else:
        faults.fail_next(method, fragment, ATTEMPTS, status, code)
    store = _store(endpoint, bucket)
    with pytest.raises(S3UploadError) as info:
        _export(store)
    assert faults.injected == ATTEMPTS  # botocore retried, then gave up
    message = str(info.value)
    assert f"s3://{bucket}/{KEY}" in message and "(transient)" in message
    if code:
        assert code in message
    else:
        assert "Read timeout" in message
    assert info.value.transient and is_transient(info.value)
    assert list_keys(s3_client, bucket) == []  # nothing under the final key
    assert pending_uploads(s3_client, bucket) == []  # the writer aborted its upload
    _assert_retry_is_identical(store, s3_client, bucket)


@pytest.mark.parametrize("case", list(FAILURES))
def test_s3_failure_within_the_retries_is_absorbed(
    case: str, s3_faults: tuple[str, Faults], bucket: str, s3_client: Any
) -> None:
    """Fewer failures than attempts: botocore retries, the object is complete and exact.
    For the 200-with-Error body this proves botocore reads it as a failure (it retried)."""
    endpoint, faults = s3_faults
    (method, fragment), status, code = FAILURES[case]
    if status == Faults.HOLD:
        faults.hold_next(method, fragment, ATTEMPTS - 1)
    else:
        faults.fail_next(method, fragment, ATTEMPTS - 1, status, code)
    _assert_retry_is_identical(_store(endpoint, bucket), s3_client, bucket)
    assert faults.injected == ATTEMPTS - 1


def test_a_failing_abort_is_logged_and_the_next_write_removes_the_upload(
    s3_faults: tuple[str, Faults], bucket: str, s3_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, faults = s3_faults
    faults.fail_next(*UPLOAD_PART_2, ATTEMPTS, 503, "SlowDown")
    faults.fail_next(*ABORT, ATTEMPTS, 500, "InternalError")
    store = _store(endpoint, bucket)
    with (
        caplog.at_level(logging.WARNING, "export_pipeline.storage.s3"),
        pytest.raises(S3UploadError, match="SlowDown"),
    ):
        _export(store)  # the error raised is the upload's, not the abort's
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "could not abort multipart upload" in warnings[0]
    assert f"s3://{bucket}/{KEY}" in warnings[0] and "InternalError" in warnings[0]
    assert list_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == [KEY]  # the abort really failed
    _assert_retry_is_identical(store, s3_client, bucket)  # remove_orphans aborts it first
