from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.io_managers.exports import (
    EXPORTS_IO_MANAGER_KEY,
    LocalExportIOManager,
    S3ExportIOManager,
)
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.s3 import MIN_PART_SIZE

KEY = dg.MultiPartitionKey({"customer": "2", "month": "2025-03-01"})


def _materialize(
    spec: ExportSpec,
    dataset: str,
    storage: dg.ConfigurableIOManager,
    dsn: str,
    key: dg.MultiPartitionKey = KEY,
) -> dict[str, Any]:
    asset = build_export_asset(
        spec.datasets[dataset],
        build_export_partitions_def(spec.months_start),
        retry_policy=None,  # failures here fail at once (retries: defs/test_retries.py)
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["2"])
        result = dg.materialize(
            [asset],
            partition_key=key,
            instance=instance,
            resources={"source": PostgresSourceResource(dsn=dsn), EXPORTS_IO_MANAGER_KEY: storage},
            raise_on_error=False,
        )
        if not result.success:
            failure = result.get_step_failure_events()[0].step_failure_data.error
            raise AssertionError(failure.message if failure else "run failed")
        [mat] = result.asset_materializations_for_node(f"exports__{dataset}")
        return {k: v.value for k, v in mat.metadata.items()}


def test_materialization_into_s3_reports_what_was_delivered(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    storage = S3ExportIOManager(
        s3=ExportS3Resource(endpoint_url=s3_endpoint), bucket=bucket, part_size_bytes=MIN_PART_SIZE
    )
    md = _materialize(demo_spec, "events", storage, demo_dsn)
    body = s3_client.get_object(Bucket=bucket, Key="exports/2/2025-03/events.parquet")["Body"]
    data = body.read()
    assert md["uri"] == f"s3://{bucket}/exports/2/2025-03/events.parquet"
    assert md["sha256"] == hashlib.sha256(data).hexdigest()
    assert md["size_bytes"] == len(data)
    assert md["dagster/row_count"] > 0
    assert md["format"] == "parquet" and md["compression"] == "zstd"
    assert "csv_formula_guard" not in md
    assert [c.name for c in md["dagster/column_schema"].columns][:3] == [
        "id",
        "customer_id",
        "occurred_at",
    ]
    assert md["duration_seconds"] > 0 and md["rows_per_second"] > 0
    assert md["download_url_expires_at"] > 0
    with urllib.request.urlopen(md["download_url"]) as response:
        assert response.read() == data


def test_materialization_into_local_folder(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    storage = LocalExportIOManager(base_dir=str(tmp_path))
    md = _materialize(demo_spec, "invoices", storage, demo_dsn)
    path = Path(md["uri"])
    assert path == tmp_path / "exports/2/2025-03/invoices.csv.gz"
    assert md["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert md["dagster/row_count"] == 4  # one invoice a week
    assert "download_url" not in md
    assert md["csv_formula_guard"] is False and md["unrepresentable"] == "fail"


def test_failure_is_one_clear_message(demo_spec: ExportSpec, tmp_path: Path) -> None:
    storage = LocalExportIOManager(base_dir=str(tmp_path))
    with pytest.raises(AssertionError, match="cannot connect to the source database") as info:
        _materialize(demo_spec, "events", storage, "postgresql://u:pw-123@127.0.0.1:1/x")
    assert "pw-123" not in str(info.value)
    assert "exports/events 2|2025-03-01" in str(info.value)  # names the partition
    assert "transient, may be retried" in str(info.value)  # connection refused may pass
    assert not any(tmp_path.rglob("*.parquet"))
