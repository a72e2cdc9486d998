"""Re-materializing a partition: readers never see a mix, and two writers of the same key at
once end with exactly one complete object (S3 over HTTP and the local store)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from export_pipeline.errors import ExportError
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore, S3UploadError
from export_pipeline.storage.writer import ObjectHeaders, ObjectStore, StoredObject
from export_pipeline_tests.helpers import list_keys, pending_uploads
from export_pipeline_tests.sigv4_proxy import Faults

pytestmark = pytest.mark.slow  # two writers and readers racing on one key: not the inner loop

KEY = "exports/9/2025-04/events.csv"
HEADERS = ObjectHeaders("text/csv; charset=utf-8", "events.csv")
OLD = os.urandom(2 * MIN_PART_SIZE + 100)  # three parts each
NEW = os.urandom(2 * MIN_PART_SIZE + 200)
SHA = {hashlib.sha256(OLD).hexdigest(): "old", hashlib.sha256(NEW).hexdigest(): "new"}


def _export(store: ObjectStore, data: bytes) -> StoredObject:
    """What `batch.export_batch` does with a file's bytes: remove a dead writer's upload (the
    listing of the batch's keys), write, commit."""
    store.remove_orphans([KEY])
    with store.open_writer(KEY, HEADERS) as writer:
        for i in range(0, len(data), 1_000_000):
            writer.write(data[i : i + 1_000_000])
        return writer.commit()


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition with a deadline


def _read_while_replacing(store: ObjectStore, read: Callable[[], bytes]) -> list[str]:
    """GET the key in a loop while a second export of different content commits."""
    _export(store, OLD)
    seen: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(SHA.get(hashlib.sha256(read()).hexdigest(), "MIXED"))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        _wait_for(lambda: len(seen) >= 2, "reads of the old object")
        _export(store, NEW)
        count = len(seen)
        _wait_for(lambda: len(seen) >= count + 2, "reads after the commit")
    finally:
        stop.set()
        thread.join()
    return seen


def _assert_old_then_new(seen: list[str]) -> None:
    assert "MIXED" not in seen  # every read is entirely old or entirely new
    assert seen[0] == "old" and seen[-1] == "new"
    flip = seen.index("new")
    assert set(seen[:flip]) == {"old"} and set(seen[flip:]) == {"new"}  # never back


def test_s3_replace_is_atomic_for_readers(s3_config: S3Config, s3_client: Any) -> None:
    store = S3ObjectStore(s3_config)
    seen = _read_while_replacing(
        store, lambda: s3_client.get_object(Bucket=s3_config.bucket, Key=KEY)["Body"].read()
    )
    _assert_old_then_new(seen)
    assert pending_uploads(s3_client, s3_config.bucket) == []


def test_local_replace_is_atomic_for_readers(local_store: LocalObjectStore) -> None:
    def read() -> bytes:
        with local_store.open_reader(KEY) as f:
            return f.read()

    _assert_old_then_new(_read_while_replacing(local_store, read))


def _pause_before(store: S3ObjectStore, operation: str, gate: threading.Event) -> threading.Event:
    """Make `store`'s writer wait before `operation` until `gate` is set; return an event set
    when it got there (botocore's own event hook, the request itself is real)."""
    reached = threading.Event()

    def pause(**_: Any) -> None:
        reached.set()
        assert gate.wait(60)

    store.client.meta.events.register_first(f"before-parameter-build.s3.{operation}", pause)
    return reached


# What S3 answers a request on an upload that was aborted: 404 NoSuchUpload. moto's server
# answers 500 instead (a crash inside moto), so writer A goes through the fault proxy, which
# gives the answer S3 gives; the free-running race below uses moto's own answers.
ON_ABORTED_UPLOAD = {
    "UploadPart": ("PUT", "partNumber="),  # every part of A's that is sent after the abort
    "CompleteMultipartUpload": ("POST", "uploadId="),
}


@pytest.mark.parametrize("paused_at", list(ON_ABORTED_UPLOAD))
def test_second_writer_aborts_the_first_which_fails_transient(
    paused_at: str,
    s3_config: S3Config,
    s3_client: Any,
    s3_faults: tuple[str, Faults],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Writer A is held (mid-stream, or with every part uploaded) while writer B exports the
    same key: B's remove_orphans aborts A's upload, B commits; A then fails, transient."""
    endpoint, faults = s3_faults
    method, fragment = ON_ABORTED_UPLOAD[paused_at]
    faults.fail_next(method, fragment, 3, 404, "NoSuchUpload")
    first = S3ObjectStore(dataclasses.replace(s3_config, endpoint_url=endpoint))
    second = S3ObjectStore(s3_config)
    gate = threading.Event()
    reached = _pause_before(first, paused_at, gate)
    outcome: list[BaseException | StoredObject] = []

    def run_first() -> None:
        try:
            outcome.append(_export(first, OLD))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert reached.wait(60)
        assert pending_uploads(s3_client, s3_config.bucket) == [KEY]  # A's upload is open
        with caplog.at_level(logging.WARNING, "export_pipeline.storage.s3"):
            stored = _export(second, NEW)
        assert (
            f"aborted an orphaned multipart upload of s3://{s3_config.bucket}/{KEY}" in caplog.text
        )
    finally:
        gate.set()
        thread.join()
    [error] = outcome
    assert faults.injected >= 1
    assert isinstance(error, S3UploadError), error
    assert error.transient
    assert f"s3://{s3_config.bucket}/{KEY}" in str(error)
    assert "aborted by another writer of the same key" in str(error)
    assert list_keys(s3_client, s3_config.bucket) == [KEY]
    body = s3_client.get_object(Bucket=s3_config.bucket, Key=KEY)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == stored.sha256 == hashlib.sha256(NEW).hexdigest()
    assert pending_uploads(s3_client, s3_config.bucket) == []


@pytest.mark.parametrize("round_", range(3))
def test_two_writers_racing_end_with_one_complete_object(
    round_: int, s3_config: S3Config, s3_client: Any
) -> None:
    """Free-running: both start together. Whatever the interleaving, the key ends with one
    complete object equal to one of the two exports, no upload stays open, and a writer that
    lost fails with a transient error naming the key."""
    stores = [S3ObjectStore(s3_config), S3ObjectStore(s3_config)]
    start = threading.Barrier(2)
    outcome: dict[int, BaseException | StoredObject] = {}

    def run(i: int) -> None:
        start.wait()
        try:
            outcome[i] = _export(stores[i], (OLD, NEW)[i])
        except BaseException as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    body = s3_client.get_object(Bucket=s3_config.bucket, Key=KEY)["Body"].read()
    assert hashlib.sha256(body).hexdigest() in SHA  # exactly one of the two, complete
    committed = [o for o in outcome.values() if isinstance(o, StoredObject)]
    assert hashlib.sha256(body).hexdigest() in {o.sha256 for o in committed}
    for failure in (o for o in outcome.values() if not isinstance(o, StoredObject)):
        assert isinstance(failure, S3UploadError) and failure.transient, failure
        assert KEY in str(failure)
    assert list_keys(s3_client, s3_config.bucket) == [KEY]
    assert pending_uploads(s3_client, s3_config.bucket) == []


def test_local_second_writer_removes_the_first_ones_file_which_fails_transient(
    local_store: LocalObjectStore,
) -> None:
    first = local_store.open_writer(KEY, HEADERS)
    with first:
        first.write(OLD)
        stored = _export(local_store, NEW)  # its remove_orphans deletes the first's file
        with pytest.raises(ExportError, match="removed by another writer") as info:
            first.commit()
    assert info.value.transient
    assert str(local_store.path(KEY)) in str(info.value)
    assert local_store.path(KEY).read_bytes() == NEW
    assert stored.sha256 == hashlib.sha256(NEW).hexdigest()
    assert sorted(p.name for p in local_store.path(KEY).parent.iterdir()) == ["events.csv"]
