"""Failed export runs: a row per failed partition and dataset in `export_failures`, and a
signed webhook when one is configured.

A ranged run's export steps name every partition that failed (`failed_partitions` in their
failure's metadata): each becomes its own row (customer, month, dataset, error) and its own
entry of the webhook's `failures`. A failure that names no partition (the run could not start,
the manifest step, a bug) is one row for the run. The rows are written first and are
idempotent, so a tick that fails on the state database is retried without duplicates. Webhook
trouble never fails the tick (a 4xx would fail it forever): the outcome goes into the rows'
`alert_status` and the sensor's log.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from export_pipeline.defs.runs import (
    StepFailure,
    failure_message,
    run_datasets,
    run_partitions,
    step_failures,
)
from export_pipeline.errors import ExportError
from export_pipeline.resources.alerts import AlertWebhookResource
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.state.failures import FailureRecord, record_failures, set_alert_status
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
    records = failure_records(
        context.instance, run, step_failures(context.get_step_failure_events())
    )
    if not records:  # no step failed: the run did (it could not start, it was killed)
        records = [_run_record(context.instance, run, failure_message(context))]
    dsn = state.require_dsn()
    if not record_failures(dsn, records):
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
    delivery = post(config, alert_payload(records))
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


def failure_records(
    instance: dg.DagsterInstance, run: dg.DagsterRun, failures: list[StepFailure]
) -> list[FailureRecord]:
    """A record per partition a failed step names, and one per step that names none."""
    records: list[FailureRecord] = []
    for failure in failures:
        if not failure.partitions:
            message = f"{failure.step_key}: {failure.message}"
            records.append(_run_record(instance, run, message, failure.dataset))
            continue
        for row in failure.partitions:
            dataset = row.get("dataset")
            records.append(
                FailureRecord(
                    run_id=run.run_id,
                    job_name=run.job_name,
                    error=str(row.get("error") or failure.message),
                    partition_key=row.get("partition"),
                    customer=row.get("customer"),
                    month=row.get("month"),
                    datasets=[dataset] if dataset else [],
                    dataset=dataset,
                )
            )
    return records


def _run_record(
    instance: dg.DagsterInstance, run: dg.DagsterRun, error: str, dataset: str | None = None
) -> FailureRecord:
    """A failure of the run's whole range: of one export step's dataset, or (`dataset` None:
    another step, the run itself) of every dataset the run exports."""
    partitions = run_partitions(run)
    return FailureRecord(
        run_id=run.run_id,
        job_name=run.job_name,
        error=error,
        partition_key=partitions.partition_key,
        customer=partitions.customer,
        month=partitions.month,
        datasets=[dataset] if dataset else run_datasets(instance, run),
        dataset=dataset,
    )


def alert_payload(records: list[FailureRecord]) -> dict[str, object]:
    """The webhook's body: the run, and a row per failure. The top-level partition fields
    are the first failure's (what a single-partition run's alert always carried)."""
    first = records[0]
    return {
        "event": ALERT_EVENT,
        "run_id": first.run_id,
        "job_name": first.job_name,
        "partition_key": first.partition_key,
        "customer": first.customer,
        "month": first.month,
        "datasets": sorted({d for r in records for d in r.datasets}),
        "error": first.error if len(records) == 1 else f"{len(records)} exports failed",
        "failures": [
            {
                "partition_key": r.partition_key,
                "customer": r.customer,
                "month": r.month,
                "dataset": r.dataset,
                "error": r.error,
            }
            for r in records
        ],
        "sent_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
