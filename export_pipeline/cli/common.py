"""What the commands share: exit codes, the CLI's error, the instance, partition checks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from export_pipeline.partitions import (
    CUSTOMERS_PARTITIONS_NAME,
    Month,
    PartitionKeyError,
    month_of,
    validate_customer_key,
)
from export_pipeline.settings import spec_path
from export_pipeline.spec import ExportSpec, load_spec

EXIT_OK = 0
EXIT_FAILED = 1  # the export or the command failed
EXIT_USAGE = 2  # bad arguments (argparse uses 2 as well)
EXIT_NOT_FOUND = 3  # no such customer, partition, dataset, export or request


class CliError(Exception):
    """An expected failure: one line on stderr and an exit code, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def open_instance() -> Iterator[dg.DagsterInstance]:
    """The instance of $DAGSTER_HOME, the one the UI and the daemon use."""
    if not os.environ.get("DAGSTER_HOME", "").strip():
        raise CliError(
            "DAGSTER_HOME is not set: point it at the Dagster instance folder "
            "(the one with dagster.yaml), as for `dagster dev`"
        )
    try:
        instance = dg.DagsterInstance.get()
    except dg.DagsterError as exc:
        raise CliError(
            f"cannot open the Dagster instance of $DAGSTER_HOME: {first_line(str(exc))}"
        ) from exc
    with instance:
        yield instance


def read_spec() -> ExportSpec:
    return load_spec(spec_path())


def parse_month(text: str) -> Month:
    try:
        return Month.parse(text)
    except PartitionKeyError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def parse_customer(text: str) -> str:
    try:
        return validate_customer_key(text)
    except PartitionKeyError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def last_complete_month(now: datetime | None = None) -> Month:
    return month_of((now or datetime.now(UTC)).date()).previous()


@dataclass(frozen=True)
class Target:
    """One customer-month of some datasets, checked to be a partition of the assets."""

    customer: str
    month: Month
    datasets: list[str]
    manifest: bool = False  # also write the delivery manifest (docs/manifest.md)

    @property
    def partition_key(self) -> str:
        """Dagster's multi-partition key: dimensions sorted by name, customer before month."""
        return f"{self.customer}|{self.month.start.isoformat()}"


def known_customers(instance: dg.DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME))


def check_customer(instance: dg.DagsterInstance, customer: str) -> str:
    customer = parse_customer(customer)
    if not instance.has_dynamic_partition(CUSTOMERS_PARTITIONS_NAME, customer):
        raise CliError(
            f"customer {customer!r} is not a '{CUSTOMERS_PARTITIONS_NAME}' partition: "
            "customers_sensor adds the source's customers (or run `export-pipeline seed-demo` "
            "for the demo)",
            EXIT_NOT_FOUND,
        )
    return customer


def check_month(spec: ExportSpec, month: Month) -> Month:
    first, last = month_of(spec.months_start), last_complete_month()
    if not first <= month <= last:
        raise CliError(
            f"month {month} is not a partition: months run from {first} (months.start) to "
            f"{last} (the last complete month)",
            EXIT_NOT_FOUND,
        )
    return month


def check_datasets(spec: ExportSpec, names: list[str] | None) -> list[str]:
    if not names:
        return list(spec.datasets)
    unknown = [n for n in dict.fromkeys(names) if n not in spec.datasets]
    if unknown:
        raise CliError(
            f"no dataset {', '.join(map(repr, unknown))} in the spec {spec.source} "
            f"(datasets: {', '.join(spec.datasets)})",
            EXIT_NOT_FOUND,
        )
    return list(dict.fromkeys(names))


def asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(["exports", dataset])


def first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""
