"""For the manifest tests: the order in which S3 requests reached the server, and checks of a
delivered customer-month against the bytes in storage."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectStore
from export_pipeline_tests.conftest import AWS_TEST_KEY_ID, AWS_TEST_SECRET
from export_pipeline_tests.sigv4_proxy import Faults, sigv4_proxy


class RequestLog(Faults):
    """Injects nothing; records every signed request that reached the proxy, in arrival order.

    Each client call waits for its answer before the next starts, so arrival order is the order
    the writer issued them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._log_lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []

    def take(self, method: str, target: str) -> tuple[int, str] | None:
        with self._log_lock:
            self.requests.append((method, target))
        return None

    def publishes(self, bucket: str) -> list[tuple[str, str]]:
        """("write" | "delete", key) for each request that publishes or removes an object: a
        PUT without a part number, a CompleteMultipartUpload, a DELETE of an object."""
        found: list[tuple[str, str]] = []
        with self._log_lock:
            requests = list(self.requests)
        for method, target in requests:
            split = urllib.parse.urlsplit(target)
            path = urllib.parse.unquote(split.path)
            if not path.startswith(f"/{bucket}/"):
                continue
            key = path[len(bucket) + 2 :]
            query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
            if method == "PUT" and "partNumber" not in query:
                found.append(("write", key))
            elif method == "POST" and "uploadId" in query:
                found.append(("write", key))
            elif method == "DELETE" and "uploadId" not in query:
                found.append(("delete", key))
        return found


def read_bytes(store: ObjectStore, key: str) -> bytes:
    with store.open_reader(key) as stream:
        return stream.read()


def check_delivery(store: ObjectStore, folder: str) -> dict[str, Any]:
    """Assert `_SUCCESS` holds the manifest's sha256 and every dataset's sha256 and size match
    its object's bytes; return the manifest."""
    manifest_bytes = read_bytes(store, f"{folder}/manifest.json")
    marker = read_bytes(store, f"{folder}/_SUCCESS")
    assert marker.decode("ascii") == hashlib.sha256(manifest_bytes).hexdigest()
    manifest = json.loads(manifest_bytes)
    for name, entry in manifest["datasets"].items():
        data = read_bytes(store, entry["key"])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["bytes"], name
        assert entry["key"].startswith(f"{folder}/{name}."), name
    return manifest


@contextmanager
def recording_s3(moto_url: str) -> Iterator[tuple[S3ObjectStore, RequestLog]]:
    """A new bucket behind a SigV4-checking proxy that records each request's arrival; the
    store over it (its config holds the proxy's endpoint and the bucket)."""
    log = RequestLog()
    with sigv4_proxy(moto_url, {AWS_TEST_KEY_ID: AWS_TEST_SECRET}, log) as url:
        bucket = f"manifest-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=bucket)
        yield S3ObjectStore(S3Config(bucket=bucket, endpoint_url=url, part_size=MIN_PART_SIZE)), log


def publish_order(log: RequestLog, bucket: str, data_keys: set[str], folder: str) -> list[int]:
    """[last data object written, manifest written, _SUCCESS written, requests counted], as
    positions in the order of publishing requests; asserts each happened."""
    steps = log.publishes(bucket)
    manifest_at = steps.index(("write", f"{folder}/manifest.json"))
    success_at = steps.index(("write", f"{folder}/_SUCCESS"))
    last_data = max(i for i, (op, key) in enumerate(steps) if op == "write" and key in data_keys)
    return [last_data, manifest_at, success_at, len(steps)]
