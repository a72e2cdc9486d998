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
    assert "progress cost (medians of interleaved rounds; goal < 1%):" in out
    assert "parquet zstd + progress" in out and "csv + progress" in out
