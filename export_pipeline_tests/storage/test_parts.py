"""The part-size schedule and the upload memory limit (pure), and a real multipart upload
of many parts under a small limit (local S3 server over HTTP)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from export_pipeline.storage.keys import StorageConfigError
from export_pipeline.storage.parts import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    PartSchedule,
    minimum_buffer_bytes,
    schedule_table,
)
from export_pipeline.storage.s3 import S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectHeaders
from export_pipeline_tests.helpers import list_keys, pending_uploads

HEADERS = ObjectHeaders("application/octet-stream", "big.bin")


@pytest.mark.parametrize(
    ("base", "step", "limit"),
    [(16 * MIB, 500, 1536 * MIB), (16 * MIB, 1000, 2141 * MIB), (5 * MIB, 100, 1200 * MIB)],
)
def test_schedule_reaches_5_tib_within_the_limit(base: int, step: int, limit: int) -> None:
    schedule = PartSchedule(base, step, limit).check()
    sizes = [schedule.part_size(n) for n in range(MAX_PARTS)]
    assert sum(sizes) >= MAX_OBJECT_SIZE  # S3's largest object fits in 10,000 parts
    assert sizes[-1] >= MAX_OBJECT_SIZE // MAX_PARTS  # ~525 MiB parts by the end
    assert all(MIN_PART_SIZE <= s <= MAX_PART_SIZE for s in sizes)
    assert sizes == sorted(sizes)
    flights = [schedule.parts_in_flight(s) for s in sizes]
    assert flights == sorted(flights, reverse=True)  # concurrency shrinks as parts grow
    for size, flight in zip(sizes, flights, strict=True):
        assert flight >= 1
        assert (flight + 1) * size <= limit  # uploading parts + the one filling
    assert schedule_table(schedule)[-1][2] == sum(sizes)


def test_default_schedule_table() -> None:
    rows = schedule_table(PartSchedule().check())
    assert rows[0] == ("1-500", 16 * MIB, 500 * 16 * MIB, 4, 80 * MIB)
    assert rows[-1][0] == "3001-10000" and rows[-1][1] == 768 * MIB and rows[-1][3] == 1
    assert max(row[4] for row in rows) == 1536 * MIB


def test_too_small_a_limit_is_refused_with_the_minimum() -> None:
    minimum = minimum_buffer_bytes(16 * MIB, 500)
    assert minimum == 1354 * MIB
    PartSchedule(16 * MIB, 500, minimum).check()
    with pytest.raises(StorageConfigError, match=f"the minimum is {minimum} bytes \\(1354 MiB\\)"):
        S3Config(bucket="b", max_buffer_bytes=minimum - MIB)
    with pytest.raises(StorageConfigError, match="EXPORT_S3_MAX_BUFFER_BYTES"):
        S3Config(bucket="b", max_buffer_bytes=256 * MIB)
    with pytest.raises(StorageConfigError, match="at any memory limit"):
        minimum_buffer_bytes(MIN_PART_SIZE, 10_000)


def test_many_parts_under_a_small_limit(s3_endpoint: str, bucket: str, s3_client: Any) -> None:
    """5 MiB parts doubling every 4 parts under a 40 MiB limit: 5, 10, then 20 MiB parts
    (the cap, half the limit), 4, 3 then 1 in flight. The writer never holds more than 40 MiB,
    even when one write brings 60 MiB at once."""
    limit = 40 * MIB
    config = S3Config(
        bucket=bucket,
        endpoint_url=s3_endpoint,
        part_size=MIN_PART_SIZE,
        parts_per_step=4,
        max_buffer_bytes=limit,
        max_object_bytes=300 * MIB,
    )
    schedule = config.schedule
    data = os.urandom(30 * MIB) * 6 + os.urandom(3 * MIB)  # 183 MiB
    writer = S3ObjectStore(config).open_writer("exports/big.bin", HEADERS)
    with writer:
        writer.write(data[: 60 * MIB])  # one huge write: cut into parts, not buffered whole
        for i in range(60 * MIB, len(data), 3 * MIB):
            writer.write(data[i : i + 3 * MIB])
        stored = writer.commit()
    parts, total = 0, 0
    while total < len(data):
        total += schedule.part_size(parts)
        parts += 1
    assert parts == 15  # 4 x 5 MiB, 4 x 10 MiB, 7 x 20 MiB (the last one 3 MiB)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    obj = s3_client.get_object(Bucket=bucket, Key="exports/big.bin")
    assert obj["ETag"].strip('"').endswith(f"-{parts}")  # really that many parts
    assert hashlib.sha256(obj["Body"].read()).hexdigest() == stored.sha256
    assert 20 * MIB <= writer.peak_buffered_bytes <= limit  # type: ignore[attr-defined]
    assert list_keys(s3_client, bucket) == ["exports/big.bin"]
    assert pending_uploads(s3_client, bucket) == []


def test_the_limit_comes_from_its_variable_and_a_small_one_is_refused() -> None:
    import dagster as dg

    from export_pipeline.resources.s3 import ExportS3Resource
    from export_pipeline.resources.storage import EXPORT_STORAGE_KEY, S3ExportStorageResource
    from export_pipeline.settings import build_resources

    env = {"EXPORT_S3_BUCKET": "b", "EXPORT_S3_MAX_BUFFER_BYTES": str(2048 * MIB)}
    storage = build_resources(env)[EXPORT_STORAGE_KEY]
    assert storage.max_buffer_bytes == dg.EnvVar.int("EXPORT_S3_MAX_BUFFER_BYTES")
    default = build_resources({"EXPORT_S3_BUCKET": "b"})[EXPORT_STORAGE_KEY]
    assert default.max_buffer_bytes == 1536 * MIB
    small = S3ExportStorageResource(s3=ExportS3Resource(), bucket="b", max_buffer_bytes=256 * MIB)
    with pytest.raises(StorageConfigError, match="the minimum is 1419771904 bytes"):
        small.store()
