from __future__ import annotations

from datetime import date

import pytest

from export_pipeline.partitions import Month, PartitionKeyError, validate_customer_key


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
