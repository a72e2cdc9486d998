"""S3 storage over HTTP (moto behind the SigV4-checking proxy): uploads, links, and the store
API the batch and the checks use."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import boto3
import pytest
from botocore.config import Config

from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore, S3UploadError
from export_pipeline.storage.writer import ObjectHeaders
from export_pipeline_tests.helpers import list_keys, pending_uploads
from export_pipeline_tests.manifest_helpers import recording_s3

HEADERS = ObjectHeaders("text/csv; charset=utf-8", "d.csv")


def _payload(size: int) -> bytes:
    return os.urandom(size)


def test_multipart_upload_round_trips_exact_bytes(
    s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    data = _payload(2 * MIN_PART_SIZE + 12345)  # three parts
    with s3_store.open_writer("exports/7/2025-01/d.csv", HEADERS) as writer:
        for i in range(0, len(data), 1_000_000):
            writer.write(data[i : i + 1_000_000])
        stored = writer.commit()
    assert stored.uri == f"s3://{bucket}/exports/7/2025-01/d.csv"
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    obj = s3_client.get_object(Bucket=bucket, Key="exports/7/2025-01/d.csv")
    assert obj["Body"].read() == data
    assert obj["ContentType"] == "text/csv; charset=utf-8"
    assert obj["ContentDisposition"] == 'attachment; filename="d.csv"'
    assert pending_uploads(s3_client, bucket) == []


def test_small_object_is_one_put_and_empty_object_exists(
    s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    with s3_store.open_writer("small.csv", HEADERS) as writer:
        writer.write(b"a,b\n")
        writer.commit()
    with s3_store.open_writer("empty.csv", HEADERS) as writer:
        stored = writer.commit()
    assert stored.size_bytes == 0
    assert s3_client.get_object(Bucket=bucket, Key="small.csv")["Body"].read() == b"a,b\n"
    assert list_keys(s3_client, bucket) == ["empty.csv", "small.csv"]


def test_error_mid_upload_aborts_and_leaves_no_object(
    s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    with pytest.raises(RuntimeError), s3_store.open_writer("big.csv", HEADERS) as writer:
        writer.write(_payload(2 * MIN_PART_SIZE + 1))  # two parts already uploaded
        raise RuntimeError("source died")
    assert list_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == []


def test_failing_part_upload_surfaces_and_aborts(s3_endpoint: str, s3_client: Any) -> None:
    store = S3ObjectStore(S3Config(bucket="no-such-bucket", endpoint_url=s3_endpoint))
    with pytest.raises(Exception, match="NoSuchBucket"), store.open_writer("x", HEADERS) as w:
        w.write(_payload(MIN_PART_SIZE * 4))
        w.commit()


def test_presigned_link_is_sigv4_get_and_returns_exact_bytes(
    s3_store: S3ObjectStore, bucket: str
) -> None:
    data = b"id,name\n1,alpha\n"
    with s3_store.open_writer("exports/1/2025-02/d.csv", HEADERS) as writer:
        writer.write(data)
        writer.commit()
    link = s3_store.download_link("exports/1/2025-02/d.csv")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link.url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["604800"]
    assert "testing-secret-key" not in link.url
    with urllib.request.urlopen(link.url) as response:
        assert response.read() == data


@pytest.mark.parametrize("ttl", [0, 604801])
def test_link_ttl_is_bounded(ttl: int) -> None:
    with pytest.raises(ValueError, match="EXPORT_LINK_TTL_SECONDS must be between 1 and 604800"):
        S3Config(bucket="b", link_ttl_seconds=ttl)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url) as response:  # local test server
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_endpoint_rejects_bad_signatures(
    s3_store: S3ObjectStore, s3_endpoint: str, bucket: str
) -> None:
    """The test S3 endpoint checks SigV4, so the link test above can fail for real."""
    with s3_store.open_writer("k.csv", HEADERS) as writer:
        writer.write(b"x")
        writer.commit()
    good = s3_store.download_link("k.csv").url
    assert _get(good) == (200, b"x")
    status, body = _get(good.replace("k.csv", "other.csv"))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    wrong_secret = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing-key-id",
        aws_secret_access_key="not-the-secret",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    ).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k.csv"})
    assert _get(wrong_secret)[0] == 403
    sigv2 = boto3.client(
        "s3", endpoint_url=s3_endpoint, config=Config(signature_version="s3")
    ).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k.csv"})
    assert _get(sigv2)[0] == 403


# -- the store API the batch and the checks use ---------------------------------------------
def test_remove_many_deletes_a_thousand_keys_a_request_and_ignores_missing_ones(
    moto_url: str,
) -> None:
    with recording_s3(moto_url) as (store, log):
        present = [f"exports/{c}/2025-03/d.csv" for c in range(1, 4)]
        for key in present:
            with store.open_writer(key, HEADERS) as writer:
                writer.write(b"x")
                writer.commit()
        log.clear()
        missing = [f"exports/{c}/2025-03/_SUCCESS" for c in range(1, 1000)]
        store.remove_many([*present, *missing, present[0]])  # a repeat counts once
        assert log.counts() == {"DeleteObjects": 2}
        first, second = log.of("DeleteObjects")
        assert len(first.deleted) == 1000 and len(second.deleted) == 2
        assert set(first.deleted + second.deleted) == {*present, *missing}
        assert list_keys(store.client, store.config.bucket) == []
        log.clear()
        store.remove("exports/9/2025-03/none.csv")  # nothing there: fine, one request
        store.remove_many([])
        assert log.counts() == {"DeleteObjects": 1}


def test_remove_many_failing_names_a_key_and_says_if_transient(moto_url: str) -> None:
    with recording_s3(moto_url, max_attempts=1) as (store, faults):
        faults.fail_next("POST", "?delete", 1, 503, "SlowDown")
        with pytest.raises(S3UploadError) as info:
            store.remove_many(["exports/1/2025-03/_SUCCESS"])
        assert info.value.transient
        bucket = store.config.bucket
        assert str(info.value) == (
            f"cannot delete s3://{bucket}/exports/1/2025-03/_SUCCESS: SlowDown (transient)"
        )


def test_read_tail_is_one_ranged_get_with_the_size(moto_url: str) -> None:
    with recording_s3(moto_url) as (store, log):
        data = os.urandom(100_000)
        for key, body in (("exports/a.parquet", data), ("exports/empty.csv", b"")):
            with store.open_writer(key, HEADERS) as writer:
                writer.write(body)
                writer.commit()
        log.clear()
        assert store.read_tail("exports/a.parquet", 8) == (100_000, data[-8:])
        [get] = log.requests
        assert get.operation == "GetObject"  # the size came from its Content-Range
        assert store.read_tail("exports/a.parquet", 200_000) == (100_000, data)
        assert store.read_tail("exports/missing.parquet", 8) is None
        assert store.read_tail("exports/empty.csv", 8) == (0, b"")  # moto: a 200, no range
        # S3 answers a suffix range of an empty object with 416 InvalidRange: then a HEAD
        log.fail_next("GET", "/exports/empty.csv", 1, 416, "InvalidRange")
        log.clear()
        assert store.read_tail("exports/empty.csv", 8) == (0, b"")
        assert [r.operation for r in log.requests] == ["GetObject", "HeadObject"]
