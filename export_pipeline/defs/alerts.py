"""Failed export runs: a row in `export_failures`, and a signed webhook when one is configured.

The row is written first and is idempotent (one per run), so a tick that fails on the state
database is retried without duplicates. Webhook trouble never fails the tick (a 4xx would fail
it forever): the outcome goes into the row's `alert_status` and the sensor's log.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from export_pipeline.defs.runs import failure_message, run_datasets, run_partition
from export_pipeline.errors import ExportError
from export_pipeline.resources.alerts import AlertWebhookResource
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.state.failures import FailureRecord, record_failure, set_alert_status
from export_pipeline.webhook import post, safe_url

ALERT_EVENT = "export.run_failed"


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records every failed run of this code location in export_failures and posts "
    "it to EXPORT_ALERT_WEBHOOK_URL when set.",
)
def export_failure_sensor(
    context: dg.RunFailureSensorContext,
    state: ExportStateResource,
    alerts: AlertWebhookResource,
) -> None:
    run = context.dagster_run
    partition = run_partition(run)
    record = FailureRecord(
        run_id=run.run_id,
        job_name=run.job_name,
        error=failure_message(context),
        partition_key=partition.partition_key,
        customer=partition.customer,
        month=partition.month,
        datasets=run_datasets(context.instance, run),
    )
    dsn = state.require_dsn()
    if not record_failure(dsn, record):
        context.log.info(f"run {run.run_id} was already recorded")
        return
    try:
        config = alerts.webhook_config()
    except ExportError as exc:
        context.log.error(str(exc))
        set_alert_status(dsn, run.run_id, f"failed: {exc}")
        return
    if config is None:
        return
    delivery = post(config, alert_payload(record))
    status = "sent" if delivery.ok else f"failed: {delivery.detail}"
    set_alert_status(dsn, run.run_id, status)
    where = safe_url(config.url)
    if delivery.ok:
        context.log.info(f"alert for run {run.run_id} posted to {where}")
    else:
        context.log.error(
            f"alert for run {run.run_id} not delivered to {where} after "
            f"{delivery.attempts} attempt(s): {delivery.detail}"
        )


def alert_payload(record: FailureRecord) -> dict[str, object]:
    return {
        "event": ALERT_EVENT,
        "run_id": record.run_id,
        "job_name": record.job_name,
        "partition_key": record.partition_key,
        "customer": record.customer,
        "month": record.month,
        "datasets": record.datasets,
        "error": record.error,
        "sent_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
