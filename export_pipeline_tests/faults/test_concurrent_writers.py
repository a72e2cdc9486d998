"""Concurrent writers (issue 8, item 5): rows of the exported customer-month are inserted,
updated and deleted while the export runs; the file and its row count are exactly the rows
visible in the export's snapshot, for every format. Also on a reused source session (a ranged
step's): each export is a REPEATABLE READ transaction of its own.

Deterministic handshakes, no sleeps:
- mid-stream, every format: the export holds at a row (an advisory lock the test holds, see
  source.py) after earlier rows were sent; the writer commits; the test releases.
- Parquet, whose rows come through the ADBC connection while psycopg describes the query:
  the ADBC session is parked at a TCP proxy (pg_proxy) until the writer has committed (a new
  connection at its start-up, a reused one at its first message of the export). Its snapshot
  is taken at its own first statement (`now()`, which `snapshot_at` records), so the file is
  the data as of then: with the writes, and `snapshot_at` after their commit. Describing the
  query only reads types, which the writes cannot change.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import psycopg
import pytest

from export_pipeline.engine import ExportResult
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.extract.session import SourceSession
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
from export_pipeline_tests.harness import export_one
from export_pipeline_tests.pg_proxy import pg_proxy

# The server's version matters here (snapshots): CI runs these again on a second
# PostgreSQL (.ci/run).
pytestmark = pytest.mark.server_version

ROWS = 3000
HOLD_ROW = 1500
FORMATS = [Format.PARQUET, Format.CSV, Format.JSONL, Format.JSON]
VISIBLE = (
    "SELECT id, pad FROM events WHERE customer_id = 1"
    " AND at >= '2025-03-01' AND at < '2025-04-01' ORDER BY id"
)
# Exported first on a reused session, so the held export finds its connections open.
WARM_UP_CUSTOMER = "2"


def _write_concurrently(dsn: str) -> datetime:
    """Insert, update and delete customer 1's March rows, before and after the hold row."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO events SELECT g, 1, date '2025-03-20', 'inserted'"
            " FROM generate_series(%s::int, %s::int) AS g",
            (ROWS + 1, ROWS + 50),
        )
        conn.execute("UPDATE events SET pad = 'updated' WHERE id IN (10, 2000, 2999)")
        conn.execute("DELETE FROM events WHERE id IN (11, 12, 2500)")
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # just before the commit


def _visible(dsn: str) -> list[tuple[int, str]]:
    with psycopg.connect(dsn) as conn:
        return [(int(i), str(p)) for i, p in conn.execute(VISIBLE).fetchall()]


def _exported(fmt: Format, data: bytes) -> list[tuple[int, str]]:
    return sorted((int(r["id"]), str(r["pad"])) for r in file_rows(fmt, data))


def _in_thread(export: Any) -> tuple[threading.Thread, list[ExportResult]]:
    results: list[ExportResult] = []
    thread = threading.Thread(target=lambda: results.append(export()))
    thread.start()
    return thread, results


@pytest.mark.parametrize("reused", [False, True], ids=["new-session", "reused-session"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_writes_committed_mid_stream_are_not_in_the_file(
    fmt: Format,
    reused: bool,
    scratch_dsn: str,
    s3_store: S3ObjectStore,
    s3_client: Any,
    bucket: str,
) -> None:
    create_events(scratch_dsn, ROWS)
    before = _visible(scratch_dsn)
    lock_key = new_lock_key()
    dataset = held_dataset("held", fmt, HOLD_ROW, lock_key)
    dbname = str(psycopg.conninfo.conninfo_to_dict(scratch_dsn)["dbname"])

    with ExitStack() as stack:
        source: SourceConfig | SourceSession = SourceConfig(scratch_dsn)
        if reused:
            source = stack.enter_context(SourceSession(SourceConfig(scratch_dsn)))
            export_one(source, s3_store, dataset, WARM_UP_CUSTOMER, MONTH)
            connects = source.connects
        with hold(scratch_dsn, lock_key) as held, psycopg.connect(scratch_dsn) as admin:
            admin.autocommit = True
            export, results = _in_thread(
                lambda: export_one(source, s3_store, dataset, CUSTOMER, MONTH)
            )
            wait_until(
                "the export to hold", 60, lambda: export_backends(admin, dbname, waiting=True)
            )
            _write_concurrently(scratch_dsn)
            held.release()
            export.join(timeout=120)
        if isinstance(source, SourceSession):
            assert source.connects == connects  # the held export opened no new connection
    [result] = results
    after = _visible(scratch_dsn)
    assert after != before  # the writer changed the customer-month
    data = s3_client.get_object(Bucket=bucket, Key=result.stored.key)["Body"].read()
    assert _exported(fmt, data) == before
    assert result.rows == len(before)


def test_parquet_reads_the_snapshot_its_snapshot_at_names(
    scratch_dsn: str, s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    create_events(scratch_dsn, ROWS)
    before = _visible(scratch_dsn)
    dataset = held_dataset("held", Format.PARQUET, 0, new_lock_key())  # never holds

    with pg_proxy(scratch_dsn, hold_from=1) as proxy:
        export, results = _in_thread(
            lambda: export_one(SourceConfig(proxy.dsn()), s3_store, dataset, CUSTOMER, MONTH)
        )
        assert proxy.holding.wait(60), "the reader's session never started"
        committed = _write_concurrently(scratch_dsn)  # after describe, before the read
        proxy.release()
        export.join(timeout=120)
    [result] = results
    after = _visible(scratch_dsn)
    assert after != before
    data = s3_client.get_object(Bucket=bucket, Key=result.stored.key)["Body"].read()
    assert _exported(Format.PARQUET, data) == after
    assert result.rows == len(after)
    assert result.snapshot_at is not None and result.snapshot_at > committed


def test_parquet_on_a_reused_session_reads_the_snapshot_its_snapshot_at_names(
    scratch_dsn: str, s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    """The ADBC connection is already open (a previous export of the session used it); the
    export's first message on it is held until the writer has committed."""
    create_events(scratch_dsn, ROWS)
    before = _visible(scratch_dsn)
    dataset = held_dataset("held", Format.PARQUET, 0, new_lock_key())  # never holds

    with (
        pg_proxy(scratch_dsn) as proxy,
        SourceSession(SourceConfig(proxy.dsn())) as session,
    ):
        export_one(session, s3_store, dataset, WARM_UP_CUSTOMER, MONTH)
        assert session.connects == 2  # psycopg, then ADBC
        # The ADBC connection is the last one opened (the driver's own type lookup opens and
        # closes one before it); its next message starts the export's transaction.
        proxy.park(proxy.connections - 1)
        export, results = _in_thread(
            lambda: export_one(session, s3_store, dataset, CUSTOMER, MONTH)
        )
        assert proxy.holding.wait(60), "the reader never started"
        committed = _write_concurrently(scratch_dsn)  # before the reader's snapshot
        proxy.release()
        export.join(timeout=120)
        assert session.connects == 2
    [result] = results
    after = _visible(scratch_dsn)
    assert after != before
    data = s3_client.get_object(Bucket=bucket, Key=result.stored.key)["Body"].read()
    assert _exported(Format.PARQUET, data) == after
    assert result.rows == len(after)
    assert result.snapshot_at is not None and result.snapshot_at > committed
