"""`run`, once its child has started: check the target, follow the child's run, summarise.

The run is the child's: among the new runs tagged with the partition and selecting exactly
the target's assets, the one whose events were written by the child's process (its
`RUN_START`; the run executes in the child, in process). Until the child exits, its event
log is read every POLL_SECONDS for step states and progress events, drawn as a bar per
dataset; at the end, what each dataset delivered is read back from the run's
materializations.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from export_pipeline.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    Target,
    check_datasets,
    check_month,
    first_line,
)
from export_pipeline.cli.context import check_customer, open_instance, read_spec
from export_pipeline.cli.output import human_bytes, print_json, print_table, stderr_console
from export_pipeline.cli.progress import RunProgress
from export_pipeline.cli.run import Request, discard, stop
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.partitions import PARTITION_TAG
from export_pipeline.settings import export_storage

POLL_SECONDS = 0.5  # the display's refresh; the loop also wakes when the child exits
FIND_RUN_SECONDS = 120.0  # the child must have created its run by then (it loads the code first)
# Runs created up to this long before the child started still count as new: the instance
# database stamps runs with its own clock (SQLite: to the second).
CLOCK_MARGIN_SECONDS = 5.0


def follow_run(
    args: argparse.Namespace,
    request: Request,
    child: subprocess.Popen[bytes],
    started: float,
) -> int:
    try:
        spec = read_spec()
        month = check_month(spec, request.month)
        datasets = check_datasets(spec, request.datasets)
        export_storage(os.environ)  # storage must be configured, or the code cannot load
    except Exception:
        discard(child)  # it would fail the same way, before creating a run
        raise
    with open_instance() as instance:
        try:
            customer = check_customer(instance, request.customer)
        except Exception:
            discard(child)
            raise
        target = Target(customer, month, datasets, manifest=not request.datasets)
        run, state = execute(instance, target, child, started)
    rows = summary(target, run, state)
    if args.json:
        print_json({"run_id": run.run_id, "status": run.status.value, "datasets": rows})
    else:
        print_table(
            f"{target.customer} {target.month}: run {run.run_id} {run.status.value}",
            ["dataset", "status", "rows", "size", "sha256", "uri", "duration"],
            [
                [
                    r["dataset"],
                    r["status"],
                    "" if r["rows"] is None else f"{r['rows']:,}",
                    human_bytes(r["size_bytes"]),
                    (r["sha256"] or "")[:12],
                    r["uri"] or r.get("error"),
                    "" if r["duration_seconds"] is None else f"{r['duration_seconds']:.2f}s",
                ]
                for r in rows
            ],
        )
    if run.status != dg.DagsterRunStatus.SUCCESS or any(r["status"] != "done" for r in rows):
        errors = [f"{r['dataset']}: {r['error']}" for r in rows if r.get("error")]
        if not errors:  # no dataset's step failed: the manifest's did, or the run before any
            others = [f"{f.step_key}: {first_line(f.message)}" for f in state.other_failures]
            errors = others or [first_line(state.run_error) or "no step reported an error"]
        raise CliError(
            f"{target.partition_key}: run {run.run_id} {run.status.value}; {'; '.join(errors)}"
        )
    return EXIT_OK


def selected_assets(target: Target) -> set[dg.AssetKey]:
    """The exports of the target's datasets, and the manifest when it is asked for."""
    keys = {export_asset_key(name) for name in target.datasets}
    return keys | {MANIFEST_ASSET_KEY} if target.manifest else keys


def execute(
    instance: dg.DagsterInstance,
    target: Target,
    child: subprocess.Popen[bytes],
    started: float,
) -> tuple[dg.DagsterRun, RunProgress]:
    """Follow the child until it exits; its finished run and what its event log said."""
    try:
        run_id, state = follow(instance, target, child, started)
    except KeyboardInterrupt:
        stop(child)
        run_id = find_child_run(instance, target, child.pid, started, {})
        interrupted = instance.get_run_by_id(run_id) if run_id else None
        raise CliError(
            f"interrupted; run {interrupted.run_id} {interrupted.status.value}"
            if interrupted is not None
            else "interrupted before the run started",
            EXIT_INTERRUPTED,
        ) from None
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is None:
        raise CliError(
            f"{target.partition_key}: `dagster asset materialize` exited with "
            f"{child.returncode} before starting a run (rerun with --verbose for its output)"
        )
    return run, state


