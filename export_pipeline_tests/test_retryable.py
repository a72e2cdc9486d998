"""Transient or permanent: classified from real errors of a real PostgreSQL and S3 endpoint."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from export_pipeline.extract.connection import SourceConfig, SourceConnectionError, connect
from export_pipeline.extract.query import QueryError
from export_pipeline.partitions import PartitionKeyError, validate_customer_key
from export_pipeline.retryable import is_transient
from export_pipeline_tests.sigv4_proxy import Faults


def _pg_error(dsn: str, statement: str) -> psycopg.Error:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            return exc
    raise AssertionError(f"{statement!r} did not fail")


@pytest.mark.parametrize(
    ("statement", "transient"),
    [
        ("SELECT pg_terminate_backend(pg_backend_pid())", True),  # 57P01, connection dropped
        ("DO $$ BEGIN RAISE EXCEPTION 'replica' USING ERRCODE = '40001'; END $$", True),
        ("DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; END $$", True),
        ("SELECT * FROM no_such_table", False),  # 42P01
        ("DO $$ BEGIN RAISE EXCEPTION 'no' USING ERRCODE = '42501'; END $$", False),
        ("SET statement_timeout = 1; SELECT pg_sleep(1)", False),  # 57014: would time out again
    ],
)
def test_postgres_errors(scratch_dsn: str, statement: str, transient: bool) -> None:
    error = _pg_error(scratch_dsn, statement)
    assert is_transient(error) is transient
    wrapped = QueryError("dataset 'x': export query failed")
    wrapped.__cause__ = error  # as `raise QueryError(...) from exc` chains it
    assert is_transient(wrapped) is transient


def test_connection_refused_is_transient_but_a_bad_login_is_not(pg_server: str) -> None:
    with pytest.raises(SourceConnectionError) as refused:
        with connect(SourceConfig("postgresql://u@127.0.0.1:1/x", connect_timeout_seconds=2)):
            pass
    assert is_transient(refused.value)
    bad_user = psycopg.conninfo.make_conninfo(pg_server, user=f"nobody_{uuid.uuid4().hex[:6]}")
    with pytest.raises(SourceConnectionError) as login:
        with connect(SourceConfig(bad_user)):
            pass
    assert not is_transient(login.value)


def test_bad_input_is_permanent() -> None:
    with pytest.raises(PartitionKeyError) as info:
        validate_customer_key("../etc")
    assert not is_transient(info.value)


def _client(endpoint: str) -> Any:
    config = Config(signature_version="s3v4", retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, config=config)


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [(503, "SlowDown", True), (500, "InternalError", True), (403, "AccessDenied", False)],
)
def test_s3_errors(
    s3_faults: tuple[str, Faults], bucket: str, status: int, code: str, transient: bool
) -> None:
    endpoint, faults = s3_faults
    faults.fail_next("PUT", f"/{bucket}/k", 1, status, code)
    with pytest.raises(ClientError) as info:
        _client(endpoint).put_object(Bucket=bucket, Key="k", Body=b"x")
    assert info.value.response["Error"]["Code"] == code
    assert is_transient(info.value) is transient


def test_missing_bucket_is_permanent(s3_endpoint: str) -> None:
    with pytest.raises(ClientError) as info:
        _client(s3_endpoint).put_object(Bucket=f"nope-{uuid.uuid4().hex[:8]}", Key="k", Body=b"")
    assert not is_transient(info.value)
