"""The benchmark still runs end to end (tiny, one round): it is not part of the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _bench(dsn: str, *args: str) -> str:
    return _run("run.py", "--dsn", dsn, "--rows", "3000", "--rounds", "1", *args)


def test_benchmark_smoke(scratch_dsn: str) -> None:
    out = _bench(scratch_dsn, "--quick")
    assert "3,000 rows" in out
    for case in ("parquet zstd", "csv gzip", "jsonl", "psql row_to_json > /dev/null"):
        assert f"\n{case} " in out, out
    assert "parquet zstd   / psql COPY BINARY > /dev/null" in out
    assert "(floor) psql row_to_json > /dev/null / psql COPY CSV > /dev/null" in out
    assert "parquet zstd / parquet zstd, group per batch = " in out
    # each engine case timed its own export too: the ratio without the interpreter's start
    [parquet] = [line for line in out.splitlines() if line.startswith("  parquet zstd   / psql")]
    assert "export alone " in parquet, out
    # the reader benchmark read both Parquet files back with pyarrow and DuckDB
    assert "readers (median of 3" in out, out
    assert "\nbefore: group per batch " in out and "\nafter: 128k-row groups " in out, out


def test_progress_cost_benchmark_smoke(scratch_dsn: str) -> None:
    out = _bench(scratch_dsn, "--progress")
    for case in ("parquet zstd", "parquet zstd + progress", "csv", "csv + progress"):
        assert f"\n{case} " in out, out
    assert "progress cost (medians of interleaved rounds; goal < 1%;" in out
    for what in ("wall      ", "client CPU"):
        assert f"  {what} parquet zstd + progress  / parquet zstd  = " in out, out
        assert f"  {what} csv + progress           / csv           = " in out, out
    # The parts, in process, on the table the run above seeded.
    parts = _run("progress_cost.py", "--dsn", scratch_dsn, "--rows-limit", "3000", "--rounds", "2")
    assert "ExportMeter.update, per Arrow batch or COPY chunk: " in parts, parts
    assert "ProgressReporter start + close (its thread): " in parts, parts
    assert "build the report: " in parts and "hand it to the Dagster adapter" in parts, parts
    assert "COPY loop client CPU over 3,000 rows, 2 interleaved rounds:" in parts, parts


def test_ratio_costs_smoke(scratch_dsn: str) -> None:
    """Issue 16: every variant beside the baselines of the same run, then the parts."""
    out = _bench(scratch_dsn, "--ratio-costs", "--session-exports", "2", "--ratio-repeat", "2")
    ratios = out[out.index("ratio costs (issue 16)") :]
    cases = {line.split("  ")[1].strip() for line in ratios.splitlines() if line.startswith("  ")}
    for fmt in ("parquet zstd", "csv"):
        for variant in (
            ", parallel",
            ", no session check",
            " + progress",
            ", as a step",
            ", 2 exports, one session",
            ", 2 exports, new sessions",
        ):
            assert fmt + variant in cases, (fmt + variant, ratios)
    for case in (
        "parquet zstd, 65,536-row groups",
        "parquet zstd, 262,144-row groups",
        "psql COPY BINARY > /dev/null, engine session",
        "psql COPY CSV > file, engine session",
        "python + imports, no export",
    ):
        assert case in cases, (case, ratios)
    assert "fixed costs of an export, in process" in out, out
    for part in ("ADBC connect (a new backend)", "1-row export, parquet, reused session"):
        assert part in out, out
    assert "% COPY BINARY" in out and "% COPY CSV" in out  # against the run's own baselines


def test_case_variants_do_what_they_say(scratch_dsn: str, tmp_path: Path) -> None:
    """The `parallel` variant's sessions run with the server's defaults; `reuse` reads every
    export on one session (psycopg + ADBC), `new` opens both for each export."""
    _bench(scratch_dsn, "--only", "psql COPY BINARY")  # seeds `events`

    def case(*args: str) -> dict:
        argv = ["--dsn", scratch_dsn, "--format", "parquet", "--compression", "zstd"]
        return json.loads(_run("case.py", *argv, "--out", str(tmp_path), *args))

    plain = case("--show-settings")
    parallel = case("--variant", "parallel", "--show-settings")
    assert plain["settings"] == {"parallel_workers": "0", "synchronize_seqscans": "off"}
    assert parallel["settings"]["parallel_workers"] != "0"
    assert parallel["settings"]["synchronize_seqscans"] == "on"
    assert plain["rows"] == parallel["rows"] == 3000
    reused = case("--exports", "3", "--session", "reuse")
    new = case("--exports", "3", "--session", "new")
    assert (reused["connects"], new["connects"]) == (2, 6)
    assert reused["rows"] == new["rows"] == 9000 and len(reused["exports"]) == 3


def test_dagster_overhead_smoke(scratch_dsn: str) -> None:
    _bench(scratch_dsn, "--only", "psql COPY BINARY")  # seeds `events`
    out = _run("dagster_overhead.py", "--dsn", scratch_dsn, "--small", "2", "--rounds", "1")
    assert "engine alone " in out and "Dagster adds " in out, out
    assert "2 partitions of 1,000 rows (CSV, local storage), per partition:" in out, out
    assert "all 2 at once: engine on one session " in out and "one ranged Dagster run" in out
