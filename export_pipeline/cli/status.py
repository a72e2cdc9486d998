"""`export-pipeline status [CUSTOMER] [--month YYYY-MM]`: each dataset's state, from the instance.

never run | queued | running (with progress when the run reports it) | done (rows, size, when,
link expiry) | failed (the error's first line). The latest materialization of the partition
says what was delivered; the partition's latest run that covers the dataset says whether
something newer is queued, running, or failed after it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import dagster as dg

from export_pipeline.cli.common import (
    EXIT_OK,
    Target,
    asset_key,
    check_customer,
    check_month,
    first_line,
    known_customers,
    last_complete_month,
    open_instance,
    parse_month,
    read_spec,
)
from export_pipeline.cli.output import human_bytes, print_json, print_table, when
from export_pipeline.cli.progress import RunProgress, latest_progress
from export_pipeline.defs.runs import PARTITION_TAG, run_datasets
from export_pipeline.io_managers.metadata import plain_values
from export_pipeline.partitions import (
    CUSTOMER_DIMENSION,
    Month,
    PartitionKeyError,
    month_of,
    months_between,
)

NEVER_RUN = "never run"
_IN_PROGRESS = {
    dg.DagsterRunStatus.QUEUED: "queued",
    dg.DagsterRunStatus.NOT_STARTED: "queued",
    dg.DagsterRunStatus.STARTING: "running",
    dg.DagsterRunStatus.STARTED: "running",
    dg.DagsterRunStatus.CANCELING: "running",
}
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "status",
        help="each dataset's state: never run, queued, running, done or failed",
        description="Each dataset's state per customer-month, read from the Dagster instance. "
        "Without --month, every month since months.start is looked at and datasets never run "
        "are left out; with --month they are listed as 'never run'.",
        epilog="examples:\n"
        "  export-pipeline status 3 --month 2025-03\n"
        "  export-pipeline status 3\n"
        "  export-pipeline status --month 2025-03 --json | jq '.[] | select(.state==\"failed\")'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("customer", nargs="?", help="a customer key (default: every customer)")
    parser.add_argument("--month", help="YYYY-MM (default: every month)")
    parser.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    spec = read_spec()
    month = check_month(spec, parse_month(args.month)) if args.month else None
    months = (
        [month]
        if month is not None
        else months_between(month_of(spec.months_start), last_complete_month())
    )
    datasets = list(spec.datasets)
    with open_instance() as instance:
        customers = (
            [check_customer(instance, args.customer)]
            if args.customer
            else sorted(known_customers(instance))
        )
        cells = [Target(c, m, datasets) for c in customers for m in months]
        if month is None:  # only the cells something happened to: a few queries, not per cell
            active = active_partitions(instance, datasets, customers)
            cells = [t for t in cells if t.partition_key in active or t.month in active]
        rows: list[dict[str, Any]] = []
        for target in cells:
            rows.extend(partition_status(instance, target))
    hidden = 0
    if month is None:
        listed = [r for r in rows if r["state"] != NEVER_RUN]
        hidden = len(customers) * len(months) * len(datasets) - len(listed)
        rows = listed
    if hidden:
        sys.stderr.write(
            f"{hidden} customer-month dataset(s) never run, not listed (give --month to see them)\n"
        )
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table(
        None,
        ["customer", "month", "dataset", "state", "rows", "size", "when", "link expires", "detail"],
        [
            [
                r["customer"],
                r["month"],
                r["dataset"],
                r["state"],
                "" if r.get("rows") is None else f"{r['rows']:,}",
                human_bytes(r.get("size_bytes")),
                when(r.get("timestamp")),
                when(r.get("link_expires_at")),
                r.get("error") or r.get("progress") or r.get("uri") or "",
            ]
            for r in rows
        ],
    )
    return EXIT_OK


def active_partitions(
    instance: dg.DagsterInstance, datasets: list[str], customers: list[str]
) -> set[Any]:
    """Partition keys with a materialization or a run, and months with a monthly run in
    progress: every other cell is `never run`."""
    active: set[Any] = set()
    for dataset in datasets:
        active |= instance.get_materialized_partitions(asset_key(dataset))
    for customer in customers:
        tag = {f"{PARTITION_TAG}/{CUSTOMER_DIMENSION}": customer}
        for run in instance.get_run_records(dg.RunsFilter(tags=tag)):
            active.add(run.dagster_run.tags.get(PARTITION_TAG))
    monthly = instance.get_run_records(dg.RunsFilter(statuses=list(_IN_PROGRESS)))
    for record in monthly:
        key = record.dagster_run.tags.get(PARTITION_TAG, "")
        if key and "|" not in key:
            with contextlib.suppress(PartitionKeyError):
                active.add(Month.parse(key))
    return active


def partition_status(instance: dg.DagsterInstance, target: Target) -> list[dict[str, Any]]:
    """One row per dataset of the customer-month."""
    key = target.partition_key
    runs = list(instance.get_run_records(dg.RunsFilter(tags={PARTITION_TAG: key}), limit=20))
    # monthly_exports_job runs carry the month alone; they export many customers
    month_runs = instance.get_run_records(
        dg.RunsFilter(
            tags={PARTITION_TAG: target.month.start.isoformat()},
            statuses=list(_IN_PROGRESS),
        ),
        limit=5,
    )
    logs: dict[str, RunProgress] = {}
    rows = []
    for dataset in target.datasets:
        row: dict[str, Any] = {
            "customer": target.customer,
            "month": str(target.month),
            "dataset": dataset,
            "partition": key,
            "state": NEVER_RUN,
        }
        record = latest_materialization(instance, asset_key(dataset), key)
        if record is not None:
            md = plain_values(record.asset_materialization.metadata)  # type: ignore[union-attr]
            row.update(
                state="done",
                run_id=record.run_id,
                timestamp=record.timestamp,
                rows=md.get("dagster/row_count"),
                size_bytes=md.get("size_bytes"),
                sha256=md.get("sha256"),
                uri=md.get("uri"),
                link_expires_at=md.get("download_url_expires_at"),
            )
        run = latest_run_for(instance, [*runs, *month_runs], dataset)
        if run is not None and (record is None or run.dagster_run.run_id != record.run_id):
            apply_run(instance, row, run, record, logs)
        rows.append(row)
    return rows


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0] if records else None


def latest_run_for(
    instance: dg.DagsterInstance, records: list[dg.RunRecord], dataset: str
) -> dg.RunRecord | None:
    candidates = []
    for record in records:
        run = record.dagster_run
        if "|" not in run.tags.get(PARTITION_TAG, "|"):
            candidates.append(record)  # a monthly run in progress
        elif dataset in run_datasets(instance, run):
            candidates.append(record)
    return max(candidates, key=lambda r: r.create_timestamp, default=None)


def apply_run(
    instance: dg.DagsterInstance,
    row: dict[str, Any],
    run_record: dg.RunRecord,
    record: dg.EventLogRecord | None,
    logs: dict[str, RunProgress],
) -> None:
    """A run newer than the latest materialization: queued, running or failed since."""
    run = run_record.dagster_run
    record_time = record.timestamp if record is not None else 0.0
    end = run_record.end_time or run_record.start_time
    run_time = float(end) if end else run_record.create_timestamp.timestamp()
    if run.status in _IN_PROGRESS:
        row.update(state=_IN_PROGRESS[run.status], run_id=run.run_id)
        if run.run_id not in logs:
            logs[run.run_id] = latest_progress(instance, run.run_id)
        report = logs[run.run_id].progress.get(row["dataset"])
        if report is not None:
            row["progress"] = report.describe()
            row["progress_rows"] = report.rows
            row["progress_percent"] = report.percent
        return
    if run.status in _FAILED and run_time >= record_time:
        if run.run_id not in logs:
            logs[run.run_id] = latest_progress(instance, run.run_id)
        error = logs[run.run_id].errors.get(row["dataset"]) or run_failure_message(instance, run)
        row.update(
            state="failed",
            run_id=run.run_id,
            timestamp=run_time,
            error=first_line(error) or f"run {run.status.value.lower()}",
        )


def run_failure_message(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    for entry in instance.all_logs(
        run.run_id, of_type={dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED}
    ):
        return entry.message or (entry.dagster_event.message if entry.dagster_event else "") or ""
    return ""
