"""One customer-month of an export asset, materialized in process: what it records, where the
file goes, and how a failure reads."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg

from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.spec import ExportSpec
from export_pipeline_tests.defs.run_helpers import UNREACHABLE_SOURCE
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
    recorded,
    s3_storage,
    step_failures,
)

PARTITION = "2|2025-03-01"


def _materialize_one(
    spec: ExportSpec, dataset: str, resources: dict[str, Any]
) -> tuple[dg.ExecuteInProcessResult, dict[str, Any]]:
    defs = export_definitions(spec, resources, manifest=False)
    with fresh_instance() as instance:
        add_customers(instance, ["2"])
        result = materialize(instance, defs, PARTITION, selection=[export_asset_key(dataset)])
        return result, recorded(instance, dataset, PARTITION) or {}


def test_materialization_into_s3_reports_what_was_delivered(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    result, md = _materialize_one(
        demo_spec, "events", export_resources(demo_dsn, s3_storage(s3_endpoint, bucket))
    )
    assert result.success
    # exactly one materialization of the partition, the one Dagster records for the output
    [event] = result.asset_materializations_for_node("exports__events")
    assert event.partition == PARTITION
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
    assert md["snapshot_at"] > 0
    assert md["download_url_expires_at"] > 0
    with urllib.request.urlopen(md["download_url"]) as response:
        assert response.read() == data


def test_materialization_into_local_folder(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    result, md = _materialize_one(
        demo_spec, "invoices", export_resources(demo_dsn, local_storage(tmp_path))
    )
    assert result.success
    path = Path(md["uri"])
    assert path == tmp_path / "exports/2/2025-03/invoices.csv.gz"
    assert md["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert md["dagster/row_count"] == 4  # one invoice a week
    assert "download_url" not in md
    assert md["csv_formula_guard"] is False and md["unrepresentable"] == "fail"


def test_failure_is_one_clear_message_and_a_transient_one_is_retried_by_dagster(
    demo_spec: ExportSpec, tmp_path: Path
) -> None:
    """Nothing delivered yet (the source is unreachable): the step fails as a whole, naming the
    partition, and Dagster applies the asset's RetryPolicy (FAST_RETRY: 2 retries)."""
    result, md = _materialize_one(
        demo_spec, "events", export_resources(UNREACHABLE_SOURCE, local_storage(tmp_path))
    )
    assert not result.success and md == {}
    message = step_failures(result)["exports__events"]
    assert "cannot connect to the source database" in message
    assert "pw-source-123" not in message
    assert f"exports/events {PARTITION}" in message  # names the partition
    assert "transient, may be retried" in message  # connection refused may pass
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 2
    assert not any(tmp_path.rglob("*.parquet"))
