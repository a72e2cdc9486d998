"""`export-pipeline run CUSTOMER MONTH [--dataset NAME ...]`: one customer-month, as the UI would.

It wraps Dagster's own command, `dagster asset materialize -m export_pipeline.definitions
--select exports/<dataset>,... --partition CUSTOMER|YYYY-MM-01`, in a child process: the run,
its events and its materializations go to the instance of $DAGSTER_HOME exactly as Dagster
records them, and nothing of Dagster's execution is re-implemented here. Meanwhile this process
polls the run's event log for step states and progress events and draws a progress bar; at the
end it prints what each dataset delivered, read back from the run's materializations.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from export_pipeline.cli.common import (
    EXIT_OK,
    CliError,
    Target,
    check_customer,
    check_datasets,
    check_month,
    first_line,
    open_instance,
    parse_month,
    read_spec,
)
from export_pipeline.cli.output import human_bytes, print_json, print_table, stderr_console
from export_pipeline.cli.progress import RunProgress
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.settings import exports_io_manager

PARTITION_TAG = "dagster/partition"
POLL_SECONDS = 0.5
STOP_SECONDS = 60.0  # after Ctrl-C, the child's time to end the run before SIGKILL
EXIT_INTERRUPTED = 130
FIND_RUN_SECONDS = 120.0  # the child must have created its run by then (it loads the code first)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="export one customer-month now, with a progress bar",
        description="Export one customer-month (all datasets, or those named) through "
        "`dagster asset materialize`, recording the run and its materializations in the "
        "instance of $DAGSTER_HOME, as the UI would.",
        epilog="examples:\n"
        "  export-pipeline run 3 2025-03\n"
        "  export-pipeline run 3 2025-03 --dataset orders --dataset invoices\n"
        "  export-pipeline run 3 2025-03 --json > delivered.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("customer", help="a customer key (a 'customers' partition)")
    parser.add_argument("month", help="YYYY-MM")
    parser.add_argument(
        "--dataset", action="append", dest="datasets", metavar="NAME", help="repeatable"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    spec = read_spec()
    month = check_month(spec, parse_month(args.month))
    datasets = check_datasets(spec, args.datasets)
    exports_io_manager(os.environ)  # storage must be configured, or the code cannot load
    with open_instance() as instance:
        # Every dataset: the manifest too (an export withdraws it); some: it stays withdrawn.
        everything = set(datasets) == set(spec.datasets)
        target = Target(check_customer(instance, args.customer), month, datasets, everything)
        run, state = execute(instance, target, verbose=args.verbose)
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
        if not errors:
            errors = [first_line(state.run_error) or "no step reported an error"]
        raise CliError(
            f"{target.partition_key}: run {run.run_id} {run.status.value}; {'; '.join(errors)}"
        )
    return EXIT_OK


def selected_assets(target: Target) -> set[dg.AssetKey]:
    """The exports of the target's datasets, and the manifest when it is asked for."""
    keys = {dg.AssetKey(["exports", name]) for name in target.datasets}
    return keys | {MANIFEST_ASSET_KEY} if target.manifest else keys


def materialize_command(target: Target) -> list[str]:
    selection = ",".join(key.to_user_string() for key in selected_assets(target))
    return [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "export_pipeline.definitions",
        "--select",
        selection,
        "--partition",
        target.partition_key,
    ]


