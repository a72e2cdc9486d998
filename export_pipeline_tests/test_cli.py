"""Materialize through Dagster's own CLI, in a subprocess, configured only by environment."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from export_pipeline_tests.helpers import list_keys

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_dagster_asset_materialize_cli(
    tmp_path: Path, demo_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("customers", ["3"])
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "EXPORT_SOURCE_DSN": demo_dsn,
        "EXPORT_SPEC": str(REPO_ROOT / "exports.yaml"),
        "EXPORT_S3_BUCKET": bucket,
        "EXPORT_S3_ENDPOINT_URL": s3_endpoint,
        "EXPORT_S3_PREFIX": "deliveries",
        "EXPORT_LINK_TTL_SECONDS": "3600",
    }
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [
            str(dagster),
            "asset",
            "materialize",
            "-m",
            "export_pipeline.definitions",
            "--select",
            "exports/orders",
            "--partition",
            "3|2025-03-01",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list_keys(s3_client, bucket) == ["deliveries/3/2025-03/orders.jsonl"]
    data = s3_client.get_object(Bucket=bucket, Key="deliveries/3/2025-03/orders.jsonl")[
        "Body"
    ].read()
    assert demo_dsn not in proc.stdout + proc.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["exports", "orders"]))
        assert event is not None and event.asset_materialization is not None
        md = event.asset_materialization.metadata
        assert md["sha256"].value == hashlib.sha256(data).hexdigest()
        assert md["dagster/row_count"].value == data.count(b"\n")
        assert "X-Amz-Expires=3600" in str(md["download_url"].value)
