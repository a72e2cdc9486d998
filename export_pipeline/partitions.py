"""Partition keys: customers (dynamic) x months, and the month window a key stands for.

Pure: no Dagster here. `defs/partitions.py` builds the Dagster definitions from these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from export_pipeline.errors import ExportError

CUSTOMER_DIMENSION = "customer"
MONTH_DIMENSION = "month"
CUSTOMERS_PARTITIONS_NAME = "customers"
# Dagster's tag for a run's (or event's) partition key; `<tag>/<dimension>` per dimension.
PARTITION_TAG = "dagster/partition"

# A customer key becomes one path segment of the object key, so it must not be able to escape
# it: no '/', no '..', no control characters, nothing a shell or URL would mangle.
_CUSTOMER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


class PartitionKeyError(ExportError, ValueError):
    """A partition key (customer or month) cannot be used."""


def validate_customer_key(customer: str) -> str:
    """Return `customer` unchanged if it is safe as a partition key and a path segment."""
    if not isinstance(customer, str) or not _CUSTOMER_RE.fullmatch(customer) or ".." in customer:
        raise PartitionKeyError(
            f"customer key {customer!r} is not allowed: use 1-128 characters from "
            "A-Z a-z 0-9 . _ @ -, starting with a letter or digit, without '..'"
        )
    return customer


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month; its window is the half-open interval [start, end)."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """Accept "YYYY-MM" or a Dagster monthly key "YYYY-MM-DD" (day must be 01)."""
        m = re.fullmatch(r"(\d{4})-(\d{2})(?:-01)?", text)
        if not m or not 1 <= int(m.group(2)) <= 12:
            raise PartitionKeyError(f"month {text!r} is not a month (expected YYYY-MM)")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def start(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def end(self) -> date:
        if self.month == 12:
            return date(self.year + 1, 1, 1)
        return date(self.year, self.month + 1, 1)

    def previous(self) -> Month:
        return Month(self.year - 1, 12) if self.month == 1 else Month(self.year, self.month - 1)

    def next(self) -> Month:
        return Month(self.year + 1, 1) if self.month == 12 else Month(self.year, self.month + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def split_partition_key(key: str) -> tuple[str, Month]:
    """(customer, month) of a `customer|month` key such as `42|2025-03-01`.

    Dagster joins the dimensions of a multi-partition key with `|`, sorted by dimension name.
    """
    customer, sep, month = str(key).rpartition("|")
    if not sep:
        raise PartitionKeyError(f"expected a customer|month partition key, got {key!r}")
    return validate_customer_key(customer), Month.parse(month)


def partition_key(customer: str, month: Month) -> str:
    """The customer x month key of `customer`'s `month`, e.g. `42|2025-03-01`."""
    return f"{customer}|{month.start.isoformat()}"


def previous_month_partition(key: str) -> str:
    """The same customer's partition a month earlier."""
    customer, month = split_partition_key(key)
    return partition_key(customer, month.previous())


def partition_order(key: str) -> tuple[str, int, str]:
    """Sort key for customer|month keys: by month, then customer, numbers as numbers (a ranged
    run's keys come from Dagster in no particular order; exports and logs follow this one)."""
    customer, _, month = key.rpartition("|")
    return (month, int(customer) if customer.isdigit() else -1, customer)


def month_of(day: date) -> Month:
    return Month(day.year, day.month)


def previous_month(day: date) -> Month:
    """The last complete month before `day`'s month: what the 1st's schedule exports."""
    return month_of(day).previous()


def months_between(first: Month, last: Month) -> list[Month]:
    """Every month from `first` to `last`, both included ([] when last < first)."""
    months: list[Month] = []
    current = first
    while current <= last:
        months.append(current)
        current = current.next()
    return months
