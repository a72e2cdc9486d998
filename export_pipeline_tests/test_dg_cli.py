"""`dg check defs` and `dg list defs` work in the repository root, as docs/operations.md says;
with the environment from the `.env` localdev writes; without it, one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from export_pipeline.localdev import write_dotenv
from export_pipeline_tests.test_localdev import checkout_copy

REPO_ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).with_name("dg")
pytestmark = pytest.mark.slow
EXPORT_ASSETS = ["exports/events", "exports/invoices", "exports/orders", "exports_manifest"]


def _clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without EXPORT_* and DAGSTER_*, plus `variables`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("EXPORT_", "DAGSTER_"))
    }
    env.update(variables)
    return env


def dg(args: list[str], cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DG), *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_dg(args: list[str], tmp_path: Path, demo_dsn: str) -> subprocess.CompletedProcess[str]:
    env = _clean_env(
        # this checkout's package, even if another copy is installed in the environment
        PYTHONPATH=str(REPO_ROOT),
        EXPORT_SOURCE_DSN=demo_dsn,
        EXPORT_STORAGE_DIR=str(tmp_path / "storage"),
    )
    return dg(args, REPO_ROOT, env)


def test_dg_check_defs(tmp_path: Path, demo_dsn: str) -> None:
    proc = run_dg(["check", "defs"], tmp_path, demo_dsn)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr
    assert demo_dsn not in proc.stdout + proc.stderr


def test_dg_list_defs(tmp_path: Path, demo_dsn: str) -> None:
    proc = run_dg(["list", "defs", "--json"], tmp_path, demo_dsn)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = json.loads(proc.stdout)
    assert sorted(a["asset_key"] for a in listed["assets"]) == EXPORT_ASSETS
    assert "customers_sensor" in [s["name"] for s in listed["sensors"]]
    assert listed["schedules"] == [
        {"name": "monthly_exports_schedule", "cron_schedule": "0 2 1 * *"}
    ]
    # monthly_exports_job is gone (issue 15): the schedule and sensors run exports_job
    assert {j["name"] for j in listed["jobs"]} >= {"exports_job"}
    assert "monthly_exports_job" not in {j["name"] for j in listed["jobs"]}


def test_dg_list_defs_reads_the_dotenv_localdev_writes(tmp_path: Path, demo_dsn: str) -> None:
    """In a checkout whose `.env` localdev wrote (as `up` does), plain `dg list defs` with
    nothing set loads the code location: Dagster reads `.env` from the project root. Without
    it, the missing storage is one line, not a trace."""
    root = checkout_copy(tmp_path / "checkout")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # as if activated: dg warns when the active environment is not the project's .venv
    env = _clean_env(VIRTUAL_ENV=str(root / ".venv"))

    bare = dg(["list", "defs"], root, env)
    assert bare.returncode == 1
    lines = [line for line in bare.stderr.splitlines() if line.strip()]
    assert lines == [
        "Error: export_pipeline: no export storage configured: set EXPORT_S3_BUCKET (S3) or "
        "EXPORT_STORAGE_DIR (a local folder)"
    ], bare.stderr

    write_dotenv(
        root / ".env",
        {
            "DAGSTER_HOME": str(home),
            "EXPORT_SOURCE_DSN": demo_dsn,
            "EXPORT_STORAGE_DIR": str(tmp_path / "storage"),
        },
    )
    proc = dg(["list", "defs", "--json"], root, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = json.loads(proc.stdout)
    assert sorted(a["asset_key"] for a in listed["assets"]) == EXPORT_ASSETS
    assert demo_dsn not in proc.stdout + proc.stderr
