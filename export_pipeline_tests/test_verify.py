"""The pure comparisons behind the export checks, on real files."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.files import StoredFile
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.verify import (
    footer_row_count,
    schema_diff,
    verify_not_empty_after_rows,
    verify_row_count,
    verify_schema_unchanged,
)

KEY = "exports/7/2025-03/events.parquet"


def _stored(store: LocalObjectStore, rows: int, recorded_rows: int) -> StoredFile:
    path = store.path(KEY)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": list(range(rows))}), path, row_group_size=100)
    data = path.read_bytes()
    return StoredFile(
        store=store,
        key=KEY,
        uri=store.uri(KEY),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        row_count=recorded_rows,
        format=Format.PARQUET,
        compression=Compression.NONE,
    )


def test_previous_month_crosses_the_year() -> None:
    assert Month(2026, 1).previous() == Month(2025, 12)
    assert Month(2025, 7).previous() == Month(2025, 6)
    assert Month(2025, 12).next() == Month(2026, 1)


def test_row_count_from_the_footer_matches_the_record(local_store: LocalObjectStore) -> None:
    stored = _stored(local_store, rows=1234, recorded_rows=1234)
    assert footer_row_count(stored) == 1234
    verdict = verify_row_count(stored)
    assert verdict.passed
    assert verdict.metadata == {"checked": True, "recorded_rows": 1234, "footer_rows": 1234}


def test_row_count_disagreeing_with_the_footer_fails(local_store: LocalObjectStore) -> None:
    stored = _stored(local_store, rows=1234, recorded_rows=1235)
    verdict = verify_row_count(stored)
    assert not verdict.passed
    assert verdict.description.startswith(f"{stored.uri}: the Parquet footer says 1234 rows")
    assert "recorded 1235" in verdict.description


def test_unreadable_footer_fails_with_the_uri(local_store: LocalObjectStore) -> None:
    stored = _stored(local_store, rows=10, recorded_rows=10)
    path = local_store.path(KEY)
    path.write_bytes(b"\0" * stored.size_bytes)  # same size, not Parquet
    verdict = verify_row_count(stored)
    assert not verdict.passed
    assert verdict.description.startswith(f"{stored.uri}: the Parquet footer cannot be read")


def test_text_formats_are_not_counted_and_say_so(local_store: LocalObjectStore) -> None:
    stored = StoredFile(
        local_store, "k", "/x/orders.jsonl", 10, "0" * 64, 5, Format.JSONL, Compression.NONE
    )
    verdict = verify_row_count(stored)  # reads nothing: the object does not even exist
    assert verdict.passed
    assert verdict.metadata["checked"] is False
    assert "not verified for jsonl" in verdict.description


def test_empty_month_after_rows_fails() -> None:
    verdict = verify_not_empty_after_rows(0, 17, Month(2025, 12))
    assert not verdict.passed
    assert verdict.description == "no rows this month, 17 in 2025-12"
    assert verdict.metadata == {"rows": 0, "previous_rows": 17, "previous_month": "2025-12"}


def test_empty_month_is_fine_after_an_empty_or_missing_month() -> None:
    assert verify_not_empty_after_rows(0, 0, Month(2025, 12)).passed
    assert verify_not_empty_after_rows(3, 17, Month(2025, 12)).passed
    missing = verify_not_empty_after_rows(0, None, Month(2024, 12))
    assert missing.passed and "2024-12 was not exported" in missing.description


def test_schema_diff_names_added_removed_changed_and_order() -> None:
    before = [("id", "int8"), ("amount", "numeric"), ("note", "text"), ("at", "timestamptz")]
    after = [("id", "int8"), ("at", "timestamptz"), ("amount", "text"), ("tag", "varchar")]
    diff = schema_diff(before, after)
    assert diff.added == ["tag varchar"]
    assert diff.removed == ["note text"]
    assert diff.changed == ["amount: numeric -> text"]
    assert diff.reordered
    assert schema_diff(before, before).unchanged


def test_schema_change_fails_with_the_difference_in_metadata() -> None:
    before = [("id", "int8"), ("amount", "numeric")]
    after = [("id", "int8"), ("amount", "text"), ("tag", "varchar")]
    verdict = verify_schema_unchanged(after, before, Month(2025, 2))
    assert not verdict.passed
    assert verdict.description == (
        "columns differ from 2025-02: added tag varchar; changed amount: numeric -> text"
    )
    assert verdict.metadata["added"] == ["tag varchar"]
    assert verdict.metadata["changed"] == ["amount: numeric -> text"]
    assert verdict.metadata["removed"] == [] and verdict.metadata["reordered"] is False
    assert verify_schema_unchanged(after, after, Month(2025, 2)).passed
    assert verify_schema_unchanged(after, None, Month(2025, 2)).passed
