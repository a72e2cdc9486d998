"""`export-pipeline run CUSTOMER MONTH [--dataset NAME ...]`: one customer-month, as the UI would.

It wraps Dagster's own command, `dagster asset materialize -m export_pipeline.definitions
--select ... --partition CUSTOMER|YYYY-MM-01`, in a child process: the run, its events and its
materializations go to the instance of $DAGSTER_HOME exactly as Dagster records them, and
nothing of Dagster's execution is re-implemented here. The run executes inside the child (the
code location's executor is in process).

Most of a small run's wall time is start-up: Python, Dagster and the code location in the
child. So the child starts as soon as the arguments' syntax is checked, and this module
imports nothing heavy; `follow.py`, imported once the child runs, checks the target against
the spec, the storage settings and the instance meanwhile (stopping the child if it is wrong:
the child would refuse the same target, before creating a run), then follows the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from export_pipeline.cli.common import parse_customer, parse_month, require_dagster_home
from export_pipeline.partitions import Month, partition_key

# Every dataset: the whole `exports` group (defs/assets.py EXPORTS_GROUP), every export asset
# and the manifest, so the customer-month ends with its manifest.json (an export withdraws it).
EVERY_DATASET_SELECTION = "group:exports"
STOP_SECONDS = 60.0  # after Ctrl-C, the child's time to end the run before SIGKILL


@dataclass(frozen=True)
class Request:
    """What was asked for, its syntax checked: nothing is known yet about the spec or the
    instance. No datasets named: every dataset, and the manifest."""

    customer: str
    month: Month
    datasets: list[str]

    @property
    def partition_key(self) -> str:
        return partition_key(self.customer, self.month)


def command(args: argparse.Namespace) -> int:
    request = Request(
        parse_customer(args.customer),
        parse_month(args.month),
        list(dict.fromkeys(args.datasets or ())),
    )
    require_dagster_home()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="export-pipeline-run-") as tmp:
            log_path = Path(tmp) / "dagster.log"
            started = time.time()
            with log_path.open("wb") as log:
                # its own session: a Ctrl-C reaches this process only, which stops the child once
                child = subprocess.Popen(
                    materialize_command(request),
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            try:
                # Imported now, while the child starts: Dagster's import costs this process
                # about as much as the child's, and the two overlap.
                from export_pipeline.cli import follow

                return follow.follow_run(args, request, child, started)
            finally:
                if child.poll() is None:  # an unexpected error: leave no export behind
                    stop(child)
                if args.verbose:
                    sys.stderr.write(log_path.read_text(errors="replace")[-20_000:])
    finally:
        signal.signal(signal.SIGTERM, previous)


def materialize_command(request: Request) -> list[str]:
    if request.datasets:
        selection = ",".join(f"exports/{name}" for name in request.datasets)
    else:
        selection = EVERY_DATASET_SELECTION
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
        request.partition_key,
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop(child: subprocess.Popen[bytes]) -> None:
    """SIGINT, as a Ctrl-C would: Dagster ends the run and records it; SIGKILL to the child's
    process group if it has not exited after STOP_SECONDS."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        discard(child)


def discard(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the child's process group: only for a child that has not created a run
    (a target it would refuse too), or one that did not stop on SIGINT."""
    with contextlib.suppress(ProcessLookupError):  # the group may be gone already
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()
