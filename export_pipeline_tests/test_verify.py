"""The pure comparisons behind the export checks, on real files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_pipeline.partitions import Month
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.verify import (
    PARQUET_TAIL_BYTES,
    footer_row_count,
    parquet_footer_length,
    schema_diff,
    verify_not_empty_after_rows,
    verify_row_count,
    verify_schema_unchanged,
    verify_size,
)

KEY = "exports/7/2025-03/events.parquet"


def _parquet(store: LocalObjectStore, rows: int) -> bytes:
    """A Parquet file of `rows` rows at KEY; its last PARQUET_TAIL_BYTES (what the check reads
    in its one ranged GET, with the size)."""
    path = store.path(KEY)
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": list(range(rows))}), path, row_group_size=100)
    found = store.read_tail(KEY, PARQUET_TAIL_BYTES)
    assert found is not None and found[0] == path.stat().st_size
    return found[1]


def test_previous_month_crosses_the_year() -> None:
    assert Month(2026, 1).previous() == Month(2025, 12)
    assert Month(2025, 7).previous() == Month(2025, 6)
    assert Month(2025, 12).next() == Month(2026, 1)


def test_row_count_from_the_footer_matches_the_record(local_store: LocalObjectStore) -> None:
    tail = _parquet(local_store, rows=1234)
    assert footer_row_count(tail) == 1234
    verdict = verify_row_count(local_store.uri(KEY), 1234, tail)
    assert verdict.passed
    assert verdict.metadata == {"recorded_rows": 1234, "footer_rows": 1234}


def test_a_footer_longer_than_the_first_read_is_read_whole(local_store: LocalObjectStore) -> None:
    """The check reads the file's last bytes once; a footer that does not fit in them says how
    long it is, and a second read of exactly that length holds it."""
    _parquet(local_store, rows=1234)  # 13 row groups: a footer of a few KB
    found = local_store.read_tail(KEY, 16)
    assert found is not None
    size, short = found
    needed = parquet_footer_length(short)
    assert len(short) == 16 < needed < size
    with pytest.raises(pa.ArrowException):  # a cut footer
        footer_row_count(short)
    longer = local_store.read_tail(KEY, needed)
    assert longer is not None and len(longer[1]) == needed
    assert footer_row_count(longer[1]) == 1234


def test_row_count_disagreeing_with_the_footer_fails(local_store: LocalObjectStore) -> None:
    tail = _parquet(local_store, rows=1234)
    uri = local_store.uri(KEY)
    verdict = verify_row_count(uri, 1235, tail)
    assert not verdict.passed
    assert verdict.description.startswith(f"{uri}: the Parquet footer says 1234 rows")
    assert "recorded 1235" in verdict.description
    assert verdict.metadata == {"recorded_rows": 1235, "footer_rows": 1234}


def test_unreadable_footer_fails_with_the_uri(local_store: LocalObjectStore) -> None:
    tail = _parquet(local_store, rows=10)
    uri = local_store.uri(KEY)
    verdict = verify_row_count(uri, 10, b"\0" * len(tail))  # same size, not Parquet
    assert not verdict.passed
    assert verdict.description.startswith(f"{uri}: the Parquet footer cannot be read")
    assert "no PAR1 at its end" in verdict.description
    # A text file (what a CSV export is) cannot pass either: only Parquet carries a row
    # count, so the check exists for Parquet datasets only (defs/checks.py).
    assert not verify_row_count(uri, 1, b"id\n1\n").passed


def test_size_against_the_record(local_store: LocalObjectStore) -> None:
    tail = _parquet(local_store, rows=10)
    uri, size = local_store.uri(KEY), local_store.size(KEY)
    assert size is not None and size == len(tail)  # a small file: the tail is all of it
    same = verify_size(uri, size, size)
    assert same.passed and same.description == f"{uri}: {size} bytes, as recorded"
    assert same.metadata == {"uri": uri, "recorded_bytes": size, "size_bytes": size}
    other = verify_size(uri, size + 1, size)
    assert not other.passed
    assert other.description == (
        f"{uri}: recorded {size + 1} bytes, found {size}; re-materialize the partition"
    )
    missing = verify_size(uri, size, local_store.size("exports/7/2025-03/gone.parquet"))
    assert not missing.passed and missing.description == (
        f"{uri}: missing; re-materialize the partition"
    )
    assert "size_bytes" not in missing.metadata


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
