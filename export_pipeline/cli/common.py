"""What the commands share without Dagster: exit codes, the CLI's error, argument checks.

Nothing here imports Dagster (or the code location's modules), so `run` can check its
arguments and start its child process before this process pays for that import;
`context.py` holds what needs the instance or the spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

from export_pipeline.partitions import (
    Month,
    PartitionKeyError,
    month_of,
    partition_key,
    validate_customer_key,
)
from export_pipeline.spec import ExportSpec

EXIT_OK = 0
EXIT_FAILED = 1  # the export or the command failed
EXIT_USAGE = 2  # bad arguments (argparse uses 2 as well)
EXIT_NOT_FOUND = 3  # no such customer, partition, dataset, export or request
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM


class CliError(Exception):
    """An expected failure: one line on stderr and an exit code, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def require_dagster_home() -> str:
    """$DAGSTER_HOME, the instance folder the UI and the daemon use; it must be set."""
    home = os.environ.get("DAGSTER_HOME", "").strip()
    if not home:
        raise CliError(
            "DAGSTER_HOME is not set: point it at the Dagster instance folder "
            "(the one with dagster.yaml), as for `dagster dev`"
        )
    return home


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


def check_month(spec: ExportSpec, month: Month) -> Month:
    """`month` must be a partition: from the spec's months.start to the last complete month."""
    first, last = month_of(spec.months_start), last_complete_month()
    if not first <= month <= last:
        raise CliError(
            f"month {month} is not a partition: months run from {first} (months.start) to "
            f"{last} (the last complete month)",
            EXIT_NOT_FOUND,
        )
    return month


def check_datasets(spec: ExportSpec, names: list[str] | None) -> list[str]:
    """The datasets named (in order, once each), every dataset of the spec when none is."""
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
        return partition_key(self.customer, self.month)


def first_line(text: str | None) -> str:
    """The first line of `text` that is not blank, stripped ("" if none)."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""
