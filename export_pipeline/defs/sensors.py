"""customers_sensor: keeps the `customers` partitions in step with the source database.

- New customers become partitions. With `customers.export_history: true` in the spec, the
  same tick also asks for their history: ranged runs of `exports_job` covering the new
  customers x every month since `months.start` (a few runs, not one per month or customer).
- A customer that disappears from the source keeps its partition, its files and its
  materializations: the sensor logs a warning naming it and counts it in the cursor. Deleting
  a partition hides its history in the UI and cannot be undone from here, so it is left to a
  person (`dagster instance ...` or the UI); nothing is deleted silently.
- A broken DSN, a failing customers query or a bad spec fails the tick (red in the UI, with
  the error), never a silent skip.
- The cursor (JSON) holds the digest of the last customer list; a tick whose list is unchanged
  skips without touching the instance.
"""

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg

from export_pipeline.defs.jobs import exports_job
from export_pipeline.defs.partitions import customers_partitions_def
from export_pipeline.defs.run_requests import ranged_run_requests
from export_pipeline.defs.schedules import TRIGGER_TAG
from export_pipeline.engine import list_customers
from export_pipeline.partitions import (
    CUSTOMERS_PARTITIONS_NAME,
    Month,
    PartitionKeyError,
    month_of,
    months_between,
    previous_month,
    validate_customer_key,
)
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import ExportSpec


def build_customers_sensor(spec: ExportSpec) -> dg.SensorDefinition:
    """The sensor for `spec` (read once, when the code location loads, with the assets)."""

    @dg.sensor(
        name="customers_sensor",
        job=exports_job,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds every customer in the source database as a `customers` partition "
        "(and, with customers.export_history, exports their past months).",
    )
    def customers_sensor(
        context: dg.SensorEvaluationContext, source: PostgresSourceResource
    ) -> dg.SensorResult:
        customers = list_customers(source.source_config(), spec.customers)
        valid, rejected = split_customer_keys(customers)
        for key, reason in rejected:
            context.log.warning(f"customer key {key!r} not added as a partition: {reason}")
        digest = _digest(valid)
        if _read_cursor(context.cursor).get("digest") == digest:
            return dg.SensorResult(skip_reason="customer list unchanged", cursor=context.cursor)
        known = set(context.instance.get_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME))
        new = [key for key in valid if key not in known]
        gone = sorted(known - set(valid))
        if gone:
            context.log.warning(
                f"{len(gone)} customer partition(s) no longer in the source, kept with their "
                f"files and history: {', '.join(gone[:20])}{' ...' if len(gone) > 20 else ''}"
            )
        cursor = json.dumps({"customers": len(valid), "digest": digest, "gone": len(gone)})
        if not new:
            return dg.SensorResult(skip_reason="no new customers", cursor=cursor)
        context.log.info(f"adding {len(new)} customer partition(s)")
        today = datetime.now(UTC).date()
        return dg.SensorResult(
            dynamic_partitions_requests=[customers_partitions_def.build_add_request(new)],
            run_requests=history_requests(spec, new, previous_month(today)),
            cursor=cursor,
        )

    return customers_sensor


def history_requests(spec: ExportSpec, new: list[str], last: Month) -> list[dg.RunRequest]:
    """With export_history: ranged runs covering the new customers (added together, so
    contiguous in partition order) x every month up to `last`.

    The run keys name the set of customers, so a re-evaluated tick asks for nothing twice.
    """
    if not spec.customers.export_history:
        return []
    months = months_between(month_of(spec.months_start), last)
    if not months:
        return []
    return ranged_run_requests(
        new, months, f"history-{_digest(new)}", {TRIGGER_TAG: "new-customers"}
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


def _digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def _read_cursor(cursor: str | None) -> dict:
    try:
        value = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        return {}  # an unreadable cursor only costs one full comparison
    return value if isinstance(value, dict) else {}
