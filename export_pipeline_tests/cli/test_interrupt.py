"""Ctrl-C or SIGTERM on `run`: a real signal to the command while its export is in progress."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from export_pipeline_tests.cli.conftest import REPO_ROOT, make_cli, one_line

pytestmark = pytest.mark.slow
SLOW_DATASET = """
  slow:
    sql: |
      SELECT e.customer_id, e.occurred_at
      FROM public.events AS e, pg_sleep(30)
      WHERE e.customer_id = %(customer)s
        AND e.occurred_at >= %(month_start)s AND e.occurred_at < %(month_end)s
    customer_column: customer_id
    format: csv
    compression: none
"""
PARTITION = "3|2025-07-01"


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_export_and_exits_130(
    tmp_path: Path, demo_dsn: str, signum: signal.Signals
) -> None:
    spec = tmp_path / "exports.yaml"
    spec.write_text((REPO_ROOT / "exports.yaml").read_text() + SLOW_DATASET)
    cli = make_cli(
        tmp_path,
        ["3"],
        EXPORT_SOURCE_DSN=demo_dsn,
        EXPORT_STORAGE_DIR=str(tmp_path / "storage"),
        EXPORT_SPEC=str(spec),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "export_pipeline.cli", "run", "3", "2025-07", "--dataset", "slow"],
        env=cli.env,
        cwd=cli.home.parent,  # as the Cli runs it: no .env but the test's own
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        with cli.instance() as instance:
            deadline = time.monotonic() + 240
            run_id = None
            while run_id is None:  # the export's step has started (and sleeps in pg_sleep)
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the export never started"
                for run in instance.get_runs(dg.RunsFilter(tags={"dagster/partition": PARTITION})):
                    starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
                    if starts:
                        run_id = run.run_id
                time.sleep(0.2)
            os.kill(proc.pid, signum)
            _out, err = proc.communicate(timeout=180)
            assert proc.returncode == 130, err
            assert one_line(err).startswith(f"export-pipeline run: interrupted; run {run_id} ")
            run = instance.get_run_by_id(run_id)
            assert run is not None
            assert run.status in {dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE}
        assert _processes_with(PARTITION) == []  # the child and its step processes are gone
        assert not (tmp_path / "storage" / "exports" / "3" / "2025-07" / "slow.csv").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
