"""The engine against a real PostgreSQL and a real S3-protocol server."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from export_pipeline.engine import list_customers
from export_pipeline.errors import ExportError
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.extract.query import QueryError
from export_pipeline.partitions import Month, PartitionKeyError
from export_pipeline.spec import (
    Compression,
    CustomersSpec,
    DatasetSpec,
    ExportSpec,
    Format,
    Relation,
)
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import S3ObjectStore
from export_pipeline_tests.harness import export_one
from export_pipeline_tests.helpers import files_under, list_keys, pending_uploads
from export_pipeline_tests.roundtrip import normalize, read_export, source_rows

# The server's version matters here (each type's text output): CI runs these again on a second
# PostgreSQL (.ci/run).
pytestmark = pytest.mark.server_version

MARCH = Month(2025, 3)
EVENTS = DatasetSpec(
    "events",
    "customer_id",
    Format.PARQUET,
    Compression.ZSTD,
    table=Relation(("public", "events")),
    time_column="occurred_at",
)
VARIANTS = [
    (Format.PARQUET, Compression.ZSTD),
    (Format.PARQUET, Compression.NONE),
    (Format.CSV, Compression.NONE),
    (Format.CSV, Compression.GZIP),
    (Format.JSONL, Compression.NONE),
    (Format.JSONL, Compression.ZSTD),
    (Format.JSON, Compression.NONE),
    (Format.JSON, Compression.GZIP),
]


def _events(fmt: Format, comp: Compression) -> DatasetSpec:
    return dataclasses.replace(EVENTS, format=fmt, compression=comp)


@pytest.mark.parametrize(("fmt", "comp"), VARIANTS)
def test_round_trip_matches_source(
    demo_source: SourceConfig,
    demo_dsn: str,
    s3_store: S3ObjectStore,
    s3_client: Any,
    bucket: str,
    fmt: Format,
    comp: Compression,
) -> None:
    dataset = _events(fmt, comp)
    result = export_one(demo_source, s3_store, dataset, "2", MARCH)
    body = s3_client.get_object(Bucket=bucket, Key=result.stored.key)["Body"].read()

    names, expected = source_rows(demo_dsn, dataset, "2", MARCH)
    got_names, got = read_export(body, fmt, comp)
    assert got_names == names
    assert len(expected) > 100
    assert result.rows == len(got) == len(expected)
    got_sorted = sorted(got, key=lambda r: int(r[0]))
    for got_row, exp_row in zip(got_sorted, expected, strict=True):
        if fmt is Format.CSV:
            continue  # text rendering is checked against PostgreSQL's own output elsewhere
        assert tuple(normalize(a, e) for a, e in zip(got_row, exp_row, strict=True)) == exp_row
    assert result.stored.sha256 == hashlib.sha256(body).hexdigest()
    assert result.stored.size_bytes == len(body)


def test_csv_is_postgres_text_output(
    demo_source: SourceConfig, demo_dsn: str, local_store: LocalObjectStore
) -> None:
    from export_pipeline_tests.roundtrip import source_text_rows

    dataset = _events(Format.CSV, Compression.NONE)
    result = export_one(demo_source, local_store, dataset, "4", MARCH)
    names, rows = read_export(Path(result.stored.uri).read_bytes(), Format.CSV, Compression.NONE)
    assert names == [c.name for c in result.columns]
    assert sorted(rows, key=lambda r: int(r[0])) == source_text_rows(demo_dsn, dataset, "4", MARCH)


def test_metadata_facts_match_the_file(
    demo_source: SourceConfig, local_store: LocalObjectStore
) -> None:
    result = export_one(demo_source, local_store, EVENTS, "1", MARCH)
    path = Path(result.stored.uri)
    assert path == local_store.root / "exports/1/2025-03/events.parquet"
    assert result.stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.rows == pq.ParquetFile(path).metadata.num_rows
    assert [c.pg_type for c in result.columns] == [
        "int8",
        "int4",
        "timestamptz",
        "text",
        "numeric(12,2)",
        "jsonb",
        "text[]",
        "uuid",
        "bool",
    ]
    assert result.link is None
    assert files_under(local_store.root) == ["exports/1/2025-03/events.parquet"]


def test_download_link_returns_the_exact_bytes(
    demo_source: SourceConfig, s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    result = export_one(demo_source, s3_store, _events(Format.CSV, Compression.GZIP), "3", MARCH)
    assert result.link is not None
    with urllib.request.urlopen(result.link.url) as response:
        body = response.read()
        assert response.headers["Content-Type"] == "application/gzip"
    assert hashlib.sha256(body).hexdigest() == result.stored.sha256
    assert list_keys(s3_client, bucket) == ["exports/3/2025-03/events.csv.gz"]


@pytest.mark.parametrize(("fmt", "comp"), VARIANTS)
def test_empty_month_gives_a_valid_empty_file(
    demo_source: SourceConfig, local_store: LocalObjectStore, fmt: Format, comp: Compression
) -> None:
    result = export_one(demo_source, local_store, _events(fmt, comp), "1", Month(2030, 1))
    data = Path(result.stored.uri).read_bytes()
    names, rows = read_export(data, fmt, comp)
    assert result.rows == 0 and rows == []
    if fmt in (Format.PARQUET, Format.CSV):
        assert names == [c.name for c in result.columns]
    if fmt is Format.PARQUET:
        assert pq.read_schema(Path(result.stored.uri)).names == names


@pytest.mark.parametrize("customer", ["1", "2", "5"])
def test_customers_never_see_each_others_rows(
    demo_source: SourceConfig, demo_dsn: str, local_store: LocalObjectStore, customer: str
) -> None:
    # The SQL forgets to filter by customer: the engine's outer filter must still isolate.
    careless = DatasetSpec(
        "careless",
        "customer_id",
        Format.PARQUET,
        Compression.ZSTD,
        sql="SELECT * FROM public.events WHERE occurred_at >= %(month_start)s "
        "AND occurred_at < %(month_end)s",
    )
    for dataset in (EVENTS, careless):
        result = export_one(demo_source, local_store, dataset, customer, MARCH)
        table = pq.read_table(result.stored.uri)
        assert set(table.column("customer_id").to_pylist()) == {int(customer)}
        with psycopg.connect(demo_dsn) as conn:
            count = conn.execute(
                "SELECT count(*) FROM events WHERE customer_id = %s AND occurred_at >= "
                "'2025-03-01T00:00:00Z' AND occurred_at < '2025-04-01T00:00:00Z'",
                (int(customer),),
            ).fetchone()
        assert count is not None and table.num_rows == count[0] > 0


@pytest.fixture
def boom_source(scratch_dsn: str) -> SourceConfig:
    """A table whose query fails after ~12 MB have been streamed (division by zero)."""
    with psycopg.connect(scratch_dsn) as conn:
        conn.execute(
            "CREATE TABLE boom AS SELECT 1 AS customer_id, i AS n, repeat(md5(i::text), 250) AS pad"
            " FROM generate_series(1, 2000) AS i"
        )
    return SourceConfig(scratch_dsn)


BOOM_SQL = "SELECT customer_id, n, pad, 1 / (1500 - n) AS x FROM boom ORDER BY n"


@pytest.mark.parametrize("fmt", list(Format))
def test_failure_mid_stream_leaves_no_object_in_s3(
    boom_source: SourceConfig,
    s3_store: S3ObjectStore,
    s3_client: Any,
    bucket: str,
    fmt: Format,
) -> None:
    dataset = DatasetSpec("boom", "customer_id", fmt, Compression.NONE, sql=BOOM_SQL)
    with pytest.raises(ExportError, match="division by zero"):
        export_one(boom_source, s3_store, dataset, "1", MARCH)
    assert list_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == []
    # The read-ahead thread was stopped before its connection closed, not left behind.
    assert not [t for t in threading.enumerate() if t.name in ("prefetch", "s3-part_0")]


@pytest.mark.parametrize("fmt", [Format.PARQUET, Format.CSV])
def test_failure_mid_stream_leaves_no_local_file(
    boom_source: SourceConfig, local_store: LocalObjectStore, fmt: Format
) -> None:
    dataset = DatasetSpec("boom", "customer_id", fmt, Compression.NONE, sql=BOOM_SQL)
    with pytest.raises(ExportError, match="division by zero"):
        export_one(boom_source, local_store, dataset, "1", MARCH)
    assert files_under(local_store.root) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT customer_id, n, n FROM boom", "duplicate output column name"),
        ("SELECT customer_id, n + 1 FROM boom", "have no name"),
        ("SELECT customer_id FROM no_such_table", 'relation "no_such_table" does not exist'),
    ],
)
def test_bad_queries_fail_before_writing(
    boom_source: SourceConfig, local_store: LocalObjectStore, query: str, message: str
) -> None:
    dataset = DatasetSpec("bad", "customer_id", Format.CSV, Compression.NONE, sql=query)
    with pytest.raises(QueryError, match=message):
        export_one(boom_source, local_store, dataset, "1", MARCH)
    assert not local_store.root.exists() or files_under(local_store.root) == []


def test_hostile_customer_key_is_rejected_before_any_query(
    local_store: LocalObjectStore,
) -> None:
    unreachable = SourceConfig("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(PartitionKeyError):
        export_one(unreachable, local_store, EVENTS, "../../etc", MARCH)


def test_source_session_is_read_only(demo_source: SourceConfig) -> None:
    from export_pipeline.extract.connection import connect

    with connect(demo_source) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("CREATE TABLE should_fail (x int)")


def test_connection_errors_do_not_leak_the_password(local_store: LocalObjectStore) -> None:
    source = SourceConfig("postgresql://exporter:s3cr3t-pw@127.0.0.1:1/none")
    with pytest.raises(ExportError) as info:
        export_one(source, local_store, EVENTS, "1", MARCH)
    assert "s3cr3t-pw" not in str(info.value)
    assert "cannot connect to the source database" in str(info.value)
    assert "s3cr3t-pw" not in repr(source)


def test_list_customers(demo_source: SourceConfig, demo_spec: ExportSpec) -> None:
    assert list_customers(demo_source, demo_spec.customers) == ["1", "2", "3", "4", "5"]
    odd = CustomersSpec("id", sql="SELECT id FROM public.customers WHERE id %% 2 = 1")
    assert list_customers(demo_source, odd) == ["1", "3", "5"]


def test_writer_failure_stops_the_read_ahead_thread(
    scratch_dsn: str, local_store: LocalObjectStore
) -> None:
    """A value the Parquet writer rejects mid-stream, while the reader thread is still busy."""
    with psycopg.connect(scratch_dsn) as conn:
        conn.execute(
            "CREATE TABLE nan_late AS SELECT 1 AS customer_id, i AS n,"
            " CASE WHEN i = 1500 THEN 'NaN'::numeric ELSE i END::numeric(12,2) AS amount,"
            " repeat(md5(i::text), 250) AS pad FROM generate_series(1, 4000) AS i"
        )
    dataset = DatasetSpec(
        "nan_late",
        "customer_id",
        Format.PARQUET,
        Compression.ZSTD,
        sql="SELECT * FROM nan_late ORDER BY n",
    )
    with pytest.raises(ExportError, match=r"column 'amount' \(numeric\(12,2\)\): value NaN"):
        export_one(SourceConfig(scratch_dsn), local_store, dataset, "1", MARCH)
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]
    assert files_under(local_store.root) == []
