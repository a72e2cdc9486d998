"""The S3 requests that reached a real endpoint: counted, in order, optionally slowed.

`S3Requests` plugs into the SigV4-checking proxy (sigv4_proxy.py) in front of moto's server.
Every request whose signature checks out is recorded in arrival order (with the keys a
DeleteObjects names) and, with `latency_seconds`, held that long first, as a request to real S3
from another machine would be (tens of milliseconds). Being `Faults`, it injects failures too.
The request-count test, the batch, storage and manifest tests and the benchmark
(bench/scale.py --s3-latency-ms) use it.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from export_pipeline_tests.conftest import AWS_TEST_KEY_ID, AWS_TEST_SECRET
from export_pipeline_tests.sigv4_proxy import Faults, sigv4_proxy


def operation(method: str, target: str) -> str:
    """The S3 API operation of a path-style request (method, path and query)."""
    split = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    has_key = "/" in split.path.strip("/")
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in query else "Post"
    if method == "DELETE":
        if "uploadId" in query:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_key else "DeleteBucket"
    if method == "GET":
        if "uploads" in query:
            return "ListMultipartUploads"
        return "GetObject" if has_key else "ListObjects"
    return method


@dataclass(frozen=True)
class Request:
    """One request as it reached the endpoint."""

    method: str
    target: str  # path and query, as sent
    deleted: tuple[str, ...] = ()  # the keys a DeleteObjects named, in its body's order

    @property
    def key(self) -> str | None:
        """The object key of a path-style request (None for a bucket-level one)."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.target).path).lstrip("/")
        _, slash, key = path.partition("/")
        return key if slash else None

    @property
    def operation(self) -> str:
        return operation(self.method, self.target)


class S3Requests(Faults):
    """Every request that reached the proxy, in arrival order (each client call waits for its
    answer before the next starts, so that is the order a thread issued them); injects
    failures as `Faults` does and, optionally, latency."""

    def __init__(self, latency_seconds: float = 0.0) -> None:
        super().__init__()
        self.latency_seconds = latency_seconds
        self._log_lock = threading.Lock()
        self._requests: list[Request] = []

    def seen(self, method: str, target: str, body: bytes) -> None:
        deleted: tuple[str, ...] = ()
        if operation(method, target) == "DeleteObjects":
            deleted = tuple(
                element.text or ""
                for element in ET.fromstring(body).iter()
                if element.tag.rsplit("}", 1)[-1] == "Key"
            )
        with self._log_lock:
            self._requests.append(Request(method, target, deleted))
        if self.latency_seconds:
            time.sleep(self.latency_seconds)  # the network's delay, not synchronisation

    @property
    def requests(self) -> list[Request]:
        with self._log_lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._log_lock:
            self._requests.clear()

    def counts(self) -> Counter[str]:
        """Requests by S3 operation (a fixture's CreateBucket excluded)."""
        return Counter(r.operation for r in self.requests if r.operation != "CreateBucket")

    def of(self, name: str) -> list[Request]:
        """The requests of one S3 operation, in order."""
        return [r for r in self.requests if r.operation == name]

    def publishes(self, bucket: str) -> list[tuple[str, str]]:
        """("write" | "delete", key) for each object a request publishes or removes, in order:
        a PUT without a part number, a CompleteMultipartUpload, a DELETE of an object, and each
        key a DeleteObjects names."""
        found: list[tuple[str, str]] = []
        for request in self.requests:
            if not urllib.parse.urlsplit(request.target).path.startswith(f"/{bucket}"):
                continue
            name, key = request.operation, request.key
            if name in {"PutObject", "CompleteMultipartUpload"} and key is not None:
                found.append(("write", key))
            elif name == "DeleteObject" and key is not None:
                found.append(("delete", key))
            elif name == "DeleteObjects":
                found.extend(("delete", k) for k in request.deleted)
        return found


@contextmanager
def counting_s3_endpoint(
    upstream: str, latency_seconds: float = 0.0
) -> Iterator[tuple[str, S3Requests]]:
    """An endpoint URL in front of `upstream` (moto) that checks signatures, records requests
    and adds `latency_seconds` to each."""
    requests = S3Requests(latency_seconds)
    try:
        with sigv4_proxy(upstream, {AWS_TEST_KEY_ID: AWS_TEST_SECRET}, requests) as url:
            yield url, requests
    finally:
        requests.release()
