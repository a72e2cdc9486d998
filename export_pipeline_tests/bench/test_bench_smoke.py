"""The benchmark still runs end to end (tiny, one round): it is not part of the figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_benchmark_smoke(scratch_dsn: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "run.py"),
            "--dsn",
            scratch_dsn,
            "--rows",
            "3000",
            "--rounds",
            "1",
            "--quick",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "3,000 rows" in out
    for case in ("parquet zstd", "csv gzip", "jsonl", "psql row_to_json > /dev/null"):
        assert f"\n{case} " in out, out
    assert "parquet zstd   / psql COPY BINARY > /dev/null" in out
    assert "(floor) psql row_to_json > /dev/null / psql COPY CSV > /dev/null" in out
    assert "parquet zstd / parquet zstd, group per batch = " in out
    # the reader benchmark read both Parquet files back with pyarrow and DuckDB
    assert "readers (median of 3" in out, out
    assert "\nbefore: group per batch " in out and "\nafter: 128k-row groups " in out, out


def test_progress_cost_benchmark_smoke(scratch_dsn: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "run.py"),
            "--dsn",
            scratch_dsn,
            "--rows",
            "3000",
            "--rounds",
            "1",
            "--progress",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for case in ("parquet zstd", "parquet zstd + progress", "csv", "csv + progress"):
        assert f"\n{case} " in out, out
    assert "progress cost (medians of interleaved rounds; goal < 1%;" in out
    for what in ("wall      ", "client CPU"):
        assert f"  {what} parquet zstd + progress  / parquet zstd  = " in out, out
        assert f"  {what} csv + progress           / csv           = " in out, out
    # The parts, in process, on the table the run above seeded.
    parts = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "progress_cost.py"),
            "--dsn",
            scratch_dsn,
            "--rows-limit",
            "3000",
            "--rounds",
            "2",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert parts.returncode == 0, parts.stderr[-3000:]
    assert "ProgressMeter.update, no report due: " in parts.stdout, parts.stdout
    assert "on the export's thread, written " in parts.stdout, parts.stdout
    assert "COPY loop client CPU over 3,000 rows, 2 interleaved rounds:" in parts.stdout
