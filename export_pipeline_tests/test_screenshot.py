"""scripts/screenshot.py runs end to end and writes a PNG of the UI (needs /usr/bin/chromium)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = 1440, 900


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    length, chunk = struct.unpack(">I4s", data[8:16])
    assert chunk == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_screenshot_script_writes_the_ui_png(tmp_path: Path, demo_dsn: str) -> None:
    out = tmp_path / "shot.png"
    args = [sys.executable, str(REPO_ROOT / "scripts" / "screenshot.py"), "--out", str(out)]
    args += ["--source-dsn", demo_dsn, "--partition", "2|2025-02-01"]
    done = subprocess.run(
        args,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # The script itself waits until the page shows the metadata keys (row count, size_bytes,
    # sha256, uri) and fails if the community dialog is on the page.
    assert done.returncode == 0, done.stderr[-4000:]
    data = out.read_bytes()
    assert png_size(data) == (WIDTH, HEIGHT)
    assert len(data) > 20_000, "a blank page compresses to a few kB"
