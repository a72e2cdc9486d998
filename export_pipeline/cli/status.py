"""`export-pipeline status [CUSTOMER] [--month YYYY-MM]`: each dataset's state, from the instance.

never run | queued | running (with progress when the run reports it) | done (rows, size, when,
link expiry) | failed (the partition's own error).

A customer-month may have been exported by a run of its own (tagged `dagster/partition`) or
inside a ranged run that covers many (a backfill, the monthly schedule, a customer's history:
tagged with the range's first and last key). So the state comes from the partition status
Dagster keeps per asset (`instance.get_status_by_partition`, what the UI's partition view
shows): materialized, failed or in progress, whichever run did it. The latest
materialization gives "done" its figures. The runs that cover the partition add the rest: an
unfinished one says queued or running and how far it is; the run that failed it says why,
with the partition's own row of its step failure (`failed_partitions`); a run canceled after
the last materialization makes it failed too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import dagster as dg

from export_pipeline.cli.common import (
    EXIT_OK,
    Target,
    check_month,
    first_line,
    last_complete_month,
    parse_month,
)
from export_pipeline.cli.context import check_customer, known_customers, open_instance, read_spec
from export_pipeline.cli.output import human_bytes, print_json, print_table, when
from export_pipeline.cli.progress import RunProgress, partition_error
from export_pipeline.dagster_private import run_partition_range
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.defs.runs import StepFailure, run_datasets, step_failures
from export_pipeline.io_managers.metadata import export_asset_key, plain_values
from export_pipeline.partitions import (
    CUSTOMER_DIMENSION,
    PARTITION_TAG,
    month_of,
    months_between,
    split_partition_key,
)

NEVER_RUN = "never run"
_IN_PROGRESS = {
    dg.DagsterRunStatus.QUEUED: "queued",
    dg.DagsterRunStatus.NOT_STARTED: "queued",
    dg.DagsterRunStatus.STARTING: "running",
    dg.DagsterRunStatus.STARTED: "running",
    dg.DagsterRunStatus.CANCELING: "running",
}
_ENDED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
RECENT_RUNS = 200  # finished runs that failed or were canceled, looked at for ranges
RUNS_PER_PARTITION = 20  # runs of one partition (its own tag), newest first


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
        reader = StatusReader(instance, build_export_partitions_def(spec.months_start))
        keys = [cell.partition_key for cell in cells]
        for dataset in datasets:
            reader.read_statuses(dataset, keys)
        if month is None:  # only the cells something happened to: a few queries, not per cell
            active = reader.active(keys)
            cells = [cell for cell in cells if cell.partition_key in active]
        rows = [row for cell in cells for row in reader.rows(cell)]
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


class StatusReader:
    """The instance's view of the export assets' partitions, read with as few queries as the
    table allows: one partition status per dataset, a few run lists shared by every cell,
    and each run's events at most once."""

    def __init__(
        self, instance: dg.DagsterInstance, partitions_def: dg.MultiPartitionsDefinition
    ) -> None:
        self.instance = instance
        self.partitions_def = partitions_def
        self.statuses: dict[str, dict[str, dg.AssetPartitionStatus | None]] = {}
        self._ranged: list[dg.RunRecord] | None = None
        self._covered: dict[str, frozenset[str]] = {}
        self._own: dict[str, list[dg.RunRecord]] = {}
        self._datasets: dict[str, list[str]] = {}
        self._failures: dict[str, list[StepFailure]] = {}
        self._progress: dict[str, RunProgress] = {}

    # -- partitions ---------------------------------------------------------------------------
    def read_statuses(self, dataset: str, keys: Sequence[str]) -> None:
        found = self.instance.get_status_by_partition(
            export_asset_key(dataset), list(keys), self.partitions_def
        )
        self.statuses[dataset] = dict(found or {})

    def active(self, keys: Sequence[str]) -> set[str]:
        """The keys with a partition status for some dataset, or covered by an unfinished
        or canceled run: every other cell is `never run`."""
        wanted = set(keys)
        found = {
            key for by_key in self.statuses.values() for key, s in by_key.items() if s is not None
        }
        for record in self.ranged_runs():
            if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
                found |= self.covered(record.dagster_run) & wanted
        customers = {split_partition_key(key)[0] for key in wanted - found}
        for customer in sorted(customers):  # runs of one partition each, by customer
            tag = {f"{PARTITION_TAG}/{CUSTOMER_DIMENSION}": customer}
            for record in self.instance.get_run_records(dg.RunsFilter(tags=tag)):
                found |= self.covered(record.dagster_run) & wanted
        return found

    # -- runs ---------------------------------------------------------------------------------
    def ranged_runs(self) -> list[dg.RunRecord]:
        """Runs over a range of partitions that are unfinished, or that recently failed or
        were canceled (newest first): a partition's own tag does not find them."""
        if self._ranged is None:
            unfinished = self.instance.get_run_records(
                dg.RunsFilter(statuses=list(_IN_PROGRESS)), limit=1000
            )
            ended = self.instance.get_run_records(dg.RunsFilter(statuses=_ENDED), limit=RECENT_RUNS)
            self._ranged = sorted(
                (r for r in [*unfinished, *ended] if run_partition_range(r.dagster_run)),
                key=lambda r: r.create_timestamp,
                reverse=True,
            )
        return self._ranged

    def covered(self, run: dg.DagsterRun) -> frozenset[str]:
        """The partition keys a run covers: its own, or every key of its range."""
        if run.run_id not in self._covered:
            keys: frozenset[str] = frozenset()
            tagged = run.tags.get(PARTITION_TAG)
            ranged = run_partition_range(run)
            if tagged is not None:
                keys = frozenset([tagged])
            elif ranged is not None:
                try:
                    keys = frozenset(
                        self.partitions_def.get_partition_keys_in_range(
                            dg.PartitionKeyRange(*ranged), dynamic_partitions_store=self.instance
                        )
                    )
                except Exception:  # a range over partitions deleted since: covers nothing now
                    keys = frozenset()
            self._covered[run.run_id] = keys
        return self._covered[run.run_id]

    def runs_covering(self, key: str, dataset: str) -> list[dg.RunRecord]:
        """Runs of `dataset` that cover `key`, newest first."""
        if key not in self._own:
            self._own[key] = list(
                self.instance.get_run_records(
                    dg.RunsFilter(tags={PARTITION_TAG: key}), limit=RUNS_PER_PARTITION
                )
            )
        own = self._own[key]
        ranged = [r for r in self.ranged_runs() if key in self.covered(r.dagster_run)]
        runs = sorted([*own, *ranged], key=lambda r: r.create_timestamp, reverse=True)
        return [r for r in runs if dataset in self.datasets_of(r.dagster_run)]

    def datasets_of(self, run: dg.DagsterRun) -> list[str]:
        if run.run_id not in self._datasets:
            self._datasets[run.run_id] = run_datasets(self.instance, run)
        return self._datasets[run.run_id]

    def progress_of(self, run_id: str) -> RunProgress:
        state = self._progress.setdefault(run_id, RunProgress(run_id))
        if not state.cursor:
            state.read(self.instance)
        return state

    def error(self, run: dg.DagsterRun, dataset: str, key: str) -> str:
        """Why `run` failed `dataset` for `key`: the partition's row of the step's failure,
        else the step's message, else the run's failure message."""
        if run.run_id not in self._failures:
            events = [
                entry.dagster_event
                for entry in self.instance.all_logs(
                    run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
                )
                if entry.dagster_event is not None
            ]
            self._failures[run.run_id] = step_failures(events)
        for failure in self._failures[run.run_id]:
            if failure.dataset == dataset:
                return partition_error(failure, key) or failure.message
        return run_failure_message(self.instance, run)

    # -- one cell -----------------------------------------------------------------------------
    def rows(self, target: Target) -> list[dict[str, Any]]:
        """One row per dataset of the customer-month."""
        return [self.row(target, dataset) for dataset in target.datasets]

    def row(self, target: Target, dataset: str) -> dict[str, Any]:
        key = target.partition_key
        row: dict[str, Any] = {
            "customer": target.customer,
            "month": str(target.month),
            "dataset": dataset,
            "partition": key,
            "state": NEVER_RUN,
        }
        record = latest_materialization(self.instance, export_asset_key(dataset), key)
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
        status = self.statuses.get(dataset, {}).get(key)
        runs = self.runs_covering(key, dataset)
        unfinished = next((r for r in runs if r.dagster_run.status in _IN_PROGRESS), None)
        if unfinished is not None:
            self._in_progress(row, unfinished.dagster_run, dataset, key)
        elif status == dg.AssetPartitionStatus.FAILED:
            failed = next(
                (r for r in runs if r.dagster_run.status == dg.DagsterRunStatus.FAILURE), None
            )
            if failed is None:  # older than the runs looked at
                row.update(state="failed", error="its latest run failed")
            else:
                self._failed(row, failed, dataset, key)
        elif status == dg.AssetPartitionStatus.IN_PROGRESS:
            row.update(state="running")
        else:
            canceled = next(
                (r for r in runs if r.dagster_run.status == dg.DagsterRunStatus.CANCELED), None
            )
            if canceled is not None and (
                record is None
                or (
                    record.run_id != canceled.dagster_run.run_id
                    and _ended(canceled) >= record.timestamp
                )
            ):
                self._failed(row, canceled, dataset, key)
        return row

    def _in_progress(self, row: dict[str, Any], run: dg.DagsterRun, dataset: str, key: str) -> None:
        row.update(state=_IN_PROGRESS[run.status], run_id=run.run_id)
        report = self.progress_of(run.run_id).report(dataset, key)
        if report is not None:
            row["progress"] = report.describe()
            row["progress_rows"] = report.rows
            row["progress_percent"] = report.percent
            if report.is_batch:
                row["progress_partitions_done"] = report.partitions_done
                row["progress_partitions_total"] = report.partitions_total

    def _failed(self, row: dict[str, Any], record: dg.RunRecord, dataset: str, key: str) -> None:
        run = record.dagster_run
        error = first_line(self.error(run, dataset, key))
        row.update(
            state="failed",
            run_id=run.run_id,
            timestamp=_ended(record),
            error=error or f"run {run.status.value.lower()}",
        )


def _ended(record: dg.RunRecord) -> float:
    end = record.end_time or record.start_time
    return float(end) if end else record.create_timestamp.timestamp()


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0] if records else None


def run_failure_message(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    for entry in instance.all_logs(
        run.run_id, of_type={dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED}
    ):
        return entry.message or (entry.dagster_event.message if entry.dagster_event else "") or ""
    return ""
