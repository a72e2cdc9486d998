"""A writer killed outright (SIGKILL) leaves its temporary file or multipart upload behind; the
next write of the same key removes it. Real processes, real PostgreSQL, S3 over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg import sql

from export_pipeline.engine import export_query
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import S3Config, S3ObjectStore
from export_pipeline.storage.writer import ObjectStore
from export_pipeline_tests.helpers import list_keys, pending_uploads

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "exports/1/2025-01/orphan.csv"
# About 12 MB of rows (more than two 5 MiB parts), then a long wait: the writer is killed
# while its upload or temporary file is open.
SLOW = (
    "SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 12000) AS g"
    " UNION ALL SELECT 0, pg_sleep(30)::text"
)
WRITER = """
import sys
from psycopg import sql
from export_pipeline.engine import export_query
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
kind, dsn, target, key, endpoint, query = sys.argv[1:7]
store = (
    LocalObjectStore(target, prefix="")
    if kind == "local"
    else S3ObjectStore(S3Config(bucket=target, endpoint_url=endpoint, part_size=MIN_PART_SIZE))
)
export_query(SourceConfig(dsn), store, key, sql.Composed([sql.SQL(query)]), {}, Format.CSV,
             Compression.NONE, name="orphan")
"""


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


def _export_again(dsn: str, store: ObjectStore) -> int:
    query = sql.Composed([sql.SQL("SELECT g, 'y' AS pad FROM generate_series(1, 3) AS g")])
    delivery = export_query(
        SourceConfig(dsn), store, KEY, query, {}, Format.CSV, Compression.NONE, name="orphan"
    )
    return delivery.rows


def test_local_partial_file_of_a_killed_writer_is_removed(scratch_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "exports/1/2025-01"

    def partials() -> list[Path]:
        return [p for p in folder.glob(".orphan.csv.*.partial") if p.stat().st_size > 0]

    _kill_midway(["local", scratch_dsn, str(tmp_path), KEY, "", SLOW], lambda: bool(partials()))
    assert partials()  # what a killed run leaves
    store = LocalObjectStore(tmp_path, prefix="")
    assert _export_again(scratch_dsn, store) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["orphan.csv"]
    assert (folder / "orphan.csv").read_bytes().count(b"\n") == 4  # header + 3 rows


def test_s3_multipart_upload_of_a_killed_writer_is_aborted(
    scratch_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    _kill_midway(
        ["s3", scratch_dsn, bucket, KEY, s3_endpoint, SLOW],
        lambda: (
            bool(pending_uploads(s3_client, bucket))
            and bool(
                s3_client.list_parts(
                    Bucket=bucket,
                    Key=KEY,
                    UploadId=s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"][0][
                        "UploadId"
                    ],
                ).get("Parts")
            )
        ),
    )
    assert pending_uploads(s3_client, bucket) == [KEY]  # the killed run's parts, still billed
    assert list_keys(s3_client, bucket) == []
    store = S3ObjectStore(S3Config(bucket=bucket, endpoint_url=s3_endpoint))
    assert _export_again(scratch_dsn, store) == 3
    assert pending_uploads(s3_client, bucket) == []
    assert list_keys(s3_client, bucket) == [KEY]
