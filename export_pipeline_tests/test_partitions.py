from __future__ import annotations

from datetime import date

import dagster as dg
import pytest

from export_pipeline.partitions import (
    CUSTOMER_DIMENSION,
    MONTH_DIMENSION,
    Month,
    PartitionKeyError,
    months_between,
    partition_key,
    previous_month,
    previous_month_partition,
    split_partition_key,
    validate_customer_key,
)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2025-03", date(2025, 3, 1), date(2025, 4, 1)),
        ("2025-12-01", date(2025, 12, 1), date(2026, 1, 1)),
        ("2024-02", date(2024, 2, 1), date(2024, 3, 1)),
    ],
)
def test_month_window_is_half_open(text: str, start: date, end: date) -> None:
    month = Month.parse(text)
    assert (month.start, month.end) == (start, end)


@pytest.mark.parametrize("text", ["2025-13", "2025-03-02", "25-03", "", "2025/03"])
def test_bad_months_are_rejected(text: str) -> None:
    with pytest.raises(PartitionKeyError, match="is not a month"):
        Month.parse(text)


@pytest.mark.parametrize("key", ["42", "acme", "acme-eu_1", "a.b@c"])
def test_plain_customer_keys_pass(key: str) -> None:
    assert validate_customer_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "..", "../etc", "a/b", "a\\b", ".hidden", "a..b", "x\n", " x", "a" * 129, "é"]
)
def test_hostile_customer_keys_are_rejected(key: str) -> None:
    with pytest.raises(PartitionKeyError, match="is not allowed"):
        validate_customer_key(key)


@pytest.mark.parametrize(
    ("customer", "month", "key"),
    [
        ("42", Month(2025, 3), "42|2025-03-01"),
        ("acme-eu_1", Month(2024, 12), "acme-eu_1|2024-12-01"),
    ],
)
def test_partition_keys_are_dagsters_customer_x_month_keys(
    customer: str, month: Month, key: str
) -> None:
    assert partition_key(customer, month) == key
    # the key Dagster gives the multi-partition (dimensions sorted by name: customer first)
    assert key == str(
        dg.MultiPartitionKey(
            {MONTH_DIMENSION: month.start.isoformat(), CUSTOMER_DIMENSION: customer}
        )
    )
    assert split_partition_key(key) == (customer, month)


@pytest.mark.parametrize("key", ["2025-03-01", "42", "42|March", "../x|2025-03-01"])
def test_keys_that_are_no_customer_month_are_rejected(key: str) -> None:
    with pytest.raises(PartitionKeyError):
        split_partition_key(key)


def test_months_around_a_key() -> None:
    assert previous_month_partition("7|2025-01-01") == "7|2024-12-01"
    assert previous_month_partition("7|2025-03-01") == "7|2025-02-01"
    assert previous_month(date(2025, 1, 1)) == Month(2024, 12)
    assert previous_month(date(2025, 3, 31)) == Month(2025, 2)
    assert months_between(Month(2024, 11), Month(2025, 2)) == [
        Month(2024, 11),
        Month(2024, 12),
        Month(2025, 1),
        Month(2025, 2),
    ]
    assert months_between(Month(2025, 2), Month(2025, 1)) == []
