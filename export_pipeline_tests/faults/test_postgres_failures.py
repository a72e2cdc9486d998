"""PostgreSQL failing under a running export (issue 8, item 4): the export's backend is
terminated mid-stream (`pg_terminate_backend`), or `statement_timeout` fires while the export
is held. Real runs of the export asset (in this process), real PostgreSQL, S3 over HTTP.

For every format:
- the run fails fast: within seconds of the termination, within the timeout plus seconds;
- nothing is under the final key and no multipart upload is left open (one was, with parts);
- the error names the asset and the customer|month partition, and says transient (a dropped
  connection, SQLSTATE 57P01) or permanent (statement timeout, 57014: the same query would time
  out again; retryable.py);
- a retry runs on a new snapshot: rows committed between the failure and the retry are in the
  retried file, and one more run on the unchanged source writes a byte-identical file.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import dagster as dg
import psycopg
import pytest

from export_pipeline.formats.naming import extension
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import Compression, Format
from export_pipeline_tests.faults.runs import file_rows, run_export
from export_pipeline_tests.faults.source import (
    CUSTOMER,
    MONTH,
    PARTITION,
    create_events,
    export_backends,
    hold,
    new_lock_key,
    spec_yaml,
    wait_until,
)
from export_pipeline_tests.helpers import list_keys, pending_uploads

ROWS = 60_000
# About 10 MB of rows are out when the export holds (ADBC hands over whole batches of about
# 2 MiB, so Parquet has written a little less): more than one 5 MiB part in every format.
HOLD_ROW = 55_000
ROW_GROUP_ROWS = 10_000  # so Parquet has written row groups (and parts) by then too
FORMATS = [Format.PARQUET, Format.CSV, Format.JSONL, Format.JSON]


def _dbname(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


def _source(dsn: str, **kwargs: Any) -> PostgresSourceResource:
    return PostgresSourceResource(dsn=dsn, parquet_row_group_rows=ROW_GROUP_ROWS, **kwargs)


def _key(name: str, fmt: Format) -> str:
    return f"exports/{CUSTOMER}/{MONTH}/{name}{extension(fmt, Compression.NONE)}"


def _uploaded_parts(s3_client: Any, bucket: str) -> int:
    uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sum(
        len(
            s3_client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get(
                "Parts", []
            )
        )
        for u in uploads
    )


def _retry_sees_a_new_snapshot(
    instance: dg.DagsterInstance,
    spec: str,
    name: str,
    fmt: Format,
    dsn: str,
    s3: tuple[str, str, Any],
) -> None:
    endpoint, bucket, s3_client = s3
    with psycopg.connect(dsn, autocommit=True) as conn:  # committed after the failure
        conn.execute(
            "INSERT INTO events SELECT g, 1, date '2025-03-15', 'late'"
            " FROM generate_series(%s::int, %s::int) AS g",
            (ROWS + 1, ROWS + 5),
        )
    retried = run_export(instance, spec, name, _source(dsn), endpoint, bucket)
    assert retried.success, retried.error
    key = _key(name, fmt)
    first = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    rows = file_rows(fmt, first)
    assert len(rows) == retried.row_count == ROWS + 5
    assert sum(1 for r in rows if r["pad"] == "late") == 5
    again = run_export(instance, spec, name, _source(dsn), endpoint, bucket)
    assert again.success, again.error
    second = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(second).digest() == hashlib.sha256(first).digest()
    assert list_keys(s3_client, bucket) == [key]
    assert pending_uploads(s3_client, bucket) == []


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_backend_terminated_mid_stream(
    fmt: Format, scratch_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    create_events(scratch_dsn, ROWS)
    name, lock_key = "held", new_lock_key()
    spec = spec_yaml({name: fmt}, HOLD_ROW, lock_key)
    terminated_at: list[float] = []
    problems: list[BaseException] = []

    def terminate_when_held(admin: psycopg.Connection) -> None:
        try:
            wait_until(
                "the export to hold mid-stream with parts uploaded",
                120,
                lambda: (
                    export_backends(admin, _dbname(scratch_dsn), waiting=True)
                    and _uploaded_parts(s3_client, bucket) > 0
                ),
            )
            [pid] = export_backends(admin, _dbname(scratch_dsn), waiting=True)
            terminated_at.append(time.monotonic())
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except BaseException as exc:
            problems.append(exc)
            for pid in export_backends(admin, _dbname(scratch_dsn)):  # unblock the run
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with (
        dg.instance_for_test() as instance,
        hold(scratch_dsn, lock_key) as held,
        psycopg.connect(scratch_dsn, autocommit=True) as admin,
    ):
        killer = threading.Thread(target=terminate_when_held, args=(admin,))
        killer.start()
        outcome = run_export(instance, spec, name, _source(scratch_dsn), s3_endpoint, bucket)
        ended_at = time.monotonic()
        killer.join()
        assert not problems, problems
        held.release()
        assert not outcome.success
        assert ended_at - terminated_at[0] < 10, "the export did not fail fast"
        assert f"exports/{name} {PARTITION}" in outcome.error
        assert "terminating connection due to administrator command" in outcome.error
        assert "(transient, may be retried)" in outcome.error
        assert list_keys(s3_client, bucket) == []
        assert pending_uploads(s3_client, bucket) == []
        assert export_backends(admin, _dbname(scratch_dsn)) == []
        _retry_sees_a_new_snapshot(
            instance, spec, name, fmt, scratch_dsn, (s3_endpoint, bucket, s3_client)
        )


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_statement_timeout_fires(
    fmt: Format, scratch_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    create_events(scratch_dsn, ROWS)
    name, lock_key = "held", new_lock_key()
    spec = spec_yaml({name: fmt}, HOLD_ROW, lock_key)
    timeout = 3
    with (
        dg.instance_for_test() as instance,
        hold(scratch_dsn, lock_key) as held,
        psycopg.connect(scratch_dsn, autocommit=True) as admin,
    ):
        started = time.monotonic()
        source = _source(scratch_dsn, statement_timeout_seconds=timeout)
        outcome = run_export(instance, spec, name, source, s3_endpoint, bucket)
        elapsed = time.monotonic() - started
        held.release()
        assert not outcome.success
        assert elapsed < timeout + 15, f"the export took {elapsed:.1f}s to fail"
        assert f"exports/{name} {PARTITION}" in outcome.error
        assert "canceling statement due to statement timeout" in outcome.error
        assert "(permanent, not retried)" in outcome.error
        assert list_keys(s3_client, bucket) == []
        assert pending_uploads(s3_client, bucket) == []
        assert export_backends(admin, _dbname(scratch_dsn)) == []
        _retry_sees_a_new_snapshot(
            instance, spec, name, fmt, scratch_dsn, (s3_endpoint, bucket, s3_client)
        )
