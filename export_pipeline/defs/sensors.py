"""Sensors that keep the partitions in step with the source database."""

import hashlib
import json
from collections.abc import Callable

import dagster as dg

from export_pipeline.defs.partitions import customers_partitions_def
from export_pipeline.engine import list_customers
from export_pipeline.errors import ExportError
from export_pipeline.partitions import (
    CUSTOMERS_PARTITIONS_NAME,
    PartitionKeyError,
    validate_customer_key,
)
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.settings import spec_path
from export_pipeline.spec import load_spec


@dg.sensor(
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds every customer in the source database as a `customers` partition.",
)
def customers_sensor(
    context: dg.SensorEvaluationContext, source: PostgresSourceResource
) -> dg.SensorResult:
    try:
        spec = load_spec(spec_path())
        customers = list_customers(source.source_config(), spec.customers)
    except ExportError as exc:
        return dg.SensorResult(skip_reason=str(exc))
    valid, new = new_customer_keys(context.instance, customers, context.log.warning)
    digest = hashlib.sha256("\n".join(valid).encode()).hexdigest()[:16]
    cursor = json.dumps({"customers": len(valid), "digest": digest})
    if not new:
        return dg.SensorResult(skip_reason="no new customers", cursor=cursor)
    context.log.info(f"adding {len(new)} customer partition(s)")
    return dg.SensorResult(
        dynamic_partitions_requests=[customers_partitions_def.build_add_request(new)],
        cursor=cursor,
    )


def new_customer_keys(
    instance: dg.DagsterInstance, keys: list[str], warn: Callable[[str], object]
) -> tuple[list[str], list[str]]:
    """(every usable key, the ones not yet a partition); unusable keys are reported to `warn`."""
    valid, rejected = split_customer_keys(keys)
    for key, reason in rejected:
        warn(f"customer key {key!r} not added as a partition: {reason}")
    known = set(instance.get_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME))
    return valid, [key for key in valid if key not in known]


def split_customer_keys(keys: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Keys safe to use as partitions, and the rejected ones with the reason."""
    valid: list[str] = []
    rejected: list[tuple[str, str]] = []
    for key in keys:
        try:
            valid.append(validate_customer_key(key))
        except PartitionKeyError as exc:
            rejected.append((key, str(exc)))
    return valid, rejected
