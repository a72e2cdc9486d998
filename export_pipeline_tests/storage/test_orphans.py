"""A writer killed outright (SIGKILL) leaves its temporary file or multipart upload behind; the
next export of the same key (`export_batch`, with its one listing of the batch's keys) removes
it. Real processes, real PostgreSQL, S3 over HTTP.

S3 kill points: before the first part (the upload is open, no part yet), mid-stream (two of
four parts uploaded) and after the last part, before CompleteMultipartUpload. Each time
nothing is under the final key, the next export of the key aborts the orphaned upload, and its
file is byte-identical to a clean export of the unchanged source."""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from export_pipeline.batch import BatchItem, export_batch
from export_pipeline.engine import ExportStream
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.partitions import Month, partition_key
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectStore, StoredObject
from export_pipeline_tests.harness import write_query
from export_pipeline_tests.helpers import list_keys

pytestmark = pytest.mark.slow  # writers killed in child processes: not the inner loop

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "exports/1/2025-01/orphan.csv"  # dataset "orphan" (CSV) of customer 1, January 2025
JANUARY = Month(2025, 1)
# About 12 MB of rows (more than two 5 MiB parts), then a long wait: the writer is killed
# while its upload or temporary file is open.
SLOW = (
    "SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 12000) AS g"
    " UNION ALL SELECT 0, pg_sleep(30)::text"
)
# The writer a killed run was: an export streaming into the key (engine calls only, so the
# child does not import Dagster).
WRITE = """
from psycopg import sql
from export_pipeline.engine import ExportStream, object_headers
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.spec import Compression, Format
def write(dsn, store, key, query):
    stream = ExportStream(SourceConfig(dsn), sql.Composed([sql.SQL(query)]), {}, name="orphan",
                          format=Format.CSV, compression=Compression.NONE)
    with store.open_writer(key, object_headers(stream, key)) as writer:
        stream.write_to(writer)
        writer.commit()
"""
WRITER = (
    WRITE
    + """
import sys
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
kind, dsn, target, key, endpoint, query = sys.argv[1:7]
store = (
    LocalObjectStore(target)
    if kind == "local"
    else S3ObjectStore(S3Config(bucket=target, endpoint_url=endpoint, part_size=MIN_PART_SIZE))
)
write(dsn, store, key, query)
"""
)


def _kill_midway(args: list[str], started: Callable[[], bool]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, *args], cwd=REPO_ROOT, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not started():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.1)  # polling a condition with a deadline, not synchronising by time
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _export_again(dsn: str, store: ObjectStore, query: sql.Composable) -> tuple[int, StoredObject]:
    """The next run's export of the key: (rows, what it stored)."""
    stream = ExportStream(
        SourceConfig(dsn),
        sql.Composed([query]),
        {},
        name="orphan",
        format=Format.CSV,
        compression=Compression.NONE,
    )
    pk = partition_key("1", JANUARY)
    result = export_batch([BatchItem(pk, "1", JANUARY, stream)], store, "orphan")
    assert not result.failed, result.failed
    delivered = result.delivered[pk]
    assert delivered.stored.key == KEY
    return delivered.rows, delivered.stored


def test_local_partial_file_of_a_killed_writer_is_removed(scratch_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "exports/1/2025-01"

    def partials() -> list[Path]:
        return [p for p in folder.glob(".orphan.csv.*.partial") if p.stat().st_size > 0]

    _kill_midway(["local", scratch_dsn, str(tmp_path), KEY, "", SLOW], lambda: bool(partials()))
    assert partials()  # what a killed run leaves
    store = LocalObjectStore(tmp_path)
    query = sql.SQL("SELECT g, 'y' AS pad FROM generate_series(1, 3) AS g")
    assert _export_again(scratch_dsn, store, query)[0] == 3
    assert sorted(p.name for p in folder.iterdir()) == ["orphan.csv"]
    assert (folder / "orphan.csv").read_bytes().count(b"\n") == 4  # header + 3 rows


# The child writes this table to S3 with one part in flight at a time and stops at the kill
# point named by EXPORT_TEST_PAUSE_AT, in botocore's own `before-parameter-build` event: it
# prints PAUSED and waits on stdin, so the parent kills it exactly there (no sleeps, no races).
TABLE_ROWS = 14_000  # 18 MB of CSV: four parts of 5 MiB (the last one smaller)
PAUSING_WRITER = (
    WRITE
    + """
import os, sys
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
dsn, bucket, key, endpoint = sys.argv[1:5]
kind, _, number = os.environ["EXPORT_TEST_PAUSE_AT"].partition(":")
store = S3ObjectStore(
    S3Config(bucket=bucket, endpoint_url=endpoint, part_size=MIN_PART_SIZE, max_concurrency=1)
)
def pause(params, **_):
    if kind == "complete" or params.get("PartNumber") == int(number or 0):
        print("PAUSED", flush=True)
        sys.stdin.read()  # until killed
event = "CompleteMultipartUpload" if kind == "complete" else "UploadPart"
store.client.meta.events.register(f"before-parameter-build.s3.{event}", pause)
write(dsn, store, key, "SELECT * FROM t ORDER BY g")
print("FINISHED", flush=True)
"""
)
TABLE_QUERY = sql.SQL("SELECT * FROM t ORDER BY g")


def _make_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT g, repeat(md5(g::text), 40) AS pad"
            " FROM generate_series(1, %s) AS g",
            (TABLE_ROWS,),
        )


def _kill_when_paused(args: list[str], pause_at: str) -> None:
    env = {**os.environ, "EXPORT_TEST_PAUSE_AT": pause_at, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSING_WRITER, *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)  # a deadline, not a sleep
        assert ready, "the writer never reached the kill point"
        line = proc.stdout.readline()
        assert line == b"PAUSED\n", (line, proc.stderr.read() if proc.stderr else b"")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _sha256_of(client: Any, bucket: str, key: str) -> str:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    ("pause_at", "parts_uploaded"),
    [("part:1", 0), ("part:3", 2), ("complete", 4)],
    ids=["early-before-the-first-part", "mid-stream", "after-the-last-part"],
)
def test_s3_upload_of_a_killed_writer_is_aborted_by_the_next_run(
    pause_at: str,
    parts_uploaded: int,
    scratch_dsn: str,
    s3_endpoint: str,
    bucket: str,
    s3_client: Any,
) -> None:
    _make_table(scratch_dsn)
    store = S3ObjectStore(S3Config(bucket=bucket, endpoint_url=s3_endpoint))
    clean, rows = write_query(
        SourceConfig(scratch_dsn),
        store,
        "clean/orphan.csv",
        sql.Composed([TABLE_QUERY]),
        {},
        Format.CSV,
        Compression.NONE,
        name="orphan",
    )
    assert rows == TABLE_ROWS and clean.size_bytes > 3 * MIN_PART_SIZE

    _kill_when_paused([scratch_dsn, bucket, KEY, s3_endpoint], pause_at)
    assert KEY not in list_keys(s3_client, bucket)  # nothing under the final key
    [upload] = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=KEY)["Uploads"]
    parts = s3_client.list_parts(Bucket=bucket, Key=KEY, UploadId=upload["UploadId"])
    assert len(parts.get("Parts", [])) == parts_uploaded  # killed exactly where asked

    rows, retry = _export_again(scratch_dsn, store, TABLE_QUERY)
    assert rows == TABLE_ROWS
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert list_keys(s3_client, bucket) == sorted([KEY, "clean/orphan.csv"])
    assert retry.sha256 == clean.sha256
    assert _sha256_of(s3_client, bucket, KEY) == _sha256_of(s3_client, bucket, "clean/orphan.csv")
