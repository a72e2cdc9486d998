"""`dg check defs` and `dg list defs` work in the repository root, as docs/operations.md says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).with_name("dg")
pytestmark = pytest.mark.slow


def run_dg(args: list[str], tmp_path: Path, demo_dsn: str) -> subprocess.CompletedProcess[str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("EXPORT_", "DAGSTER_"))
    }
    env.update(
        {
            # this checkout's package, even if another copy is installed in the environment
            "PYTHONPATH": str(REPO_ROOT),
            "EXPORT_SOURCE_DSN": demo_dsn,
            "EXPORT_STORAGE_DIR": str(tmp_path / "storage"),
        }
    )
    return subprocess.run(
        [str(DG), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_dg_check_defs(tmp_path: Path, demo_dsn: str) -> None:
    proc = run_dg(["check", "defs"], tmp_path, demo_dsn)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr
    assert demo_dsn not in proc.stdout + proc.stderr


def test_dg_list_defs(tmp_path: Path, demo_dsn: str) -> None:
    proc = run_dg(["list", "defs", "--json"], tmp_path, demo_dsn)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = json.loads(proc.stdout)
    assert sorted(a["asset_key"] for a in listed["assets"]) == [
        "exports/events",
        "exports/invoices",
        "exports/orders",
        "exports_manifest",
    ]
    assert "customers_sensor" in [s["name"] for s in listed["sensors"]]
    assert listed["schedules"] == [
        {"name": "monthly_exports_schedule", "cron_schedule": "0 2 1 * *"}
    ]
    assert {j["name"] for j in listed["jobs"]} >= {"monthly_exports_job"}
