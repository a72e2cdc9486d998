"""Parquet row groups sized for readers: batches gathered to the target, statistics, page index.

The ADBC batch hint is set small here so that every export arrives in many batches, as a
large one does in production with the default 4 MiB hint.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_pipeline.engine import EngineTuning
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.formats.parquet import DEFAULT_ROW_GROUP_ROWS, write_parquet
from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, DatasetSpec, Format, Relation
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline_tests.harness import export_one
from export_pipeline_tests.services import scratch_database

MARCH = Month(2025, 3)
ROWS = 5_000
SMALL_BATCHES = 16 * 1024  # bytes asked of the driver: a few hundred rows a batch
DATASET = DatasetSpec(
    "wide",
    "customer_id",
    Format.PARQUET,
    Compression.ZSTD,
    table=Relation(("public", "wide")),
    time_column="occurred_at",
)


@pytest.fixture(scope="module")
def wide_source(pg_server: str) -> Iterator[SourceConfig]:
    with scratch_database(pg_server, "rowgroups") as dsn:
        with psycopg.connect(dsn) as conn:
            conn.execute(
                f"""
                CREATE TABLE wide AS
                SELECT g::bigint AS id, 1 AS customer_id,
                       timestamptz '2025-03-01 00:00+00' + g * interval '8 minutes' AS occurred_at,
                       repeat(md5(g::text), 2) AS note,
                       (g * 1.25)::numeric(12, 2) AS amount,
                       ARRAY[g::text, 'x'] AS tags,
                       CASE WHEN mod(g, 7) = 0 THEN NULL ELSE mod(g, 100) END AS maybe
                FROM generate_series(1, {ROWS}) AS g
                """
            )
        yield SourceConfig(dsn, statement_timeout_seconds=60)


def _export(source: SourceConfig, root: Path, tuning: EngineTuning) -> pq.FileMetaData:
    result = export_one(source, LocalObjectStore(root), DATASET, "1", MARCH, tuning)
    assert result.rows == ROWS
    meta = pq.ParquetFile(result.stored.uri).metadata
    assert meta.num_rows == ROWS
    return meta


def _group_rows(meta: pq.FileMetaData) -> list[int]:
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _assert_statistics_and_page_index(meta: pq.FileMetaData) -> None:
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            column = group.column(j)
            assert column.is_stats_set, (i, column.path_in_schema)
            assert column.statistics.has_null_count, (i, column.path_in_schema)
            assert column.has_column_index, (i, column.path_in_schema)
            assert column.has_offset_index, (i, column.path_in_schema)
        # min/max on the columns readers filter by
        by_name = {
            group.column(j).path_in_schema: group.column(j) for j in range(group.num_columns)
        }
        for name in ("id", "occurred_at", "amount", "note"):
            assert by_name[name].statistics.has_min_max, (i, name)


def test_default_target_makes_one_row_group_of_a_small_export(
    wide_source: SourceConfig, tmp_path: Path
) -> None:
    meta = _export(wide_source, tmp_path, EngineTuning(batch_size_hint_bytes=SMALL_BATCHES))
    assert _group_rows(meta) == [ROWS]
    _assert_statistics_and_page_index(meta)
    group = meta.row_group(0)
    encodings = {group.column(j).path_in_schema: group.column(j) for j in range(group.num_columns)}
    # a low-cardinality column keeps its dictionary under the smaller dictionary page limit
    assert encodings["customer_id"].has_dictionary_page


def test_row_groups_hold_the_target_rows(wide_source: SourceConfig, tmp_path: Path) -> None:
    tuning = EngineTuning(batch_size_hint_bytes=SMALL_BATCHES, parquet_row_group_rows=1_200)
    meta = _export(wide_source, tmp_path, tuning)
    assert _group_rows(meta) == [1_200, 1_200, 1_200, 1_200, 200]
    _assert_statistics_and_page_index(meta)


def test_byte_target_closes_row_groups_first(wide_source: SourceConfig, tmp_path: Path) -> None:
    tuning = EngineTuning(batch_size_hint_bytes=SMALL_BATCHES, parquet_row_group_bytes=100_000)
    sizes = _group_rows(_export(wide_source, tmp_path, tuning))
    assert len(sizes) > 2
    assert all(size < DEFAULT_ROW_GROUP_ROWS for size in sizes)
    assert sum(sizes) == ROWS


def _batches(count: int, rows: int) -> list[pa.RecordBatch]:
    return [
        pa.record_batch({"id": pa.array(range(i * rows, (i + 1) * rows), pa.int64())})
        for i in range(count)
    ]


def _written(batches: list[pa.RecordBatch], **target: int) -> list[int]:
    sink = io.BytesIO()
    rows = write_parquet(batches[0].schema, batches, sink, Compression.NONE, "unit", None, **target)
    assert rows == sum(b.num_rows for b in batches)
    meta = pq.ParquetFile(io.BytesIO(sink.getvalue())).metadata
    table = pq.read_table(io.BytesIO(sink.getvalue()))
    assert table.column("id").to_pylist() == list(range(rows))  # order and values kept
    return _group_rows(meta)


def test_rows_target_splits_batches_exactly() -> None:
    assert _written(_batches(10, 100), row_group_rows=350) == [350, 350, 300]
    assert _written(_batches(3, 100), row_group_rows=50) == [50] * 6
    assert _written(_batches(3, 100), row_group_rows=1_000) == [300]


def test_bytes_target_closes_at_a_batch_boundary() -> None:
    batches = _batches(10, 100)  # 800 bytes of int64 each
    assert _written(batches, row_group_bytes=2_000) == [300, 300, 300, 100]
    assert _written(batches, row_group_bytes=1) == [100] * 10  # the old one group per batch


def test_empty_batches_and_no_rows() -> None:
    empty = pa.record_batch({"id": pa.array([], pa.int64())})
    assert _written([empty, *_batches(2, 100), empty], row_group_rows=150) == [150, 50]
    sink = io.BytesIO()
    assert write_parquet(empty.schema, [empty], sink, Compression.NONE, "unit") == 0
    assert pq.read_table(io.BytesIO(sink.getvalue())).num_rows == 0


def test_a_target_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        _written(_batches(1, 10), row_group_rows=0)
