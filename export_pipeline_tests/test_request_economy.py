"""What a ranged run costs in S3 requests and new source sessions, pinned (issue 16).

Latency multiplies requests, not CPU: at 25 ms a request, every request per partition is 25 ms
per partition, one after another. A ranged run of `exports_job` (3 datasets, their checks and
the manifests) goes through a SigV4-checking proxy that counts every request by operation, on
the demo database, whose `pg_stat_database.sessions` counts every new backend. Two runs of
different sizes separate what a run pays once from what each partition pays; the exact counts
are asserted, so a change that adds a request (or a session) per partition fails here.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from export_pipeline.spec import ExportSpec, Format
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    materialize,
    s3_storage,
)
from export_pipeline_tests.request_counts import S3Requests, counting_s3_endpoint

DATASETS = 3


@pytest.fixture
def counted(moto_url: str) -> Iterator[tuple[str, S3Requests, str]]:
    with counting_s3_endpoint(moto_url) as (url, requests):
        bucket = f"economy-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=bucket)
        yield url, requests, bucket


def _sessions(dsn: str) -> int:
    """New backends the server has started for this database so far (PostgreSQL 14+)."""
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    assert row is not None
    return int(row[0])  # this connection included


def _run(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    first: str,
    last: str,
    dsn: str,
    requests: S3Requests,
) -> tuple[Counter[str], int]:
    before, sessions = requests.counts(), _sessions(dsn)
    result = materialize(instance, defs, (first, last))
    assert result.success
    counts = requests.counts()
    counts.subtract(before)
    return +counts, _sessions(dsn) - sessions - 1  # not the second probe


def test_requests_and_sessions_per_partition(
    demo_dsn: str, demo_spec: ExportSpec, counted: tuple[str, S3Requests, str], tmp_path: Path
) -> None:
    url, requests, bucket = counted
    parquet = sum(d.format is Format.PARQUET for d in demo_spec.datasets.values())
    assert len(demo_spec.datasets) == DATASETS and parquet == 1
    resources = export_resources(demo_dsn, s3_storage(url, bucket))
    defs = export_definitions(demo_spec, resources)
    with fresh_instance(temp_dir=str(tmp_path)) as instance:
        add_customers(instance, ["1", "2", "3", "4", "5"])
        runs = {
            n: _run(instance, defs, f"1|2025-0{m}-01", f"{n}|2025-0{m}-01", demo_dsn, requests)
            for n, m in ((2, 3), (5, 4))
        }
    for customers, (counts, sessions) in runs.items():
        assert counts == Counter(
            {
                # the files: one PUT each (small); manifest.json and _SUCCESS per customer-month
                "PutObject": DATASETS * customers + 2 * customers,
                # the checks look at every stored object once: a HEAD, or for Parquet one
                # ranged GET that gives the size and the footer
                "HeadObject": (DATASETS - parquet) * customers,
                "GetObject": parquet * customers,
                # once per run: the withdrawal of the range's manifests (2 batched deletes)
                "DeleteObjects": 2,
                # once per step that writes: orphaned uploads under the range's keys
                "ListMultipartUploads": DATASETS + 1,
            }
        ), (customers, counts)
        # for the whole run, however many partitions: one psycopg backend and ADBC's two (its
        # database handle reads the type catalog on a backend of its own)
        assert sessions == 3, (customers, sessions)
    (small, _), (large, _) = runs[2], runs[5]
    per_partition = (sum(large.values()) - sum(small.values())) / (DATASETS * (5 - 2))
    assert per_partition <= 3.0
