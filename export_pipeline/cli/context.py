"""What the commands read: the spec (as the code location reads it) and the Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from export_pipeline.cli.common import (
    EXIT_NOT_FOUND,
    CliError,
    first_line,
    parse_customer,
    require_dagster_home,
)
from export_pipeline.dagster_private import pool_instance_connections
from export_pipeline.partitions import CUSTOMERS_PARTITIONS_NAME
from export_pipeline.settings import spec_path
from export_pipeline.spec import ExportSpec, load_spec


@contextmanager
def open_instance() -> Iterator[dg.DagsterInstance]:
    """The instance of $DAGSTER_HOME, the one the UI and the daemon use."""
    require_dagster_home()
    try:
        instance = dg.DagsterInstance.get()
    except dg.DagsterError as exc:
        raise CliError(
            f"cannot open the Dagster instance of $DAGSTER_HOME: {first_line(str(exc))}"
        ) from exc
    with instance:
        # A command reads many records: keep connections open instead of one per statement
        # (Postgres storage; others ignore it).
        pool_instance_connections(instance)
        yield instance


def read_spec() -> ExportSpec:
    return load_spec(spec_path())


def known_customers(instance: dg.DagsterInstance) -> list[str]:
    """The `customers` partitions, in the order they were added (the order of ranges)."""
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
