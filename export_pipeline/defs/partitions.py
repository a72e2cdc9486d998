"""Dagster partitions: customer (dynamic, added by sensor or CLI) x month."""

from __future__ import annotations

from datetime import date

import dagster as dg

from export_pipeline.partitions import (
    CUSTOMER_DIMENSION,
    CUSTOMERS_PARTITIONS_NAME,
    MONTH_DIMENSION,
)

customers_partitions_def = dg.DynamicPartitionsDefinition(name=CUSTOMERS_PARTITIONS_NAME)


def build_export_partitions_def(months_start: date) -> dg.MultiPartitionsDefinition:
    """customer x month; keys look like `42|2025-03-01` (dimensions sorted by name)."""
    return dg.MultiPartitionsDefinition(
        {
            CUSTOMER_DIMENSION: customers_partitions_def,
            MONTH_DIMENSION: dg.MonthlyPartitionsDefinition(
                start_date=months_start.isoformat(), end_offset=0
            ),
        }
    )
