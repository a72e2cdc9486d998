"""The export IO manager: writes through the atomic writers, loads handles downstream."""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.engine import ExportStream
from export_pipeline.io_managers.exports import (
    EXPORTS_IO_MANAGER_KEY,
    LocalExportIOManager,
    S3ExportIOManager,
)
from export_pipeline.partitions import Month
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.files import StoredFile, StoredFileError
from export_pipeline.storage.s3 import MIN_PART_SIZE
from export_pipeline_tests.helpers import list_keys, pending_uploads

KEY = dg.MultiPartitionKey({"customer": "4", "month": "2025-05-01"})


def _s3_manager(endpoint: str, bucket: str) -> S3ExportIOManager:
    return S3ExportIOManager(
        s3=ExportS3Resource(endpoint_url=endpoint), bucket=bucket, part_size_bytes=MIN_PART_SIZE
    )


def _run_with_downstream(
    spec: ExportSpec, dataset: str, manager: dg.ConfigurableIOManager, dsn: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Materialize the export and a downstream asset that loads it; return both views."""
    pdef = build_export_partitions_def(spec.months_start)
    export = build_export_asset(spec.datasets[dataset], pdef)
    seen: dict[str, Any] = {}

    @dg.asset(
        partitions_def=pdef,
        ins={"delivered": dg.AssetIn(key=export.key, input_manager_key=EXPORTS_IO_MANAGER_KEY)},
    )
    def delivery_check(delivered: StoredFile) -> None:
        with delivered.open() as stream:
            seen["sha256"] = hashlib.sha256(stream.read()).hexdigest()
        seen["file"] = delivered
        if delivered.format.value == "parquet":
            seen["table_rows"] = delivered.read_table().num_rows
            seen["columns"] = delivered.dataset().schema.names

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["4"])
        result = dg.materialize(
            [export, delivery_check],
            partition_key=KEY,
            instance=instance,
            resources={"source": PostgresSourceResource(dsn=dsn), EXPORTS_IO_MANAGER_KEY: manager},
        )
        [mat] = result.asset_materializations_for_node(f"exports__{dataset}")
        return {k: v.value for k, v in mat.metadata.items()}, seen


def test_downstream_asset_loads_an_s3_export(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str
) -> None:
    recorded, seen = _run_with_downstream(
        demo_spec, "events", _s3_manager(s3_endpoint, bucket), demo_dsn
    )
    delivered: StoredFile = seen["file"]
    assert delivered.uri == recorded["uri"] == f"s3://{bucket}/exports/4/2025-05/events.parquet"
    assert seen["sha256"] == recorded["sha256"] == delivered.sha256
    assert delivered.size_bytes == recorded["size_bytes"]
    assert delivered.row_count == recorded["dagster/row_count"] == seen["table_rows"] > 0
    assert seen["columns"][:2] == ["id", "customer_id"]
    # A fresh link, signed now, that the SigV4-checking endpoint accepts.
    link = delivered.presign(120)
    assert "X-Amz-Expires=120" in link.url and "X-Amz-Signature=" in link.url
    with urllib.request.urlopen(link.url) as response:
        assert hashlib.sha256(response.read()).hexdigest() == recorded["sha256"]


def test_downstream_asset_loads_a_local_export(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    recorded, seen = _run_with_downstream(
        demo_spec, "invoices", LocalExportIOManager(base_dir=str(tmp_path)), demo_dsn
    )
    delivered: StoredFile = seen["file"]
    assert delivered.uri == str(tmp_path / "exports/4/2025-05/invoices.csv.gz")
    assert seen["sha256"] == recorded["sha256"]  # open() gives the stored (gzip) bytes
    assert delivered.compression.value == "gzip" and delivered.row_count == 4
    with pytest.raises(StoredFileError, match="no download links"):
        delivered.presign()
    with pytest.raises(StoredFileError, match="not parquet"):
        delivered.dataset()


def test_loading_a_file_deleted_behind_our_back_fails_clearly(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    manager = LocalExportIOManager(base_dir=str(tmp_path))
    recorded, _ = _run_with_downstream(demo_spec, "orders", manager, demo_dsn)
    Path(recorded["uri"]).unlink()
    with pytest.raises(StoredFileError, match="found missing; re-materialize"):
        manager.files().handle("orders", "4", Month(2025, 5), recorded)


def _backends(server_dsn: str, application_name: str) -> int:
    with psycopg.connect(server_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()
        return int(row[0]) if row else -1


@pytest.mark.parametrize("dataset", ["events", "orders"])  # ADBC path and COPY path
def test_source_connection_closed_when_handle_output_raises(
    demo_spec: ExportSpec, demo_dsn: str, pg_server: str, s3_endpoint: str, dataset: str
) -> None:
    app = f"iotest-{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(demo_dsn, application_name=app)
    missing_bucket = f"missing-{uuid.uuid4().hex[:8]}"  # every upload fails: NoSuchBucket
    pdef = build_export_partitions_def(demo_spec.months_start)
    export = build_export_asset(demo_spec.datasets[dataset], pdef)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["4"])
        result = dg.materialize(
            [export],
            partition_key=KEY,
            instance=instance,
            resources={
                "source": PostgresSourceResource(dsn=dsn),
                EXPORTS_IO_MANAGER_KEY: _s3_manager(s3_endpoint, missing_bucket),
            },
            raise_on_error=False,
        )
    assert not result.success
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None and "NoSuchBucket" in str(error.to_string())
    assert _backends(pg_server, app) == 0


def test_nothing_is_left_in_the_bucket_when_the_write_fails(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    """A contract violation mid-stream (bad SQL in the spec) aborts the upload."""
    broken = dataclasses.replace(
        demo_spec.datasets["events"],
        name="broken",
        table=None,
        time_column=None,
        sql="SELECT *, 1 / (id - id) AS boom FROM events",
    )
    spec = dataclasses.replace(demo_spec, datasets={"broken": broken})
    with pytest.raises(dg.Failure, match="division by zero"):
        _run_with_downstream(spec, "broken", _s3_manager(s3_endpoint, bucket), demo_dsn)
    assert list_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == []


def test_the_asset_returns_a_stream_that_holds_no_connection(
    demo_spec: ExportSpec, demo_dsn: str, pg_server: str
) -> None:
    """What Dagster holds between the compute function and handle_output opens nothing."""
    app = f"lazy-{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(demo_dsn, application_name=app)
    asset = build_export_asset(
        demo_spec.datasets["events"], build_export_partitions_def(demo_spec.months_start)
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["4"])
        context = dg.build_asset_context(partition_key=KEY, instance=instance)
        stream = asset(context, source=PostgresSourceResource(dsn=dsn))
    assert isinstance(stream, ExportStream) and stream.extension == ".parquet"
    assert _backends(pg_server, app) == 0
