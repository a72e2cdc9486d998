"""customers_sensor: keeps the `customers` partitions in step with the source database.

- New customers become partitions. With `customers.export_history: true` in the spec, the
  same tick also asks for their history: one `monthly_exports_job` run per month since
  `months.start`, for the new customers only.
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

from export_pipeline.defs.monthly import MONTHLY_JOB_NAME
from export_pipeline.defs.partitions import customers_partitions_def
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
from export_pipeline.settings import spec_path
from export_pipeline.spec import ExportSpec, load_spec


@dg.sensor(
    job_name=MONTHLY_JOB_NAME,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds every customer in the source database as a `customers` partition "
    "(and, with customers.export_history, exports their past months).",
)
def customers_sensor(
    context: dg.SensorEvaluationContext, source: PostgresSourceResource
) -> dg.SensorResult:
    spec = load_spec(spec_path())
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
            f"{len(gone)} customer partition(s) no longer in the source, kept with their files "
            f"and history: {', '.join(gone[:20])}{' ...' if len(gone) > 20 else ''}"
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


def history_requests(spec: ExportSpec, new: list[str], last: Month) -> list[dg.RunRequest]:
    """With export_history: one monthly run per month up to `last`, for the new customers.

    The run key names the month and the set of customers, so a re-evaluated tick asks for
    nothing twice.
    """
    if not spec.customers.export_history:
        return []
    who = _digest(new)
    return [
        dg.RunRequest(
            run_key=f"history-{month}-{who}",
            partition_key=month.start.isoformat(),
            run_config={"ops": {"export_month": {"config": {"customers": new}}}},
            tags={"export/trigger": "new-customers"},
        )
        for month in months_between(month_of(spec.months_start), last)
    ]


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
