"""Concurrent writers (issue 8, item 5): rows of the exported customer-month are inserted,
updated and deleted while the export runs; the file and its row count are exactly the rows
visible in the export's snapshot, for every format.

Deterministic handshakes, no sleeps:
- mid-stream, every format: the export holds at a row (an advisory lock the test holds, see
  source.py) after earlier rows were sent; the writer commits; the test releases.
- Parquet between its two sessions: the psycopg session describes the query and exports its
  snapshot; the ADBC session that reads is parked at a TCP proxy (pg_proxy) until the writer
  has committed. The reader imports the snapshot, so it sees the data as described, not the
  newer rows (before the fix it read a fresh snapshot and the file took in the writes).
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from export_pipeline.engine import export_partition
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.spec import Format
from export_pipeline.storage.s3 import S3ObjectStore
from export_pipeline_tests.faults.runs import file_rows
from export_pipeline_tests.faults.source import (
    CUSTOMER,
    MONTH,
    create_events,
    export_backends,
    held_dataset,
    hold,
    new_lock_key,
    wait_until,
)
from export_pipeline_tests.pg_proxy import pg_proxy

ROWS = 3000
HOLD_ROW = 1500
FORMATS = [Format.PARQUET, Format.CSV, Format.JSONL, Format.JSON]
VISIBLE = (
    "SELECT id, pad FROM events WHERE customer_id = 1"
    " AND at >= '2025-03-01' AND at < '2025-04-01' ORDER BY id"
)


def _write_concurrently(dsn: str) -> None:
    """Insert, update and delete customer 1's March rows, before and after the hold row."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO events SELECT g, 1, date '2025-03-20', 'inserted'"
            " FROM generate_series(%s::int, %s::int) AS g",
            (ROWS + 1, ROWS + 50),
        )
        conn.execute("UPDATE events SET pad = 'updated' WHERE id IN (10, 2000, 2999)")
        conn.execute("DELETE FROM events WHERE id IN (11, 12, 2500)")


def _visible(dsn: str) -> list[tuple[int, str]]:
    with psycopg.connect(dsn) as conn:
        return [(int(i), str(p)) for i, p in conn.execute(VISIBLE).fetchall()]


def _exported(fmt: Format, data: bytes) -> list[tuple[int, str]]:
    return sorted((int(r["id"]), str(r["pad"])) for r in file_rows(fmt, data))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_writes_committed_mid_stream_are_not_in_the_file(
    fmt: Format, scratch_dsn: str, s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    create_events(scratch_dsn, ROWS)
    before = _visible(scratch_dsn)
    lock_key = new_lock_key()
    dataset = held_dataset("held", fmt, HOLD_ROW, lock_key)
    dbname = str(psycopg.conninfo.conninfo_to_dict(scratch_dsn)["dbname"])

    results: list[Any] = []
    with hold(scratch_dsn, lock_key) as held, psycopg.connect(scratch_dsn) as admin:
        admin.autocommit = True
        export = threading.Thread(
            target=lambda: results.append(
                export_partition(SourceConfig(scratch_dsn), s3_store, dataset, CUSTOMER, MONTH)
            )
        )
        export.start()
        wait_until("the export to hold", 60, lambda: export_backends(admin, dbname, waiting=True))
        _write_concurrently(scratch_dsn)
        held.release()
        export.join(timeout=120)
    [result] = results
    after = _visible(scratch_dsn)
    assert after != before  # the writer changed the customer-month
    data = s3_client.get_object(Bucket=bucket, Key=result.stored.key)["Body"].read()
    assert _exported(fmt, data) == before
    assert result.rows == len(before)


def test_parquet_reads_the_snapshot_it_described(
    scratch_dsn: str, s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    create_events(scratch_dsn, ROWS)
    before = _visible(scratch_dsn)
    dataset = held_dataset("held", Format.PARQUET, 0, new_lock_key())  # never holds

    results: list[Any] = []
    with pg_proxy(scratch_dsn, hold_from=1) as proxy:
        export = threading.Thread(
            target=lambda: results.append(
                export_partition(SourceConfig(proxy.dsn()), s3_store, dataset, CUSTOMER, MONTH)
            )
        )
        export.start()
        assert proxy.holding.wait(60), "the reader's session never started"
        _write_concurrently(scratch_dsn)  # after describe and pg_export_snapshot, before the read
        proxy.release()
        export.join(timeout=120)
    [result] = results
    assert _visible(scratch_dsn) != before
    data = s3_client.get_object(Bucket=bucket, Key=result.stored.key)["Body"].read()
    assert _exported(Format.PARQUET, data) == before
    assert result.rows == len(before)
