"""On-demand exports: rows of `export_requests` become runs, and runs report back to them.

`export_requests_sensor` claims pending requests (-> queued) and asks for one run each, with
run key `export-request-<id>`: Dagster never starts two runs for one key, and a claimed row is
never claimed again, so a request runs once even when the cursor is lost. The cursor (JSON,
`last_id`: the highest request id of a recorded tick) finds requests claimed by a tick whose
result was lost: queued rows above it are asked for again, under the same run keys.
Run-status sensors then set running / succeeded (with the file URIs) / failed (with the error).
"""

from __future__ import annotations

import json

import dagster as dg

from export_pipeline.defs.jobs import exports_job
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.defs.runs import failure_message, run_uris
from export_pipeline.errors import ExportError
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.partitions import (
    CUSTOMERS_PARTITIONS_NAME,
    MONTH_DIMENSION,
    Month,
    partition_key,
)
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.spec import ExportSpec
from export_pipeline.state.requests import (
    ExportRequest,
    check_request,
    claim_pending,
    mark_failed,
    mark_running,
    mark_succeeded,
    queued_after,
    run_key_for,
)

REQUEST_ID_TAG = "export/request_id"
REQUESTER_TAG = "export/requester"
MAX_REQUESTS_PER_TICK = 100


def build_export_requests_sensor(spec: ExportSpec) -> dg.SensorDefinition:
    """The sensor for `spec` (read once, when the code location loads, with the assets)."""

    @dg.sensor(
        name="export_requests_sensor",
        job=exports_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts one export run per pending row of the export_requests table.",
    )
    def export_requests_sensor(
        context: dg.SensorEvaluationContext, state: ExportStateResource
    ) -> dg.SensorResult:
        dsn = state.require_dsn()
        last_id = read_cursor(context.cursor)
        customers = set(context.instance.get_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME))
        lost = queued_after(dsn, last_id, MAX_REQUESTS_PER_TICK) if last_id is not None else []
        queued, failed = claim_pending(
            dsn, lambda r: rejection_reason(r, spec, customers), MAX_REQUESTS_PER_TICK
        )
        for request in failed:
            context.log.warning(f"export request {request.id} rejected: {request.error}")
        if lost:
            context.log.warning(f"asking again for the runs of requests {[r.id for r in lost]}")
        handled = [r.id for r in [*lost, *queued, *failed]]
        cursor = json.dumps({"last_id": max([last_id or 0, *handled])})
        if not lost and not queued:
            return dg.SensorResult(skip_reason="no pending export requests", cursor=cursor)
        return dg.SensorResult(
            run_requests=[run_request(r, spec) for r in [*lost, *queued]], cursor=cursor
        )

    return export_requests_sensor


def read_cursor(cursor: str | None) -> int | None:
    """The highest request id of the last recorded tick; None when there is no cursor."""
    if not cursor:
        return None
    try:
        return int(json.loads(cursor)["last_id"])
    except (ValueError, KeyError, TypeError):
        raise ExportError(f"export_requests_sensor: unreadable cursor {cursor!r}") from None


def rejection_reason(request: ExportRequest, spec: ExportSpec, customers: set[str]) -> str | None:
    """Why the request cannot run, or None. Rows may come from plain SQL INSERTs: check all."""
    try:
        customer, month, datasets, _ = check_request(
            request.customer, request.month, request.datasets, request.requester
        )
    except ExportError as exc:
        return str(exc)
    unknown = [d for d in datasets or [] if d not in spec.datasets]
    if unknown:
        return f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(spec.datasets)}"
    if customer not in customers:
        return (
            f"customer {customer!r} is not a partition yet (customers_sensor adds the source's "
            "customers every 5 minutes); submit the request again once it is"
        )
    months = build_export_partitions_def(spec.months_start).get_partitions_def_for_dimension(
        MONTH_DIMENSION
    )
    if not months.has_partition_key(month.start.isoformat()):
        return (
            f"month {month} is not an export partition: months run from "
            f"{spec.months_start:%Y-%m} to the last complete month"
        )
    return None


def run_request(request: ExportRequest, spec: ExportSpec) -> dg.RunRequest:
    datasets = request.datasets or list(spec.datasets)
    return dg.RunRequest(
        run_key=run_key_for(request.id),
        partition_key=partition_key(request.customer, Month.parse(request.month)),
        asset_selection=[export_asset_key(d) for d in datasets],
        tags={REQUEST_ID_TAG: str(request.id), REQUESTER_TAG: request.requester[:200]},
    )


def request_id_of(run: dg.DagsterRun) -> int | None:
    value = run.tags.get(REQUEST_ID_TAG, "")
    return int(value) if value.isdigit() else None


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.STARTED,
    monitored_jobs=[exports_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks export requests `running` when their run starts.",
)
def export_request_started_sensor(
    context: dg.RunStatusSensorContext, state: ExportStateResource
) -> dg.SkipReason | None:
    request_id = request_id_of(context.dagster_run)
    if request_id is None:
        return dg.SkipReason("not an export request run")
    mark_running(state.require_dsn(), request_id, context.dagster_run.run_id)
    return None


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[exports_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks export requests `succeeded`, with the URIs of the files written.",
)
def export_request_succeeded_sensor(
    context: dg.RunStatusSensorContext, state: ExportStateResource
) -> dg.SkipReason | None:
    run = context.dagster_run
    request_id = request_id_of(run)
    if request_id is None:
        return dg.SkipReason("not an export request run")
    mark_succeeded(
        state.require_dsn(), request_id, run.run_id, run_uris(context.instance, run.run_id)
    )
    return None


@dg.run_failure_sensor(
    monitored_jobs=[exports_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks export requests `failed`, with the error.",
)
def export_request_failed_sensor(
    context: dg.RunFailureSensorContext, state: ExportStateResource
) -> dg.SkipReason | None:
    request_id = request_id_of(context.dagster_run)
    if request_id is None:
        return dg.SkipReason("not an export request run")
    mark_failed(
        state.require_dsn(), request_id, context.dagster_run.run_id, failure_message(context)
    )
    return None


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    monitored_jobs=[exports_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks export requests `failed` when their run is canceled.",
)
def export_request_canceled_sensor(
    context: dg.RunStatusSensorContext, state: ExportStateResource
) -> dg.SkipReason | None:
    request_id = request_id_of(context.dagster_run)
    if request_id is None:
        return dg.SkipReason("not an export request run")
    mark_failed(state.require_dsn(), request_id, context.dagster_run.run_id, "run canceled")
    return None