def execute(
    instance: dg.DagsterInstance, target: Target, verbose: bool
) -> tuple[dg.DagsterRun, RunProgress]:
    """Run the child, follow its run; the finished run and what its event log said."""
    before = {r.run_id for r in partition_runs(instance, target.partition_key)}
    started = datetime.now(UTC).timestamp()
    with tempfile.TemporaryDirectory(prefix="export-pipeline-run-") as tmp:
        log_path = Path(tmp) / "dagster.log"
        with log_path.open("wb") as log:
            # its own session: a Ctrl-C reaches this process only, which stops the child once
            child = subprocess.Popen(
                materialize_command(target), stdout=log, stderr=log, start_new_session=True
            )
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            run, state = follow(instance, target, child, before, started)
        except KeyboardInterrupt:
            stop(child)
            run_id = find_new_run(instance, target, before, started)
            run = instance.get_run_by_id(run_id) if run_id else None
            raise CliError(
                f"interrupted; run {run.run_id} {run.status.value}"
                if run is not None
                else "interrupted before the run started",
                EXIT_INTERRUPTED,
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            if child.poll() is None:  # an unexpected error here: leave no export behind
                stop(child)
            if verbose:
                sys.stderr.write(log_path.read_text(errors="replace")[-20_000:])
    if run is None:
        raise CliError(
            f"{target.partition_key}: `dagster asset materialize` exited with "
            f"{child.returncode} before starting a run (rerun with --verbose for its output)"
        )
    return run, state


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop(child: subprocess.Popen[bytes]) -> None:
    """SIGINT, as a Ctrl-C would: Dagster ends the run and records it; SIGKILL to the child's
    process group (its step processes too) if it has not exited after STOP_SECONDS."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def follow(
    instance: dg.DagsterInstance,
    target: Target,
    child: subprocess.Popen[bytes],
    before: set[str],
    started: float,
) -> tuple[dg.DagsterRun | None, RunProgress]:
    run_id: str | None = None
    state = RunProgress(run_id="")
    deadline = time.monotonic() + FIND_RUN_SECONDS
    with ProgressView(target.datasets) as view:
        while True:
            exited = child.poll() is not None
            if run_id is None:
                run_id = find_new_run(instance, target, before, started)
                if run_id is not None:
                    state = RunProgress(run_id)
                    view.started(run_id)
                elif exited or time.monotonic() > deadline:
                    return None, state
            if run_id is not None:
                state.read(instance)
                view.update(state)
            if exited:
                break
            time.sleep(POLL_SECONDS)  # a display refresh interval, not synchronisation
    run = instance.get_run_by_id(run_id) if run_id else None
    return run, state


def partition_runs(instance: dg.DagsterInstance, key: str, limit: int = 50) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: key}), limit=limit))


def find_new_run(
    instance: dg.DagsterInstance, target: Target, before: set[str], started: float
) -> str | None:
    """The run the child created: new, for this partition and exactly these assets."""
    wanted = selected_assets(target)
    runs = instance.get_runs(
        dg.RunsFilter(
            tags={PARTITION_TAG: target.partition_key},
            created_after=datetime.fromtimestamp(started - 5, UTC),
        ),
        limit=20,
    )
    for run in runs:  # newest first
        if run.run_id not in before and set(run.asset_selection or ()) == wanted:
            return run.run_id
    return None


def summary(target: Target, run: dg.DagsterRun, state: RunProgress) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in target.datasets:
        md = state.materialized.get(name)
        step = state.steps.get(name)
        if md is not None:
            status = "done"
        elif name in state.errors or step in ("failed", "running", "retrying"):
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
        if name in state.errors:
            row["error"] = first_line(state.errors[name])
        rows.append(row)
    return rows


class ProgressView:
    """A bar per dataset on stderr: determinate when progress events carry an estimate,
    a pulsing bar with the step's state otherwise."""

    def __init__(self, datasets: Sequence[str]) -> None:
        console = stderr_console()
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
            for name in datasets
        }

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def started(self, run_id: str) -> None:
        for task in self.tasks.values():
            self.progress.update(task, detail=f"run {run_id[:8]} queued")

    def update(self, state: RunProgress) -> None:
        for name, task in self.tasks.items():
            step = state.steps.get(name)
            report = state.progress.get(name)
            md = state.materialized.get(name)
            if md is not None or step == "done":
                rows = md.get("dagster/row_count") if md else None
                size = md.get("size_bytes") if md else None
                detail = "done" if rows is None else f"{rows:,} rows, {human_bytes(size)}"
                self.progress.update(task, total=1, completed=1, detail=detail)
            elif step == "failed":
                error = first_line(state.errors.get(name))
                self.progress.update(task, total=1, completed=0, detail=f"failed: {error}")
            elif report is not None:
                total = report.estimated_rows
                self.progress.update(
                    task,
                    total=max(total, report.rows) if total else None,
                    completed=report.rows,
                    detail=report.describe(),
                )
            elif step is not None:
                self.progress.update(task, detail=step)