def follow(
    instance: dg.DagsterInstance,
    target: Target,
    child: subprocess.Popen[bytes],
    started: float,
) -> tuple[str | None, RunProgress]:
    run_id: str | None = None
    state = RunProgress(run_id="")
    candidates: dict[str, RunProgress] = {}
    deadline = time.monotonic() + FIND_RUN_SECONDS
    with ProgressView(target) as view:
        while True:
            exited = child.poll() is not None
            if run_id is None:
                run_id = find_child_run(instance, target, child.pid, started, candidates)
                if run_id is not None:
                    state = candidates[run_id]
                    view.started(run_id)
                elif exited or time.monotonic() > deadline:
                    return None, state
            if run_id is not None:
                state.read(instance)
                view.update(state)
            if exited:
                return run_id, state
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=POLL_SECONDS)


def find_child_run(
    instance: dg.DagsterInstance,
    target: Target,
    child_pid: int,
    started: float,
    candidates: dict[str, RunProgress],
) -> str | None:
    """The run the child created: new, for this partition and exactly these assets, its
    events written by the child's process. `candidates` keeps what was read of each."""
    wanted = selected_assets(target)
    runs = instance.get_runs(
        dg.RunsFilter(
            tags={PARTITION_TAG: target.partition_key},
            created_after=datetime.fromtimestamp(started - CLOCK_MARGIN_SECONDS, UTC),
        ),
        limit=20,
    )
    for run in runs:  # newest first
        if set(run.asset_selection or ()) != wanted:
            continue
        events = candidates.setdefault(run.run_id, RunProgress(run.run_id))
        events.read(instance)
        if child_pid in events.pids:
            return run.run_id
    return None


def summary(target: Target, run: dg.DagsterRun, state: RunProgress) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in target.datasets:
        md = state.materialized.get(name)
        step = state.steps.get(name)
        error = state.error(name, target.partition_key)
        if md is not None:
            status = "done"
        elif error is not None or step in ("failed", "running", "retrying"):
            status = "failed"  # the run ended: a step still running or retrying did not finish
        else:
            status = step or "not run"
        row: dict[str, Any] = {
            "dataset": name,
            "status": status,
            "rows": md.get("dagster/row_count") if md else None,
            "size_bytes": md.get("size_bytes") if md else None,
            "sha256": md.get("sha256") if md else None,
            "uri": md.get("uri") if md else None,
            "duration_seconds": md.get("duration_seconds") if md else None,
        }
        if md and md.get("download_url_expires_at") is not None:
            row["link_expires_at"] = datetime.fromtimestamp(
                md["download_url_expires_at"], UTC
            ).isoformat()
        if error is not None:
            row["error"] = first_line(error)
        rows.append(row)
    return rows


class ProgressView:
    """A bar per dataset on stderr: determinate when progress events carry an estimate,
    a pulsing bar with the step's state (or "waiting for the first row") otherwise."""

    def __init__(self, target: Target) -> None:
        console = stderr_console()
        self.partition = target.partition_key
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<12}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            # only on a terminal (TTY_COMPATIBLE=1 forces it): logs and pipes get no frames
            disable=not console.is_terminal,
        )
        self.tasks: dict[str, TaskID] = {
            name: self.progress.add_task(name, total=None, detail="waiting for the run")
            for name in target.datasets
        }

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def started(self, run_id: str) -> None:
        for task in self.tasks.values():
            self.progress.update(task, detail=f"run {run_id[:8]} started")

    def update(self, state: RunProgress) -> None:
        for name, task in self.tasks.items():
            step = state.steps.get(name)
            report = state.report(name, self.partition)
            md = state.materialized.get(name)
            if md is not None or step == "done":
                rows = md.get("dagster/row_count") if md else None
                size = md.get("size_bytes") if md else None
                detail = "done" if rows is None else f"{rows:,} rows, {human_bytes(size)}"
                self.progress.update(task, total=1, completed=1, detail=detail)
            elif step == "failed":
                error = first_line(state.error(name, self.partition))
                self.progress.update(task, total=1, completed=0, detail=f"failed: {error}")
            elif report is not None:
                total = None if report.waiting_for_first_row else report.estimated_rows
                self.progress.update(
                    task,
                    total=max(total, report.rows) if total else None,
                    completed=report.rows,
                    detail=report.describe(),
                )
            elif step is not None:
                self.progress.update(task, detail=step)
