"""For the manifest, batch and storage tests: a bucket behind an endpoint that records the
S3 requests (request_counts.py), and checks of a delivered customer-month against the bytes in
storage."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3

from export_pipeline.engine import ExportResult
from export_pipeline.manifest import ManifestEntry
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectStore
from export_pipeline_tests.request_counts import S3Requests, counting_s3_endpoint


@contextmanager
def recording_s3(moto_url: str, **settings: Any) -> Iterator[tuple[S3ObjectStore, S3Requests]]:
    """A new bucket behind a recording, SigV4-checking endpoint (which can inject faults too);
    the store over it (its config holds the endpoint and the bucket; `settings` are more
    S3Config fields). The log starts empty, after the bucket was created."""
    with counting_s3_endpoint(moto_url) as (url, log):
        bucket = f"manifest-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=bucket)
        log.clear()
        config = S3Config(bucket=bucket, endpoint_url=url, part_size=MIN_PART_SIZE, **settings)
        yield S3ObjectStore(config), log


def manifest_entry(result: ExportResult) -> ManifestEntry:
    """The manifest's entry of an export just written (engine level; the manifest asset
    builds entries from the loaded handles, `ManifestEntry.of_file`)."""
    return ManifestEntry(
        dataset=result.dataset,
        key=result.stored.key,
        rows=result.rows,
        size_bytes=result.stored.size_bytes,
        sha256=result.stored.sha256,
        format=result.format,
        compression=result.compression,
        columns=tuple((c.name, c.pg_type) for c in result.columns),
        snapshot_at=result.snapshot_at,
        link_expires_at=result.link.expires_at if result.link else None,
    )


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


def publish_order(log: S3Requests, bucket: str, data_keys: set[str], folder: str) -> list[int]:
    """[last data object written, manifest written, _SUCCESS written, requests counted], as
    positions in the order of publishing requests; asserts each happened."""
    steps = log.publishes(bucket)
    manifest_at = steps.index(("write", f"{folder}/manifest.json"))
    success_at = steps.index(("write", f"{folder}/_SUCCESS"))
    last_data = max(i for i, (op, key) in enumerate(steps) if op == "write" and key in data_keys)
    return [last_data, manifest_at, success_at, len(steps)]
