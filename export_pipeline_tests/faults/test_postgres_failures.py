"""PostgreSQL failing under a running export (issue 8, item 4): the export's backend is
terminated mid-stream (`pg_terminate_backend`), or `statement_timeout` fires while the export
is held. Real runs of the export asset (in this process), real PostgreSQL, S3 over HTTP.

For every format:
- a dropped connection (SQLSTATE 57P01) is transient: with the asset's RetryPolicy the export
  IO manager retries the partition in place, at once (the policy's delay), naming the
  partition and the error in the run's log; the run succeeds on a new snapshot (rows committed
  while the first try was held are in the file) and on new connections of the run's session;
- a statement timeout (57014) is permanent: the run fails within the timeout plus seconds,
  without a retry in place or of the step, and the failure names the asset, the
  customer|month partition and the error, with a row marked not transient;
- either way nothing of a failed try is left: no multipart upload (one was open, with parts)
  and nothing under the final key but the file of a try that succeeded;
- a later run on the unchanged source writes a byte-identical file.
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
from export_pipeline.spec import Compression, Format
from export_pipeline_tests.faults.runs import RunOutcome, file_rows, run_export
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
from export_pipeline_tests.harness import FAST_RETRY, fresh_instance
from export_pipeline_tests.helpers import list_keys, pending_uploads

pytestmark = (
    pytest.mark.slow
)  # fault injection, with its timeouts and back-offs: not the inner loop

ROWS = 60_000
# About 10 MB of rows are out when the export holds (ADBC hands over whole batches of about
# 2 MiB, so Parquet has written a little less): more than one 5 MiB part in every format.
HOLD_ROW = 55_000
ROW_GROUP_ROWS = 10_000  # so Parquet has written row groups (and parts) by then too
LATE_ROWS = 5
FORMATS = [Format.PARQUET, Format.CSV, Format.JSONL, Format.JSON]


def _dbname(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


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


def _add_late_rows(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events SELECT g, 1, date '2025-03-15', 'late'"
            " FROM generate_series(%s::int, %s::int) AS g",
            (ROWS + 1, ROWS + LATE_ROWS),
        )


def _has_the_late_rows(outcome: RunOutcome, fmt: Format, data: bytes) -> None:
    rows = file_rows(fmt, data)
    assert len(rows) == outcome.row_count == ROWS + LATE_ROWS
    assert sum(1 for r in rows if r["pad"] == "late") == LATE_ROWS


def _again_byte_identical(
    instance: dg.DagsterInstance,
    spec: str,
    name: str,
    fmt: Format,
    dsn: str,
    s3: tuple[str, str, Any],
    first: bytes,
) -> None:
    """One more run on the unchanged source writes the same bytes, and only them."""
    endpoint, bucket, s3_client = s3
    again = run_export(instance, spec, name, dsn, endpoint, bucket)
    assert again.success, again.error
    key = _key(name, fmt)
    second = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(second).digest() == hashlib.sha256(first).digest()
    assert list_keys(s3_client, bucket) == [key]
    assert pending_uploads(s3_client, bucket) == []


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_backend_terminated_mid_stream_is_retried_in_place(
    fmt: Format, scratch_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    create_events(scratch_dsn, ROWS)
    name, lock_key = "held", new_lock_key()
    spec = spec_yaml({name: fmt}, HOLD_ROW, lock_key, row_group_rows=ROW_GROUP_ROWS)
    terminated_at: list[float] = []
    problems: list[BaseException] = []

    with (
        fresh_instance() as instance,
        hold(scratch_dsn, lock_key) as held,
        psycopg.connect(scratch_dsn, autocommit=True) as admin,
    ):

        def terminate_when_held() -> None:
            """Rows committed while the export is held (not in its snapshot), then its
            backend terminated, then the hold released (the retry may wait on it)."""
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
                _add_late_rows(scratch_dsn)
                terminated_at.append(time.time())
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            except BaseException as exc:
                problems.append(exc)
            finally:
                held.release()

        killer = threading.Thread(target=terminate_when_held)
        killer.start()
        outcome = run_export(
            instance,
            spec,
            name,
            scratch_dsn,
            s3_endpoint,
            bucket,
            retry_policy=FAST_RETRY,
        )
        killer.join()
        assert not problems, problems
        assert outcome.success, outcome.error
        [(retried_at, retry)] = [
            (at, w) for at, w in outcome.warnings if w.startswith(f"{name} {PARTITION}:")
        ]
        assert "terminating connection due to administrator command" in retry
        assert f"try 2 of {FAST_RETRY.max_retries + 1}" in retry
        assert retried_at - terminated_at[0] < 10, "the failure was not taken at once"
        assert outcome.retried_steps == 0  # retried in place, not by Dagster
        key = _key(name, fmt)
        first = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        _has_the_late_rows(outcome, fmt, first)  # the retry read a new snapshot
        assert list_keys(s3_client, bucket) == [key]
        assert pending_uploads(s3_client, bucket) == []  # the first try's upload was aborted
        assert export_backends(admin, _dbname(scratch_dsn)) == []  # the session is closed
        _again_byte_identical(
            instance, spec, name, fmt, scratch_dsn, (s3_endpoint, bucket, s3_client), first
        )


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.value)
def test_statement_timeout_fails_at_once(
    fmt: Format, scratch_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    create_events(scratch_dsn, ROWS)
    name, lock_key = "held", new_lock_key()
    spec = spec_yaml({name: fmt}, HOLD_ROW, lock_key, row_group_rows=ROW_GROUP_ROWS)
    timeout = 1  # the export holds at a row far longer: the COPY always reaches it
    with (
        fresh_instance() as instance,
        hold(scratch_dsn, lock_key) as held,
        psycopg.connect(scratch_dsn, autocommit=True) as admin,
    ):
        started = time.monotonic()
        outcome = run_export(
            instance,
            spec,
            name,
            scratch_dsn,
            s3_endpoint,
            bucket,
            retry_policy=FAST_RETRY,  # permanent: neither retried in place nor by Dagster
            statement_timeout_seconds=timeout,
        )
        elapsed = time.monotonic() - started
        held.release()
        assert not outcome.success
        assert elapsed < timeout + 15, f"the export took {elapsed:.1f}s to fail"
        assert f"exports/{name}" in outcome.error and PARTITION in outcome.error
        assert "canceling statement due to statement timeout" in outcome.error
        [row] = outcome.failed_partitions
        assert row["partition"] == PARTITION and row["dataset"] == name
        assert "canceling statement due to statement timeout" in row["error"]
        assert row["transient"] is False and row["attempts"] == 1
        assert outcome.retried_steps == 0
        assert not [w for _, w in outcome.warnings if "try 2 of" in w]
        assert list_keys(s3_client, bucket) == []
        assert pending_uploads(s3_client, bucket) == []
        assert export_backends(admin, _dbname(scratch_dsn)) == []

        # Once the hold is gone, a new run succeeds on a new snapshot.
        _add_late_rows(scratch_dsn)
        retried = run_export(
            instance,
            spec,
            name,
            scratch_dsn,
            s3_endpoint,
            bucket,
        )
        assert retried.success, retried.error
        first = s3_client.get_object(Bucket=bucket, Key=_key(name, fmt))["Body"].read()
        _has_the_late_rows(retried, fmt, first)
        _again_byte_identical(
            instance, spec, name, fmt, scratch_dsn, (s3_endpoint, bucket, s3_client), first
        )
