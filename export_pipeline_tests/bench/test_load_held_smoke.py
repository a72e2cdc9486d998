"""bench/load_held.py still runs end to end (tiny, seconds): it is not part of the figures."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_load_held_smoke(pg_server: str) -> None:
    assert shutil.which("pgbench") and shutil.which("psql"), "pgbench and psql must be installed"
    prefix = f"export_test_lh_{uuid.uuid4().hex[:8]}"
    args = ["--dsn", pg_server, "--db-prefix", prefix, "--drop", "--scale", "1"]
    args += ["--rows", "20000", "--capacity-seconds", "2", "--seconds", "2", "--exports", "1@1"]
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "load_held.py"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "capacity (unthrottled):" in proc.stdout
    [row] = [line for line in proc.stdout.splitlines() if line.startswith("| 1 exports")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "1 exports, 1 MiB/s each" and cells[-1] in {"met", "MISSED"}
    assert float(cells[2]) > 0  # loaded tps
    with psycopg.connect(pg_server) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
        ).fetchall()
    assert left == []
