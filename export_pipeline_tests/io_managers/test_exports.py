"""The export IO manager: writes through the atomic writers, loads handles downstream (one, or
a dict of them for a range), refuses what is not a file stream, and leaves nothing open or
half-written when a write fails."""

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

from export_pipeline.batch import ExportStreams
from export_pipeline.defs.assets import (
    EXPORT_BACKFILL_POLICY,
    EXPORTS_GROUP,
    build_export_asset,
)
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.engine import ExportStream
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY
from export_pipeline.io_managers.metadata import export_asset_key, latest_records
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.resources.storage import ExportStorageResource
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.files import StoredFile, StoredFileError
from export_pipeline.storage.s3 import MIN_PART_SIZE
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
from export_pipeline_tests.helpers import list_keys, pending_uploads

KEY = "4|2025-05-01"
DOWNSTREAM = dg.AssetKey(["delivery_check"])


def _with_downstream(
    spec: ExportSpec, dataset: str, storage: ExportStorageResource, dsn: str
) -> tuple[dg.Definitions, dict[str, Any]]:
    """The spec's export of `dataset` and an asset that loads it (in the exports group, so
    `exports_job` runs it after the export); what it saw lands in the returned dict."""
    one = dataclasses.replace(spec, datasets={dataset: spec.datasets[dataset]})
    seen: dict[str, Any] = {}

    @dg.asset(
        key=DOWNSTREAM,
        partitions_def=build_export_partitions_def(spec.months_start),
        group_name=EXPORTS_GROUP,
        backfill_policy=EXPORT_BACKFILL_POLICY,  # as README's example: ranged with the export
        ins={
            "delivered": dg.AssetIn(
                key=export_asset_key(dataset), input_manager_key=EXPORTS_IO_MANAGER_KEY
            )
        },
    )
    def delivery_check(context, delivered: Any) -> None:  # type: ignore[no-untyped-def]
        # one partition: a StoredFile; several: {partition key: StoredFile}
        handles = delivered if isinstance(delivered, dict) else {context.partition_key: delivered}
        for key, handle in handles.items():
            with handle.open() as stream:
                seen[key] = {"sha256": hashlib.sha256(stream.read()).hexdigest(), "file": handle}
            if handle.format.value == "parquet":
                seen[key]["table_rows"] = handle.read_table().num_rows
                seen[key]["columns"] = handle.dataset().schema.names

    defs = export_definitions(one, export_resources(dsn, storage), checks=False, manifest=False)
    return dg.Definitions.merge(defs, dg.Definitions(assets=[delivery_check])), seen


def _run_with_downstream(
    spec: ExportSpec,
    dataset: str,
    storage: ExportStorageResource,
    dsn: str,
    partitions: str | tuple[str, str] = KEY,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Materialize the export and the asset that loads it: each partition's recorded metadata,
    and what the downstream asset saw, by partition."""
    defs, seen = _with_downstream(spec, dataset, storage, dsn)
    with fresh_instance() as instance:
        add_customers(instance, ["3", "4"])
        result = materialize(instance, defs, partitions)
        if not result.success:
            raise AssertionError(step_failures(result))
        records = latest_records(instance, export_asset_key(dataset), list(seen))
        return {k: r.metadata for k, r in records.items()}, seen


def test_downstream_asset_loads_an_s3_export(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str
) -> None:
    storage = s3_storage(s3_endpoint, bucket, part_size_bytes=MIN_PART_SIZE)
    records, seen = _run_with_downstream(demo_spec, "events", storage, demo_dsn)
    recorded_md, view = records[KEY], seen[KEY]
    delivered: StoredFile = view["file"]
    assert delivered.uri == recorded_md["uri"] == f"s3://{bucket}/exports/4/2025-05/events.parquet"
    assert view["sha256"] == recorded_md["sha256"] == delivered.sha256
    assert delivered.size_bytes == recorded_md["size_bytes"]
    assert delivered.row_count == recorded_md["dagster/row_count"] == view["table_rows"] > 0
    assert view["columns"][:2] == ["id", "customer_id"]
    # A fresh link, signed now, that the SigV4-checking endpoint accepts.
    link = delivered.presign(120)
    assert "X-Amz-Expires=120" in link.url and "X-Amz-Signature=" in link.url
    with urllib.request.urlopen(link.url) as response:
        assert hashlib.sha256(response.read()).hexdigest() == recorded_md["sha256"]


def test_downstream_asset_loads_a_local_export(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    records, seen = _run_with_downstream(demo_spec, "invoices", local_storage(tmp_path), demo_dsn)
    delivered: StoredFile = seen[KEY]["file"]
    assert delivered.uri == str(tmp_path / "exports/4/2025-05/invoices.csv.gz")
    assert seen[KEY]["sha256"] == records[KEY]["sha256"]  # open() gives the stored (gzip) bytes
    assert delivered.compression.value == "gzip" and delivered.row_count == 4
    with pytest.raises(StoredFileError, match="no download links"):
        delivered.presign()
    with pytest.raises(StoredFileError, match="not parquet"):
        delivered.dataset()


def test_downstream_asset_of_a_range_loads_a_handle_per_partition(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    keys = ["3|2025-04-01", "4|2025-04-01", "3|2025-05-01", "4|2025-05-01"]
    records, seen = _run_with_downstream(
        demo_spec, "orders", local_storage(tmp_path), demo_dsn, (keys[0], keys[-1])
    )
    assert sorted(seen) == sorted(keys) == sorted(records)
    for key in keys:
        customer, month = key.split("|")
        handle: StoredFile = seen[key]["file"]
        assert handle.uri == str(tmp_path / f"exports/{customer}/{month[:7]}/orders.jsonl")
        assert seen[key]["sha256"] == records[key]["sha256"] == handle.sha256
        assert handle.row_count == records[key]["dagster/row_count"]


def test_loading_a_file_deleted_behind_our_back_fails_clearly(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    """A later run loads what an earlier run recorded only after checking it is still there."""
    defs, _ = _with_downstream(demo_spec, "orders", local_storage(tmp_path), demo_dsn)
    with fresh_instance() as instance:
        add_customers(instance, ["4"])
        assert materialize(instance, defs, KEY).success
        path = Path((recorded(instance, "orders", KEY) or {})["uri"])
        path.unlink()
        again = materialize(instance, defs, KEY, selection=[DOWNSTREAM])
    assert not again.success
    message = step_failures(again)["delivery_check"]
    assert f"loading exports/orders {KEY}" in message
    assert f"{path}: recorded" in message and "found missing; re-materialize" in message


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
    missing_bucket = f"missing-{uuid.uuid4().hex[:8]}"  # every request fails: NoSuchBucket
    resources = export_resources(dsn, s3_storage(s3_endpoint, missing_bucket))
    defs = export_definitions(demo_spec, resources, retry_policy=None, manifest=False)
    with fresh_instance() as instance:
        add_customers(instance, ["3", "4"])
        result = materialize(
            instance, defs, ("3|2025-05-01", KEY), selection=[export_asset_key(dataset)]
        )
    assert not result.success
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None and "NoSuchBucket" in str(error.to_string())
    assert _backends(pg_server, app) == 0  # the run's source session is closed


def test_nothing_is_left_in_the_bucket_when_the_write_fails(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    """An error mid-stream (bad SQL in the spec) aborts the upload."""
    broken = dataclasses.replace(
        demo_spec.datasets["events"],
        name="broken",
        table=None,
        time_column=None,
        sql="SELECT *, 1 / (id - id) AS boom FROM events",
    )
    spec = dataclasses.replace(demo_spec, datasets={"broken": broken})
    storage = s3_storage(s3_endpoint, bucket, part_size_bytes=MIN_PART_SIZE)
    with pytest.raises(AssertionError, match="division by zero"):
        _run_with_downstream(spec, "broken", storage, demo_dsn)
    assert list_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == []


def test_the_asset_returns_streams_that_hold_no_connection(
    demo_spec: ExportSpec, demo_dsn: str, pg_server: str
) -> None:
    """What Dagster holds between the compute function and handle_output opens nothing: one
    lazy stream per partition of the range, and the run's (unopened) source session."""
    app = f"lazy-{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(demo_dsn, application_name=app)
    asset = build_export_asset(
        demo_spec.datasets["events"], build_export_partitions_def(demo_spec.months_start)
    )
    keys = dg.PartitionKeyRange("3|2025-04-01", "4|2025-05-01")
    with fresh_instance() as instance:
        add_customers(instance, ["3", "4"])
        context = dg.build_asset_context(partition_key_range=keys, instance=instance)
        returned = asset(context, source=PostgresSourceResource(dsn=dsn))
    assert isinstance(returned, ExportStreams)
    assert sorted(returned.streams) == sorted(
        ["3|2025-04-01", "4|2025-04-01", "3|2025-05-01", "4|2025-05-01"]
    )
    for stream in returned.streams.values():
        assert isinstance(stream, ExportStream) and stream.extension == ".parquet"
    assert returned.session is not None
    assert _backends(pg_server, app) == 0


def test_an_output_that_is_not_a_file_stream_is_refused(tmp_path: Path) -> None:
    @dg.asset(
        partitions_def=dg.StaticPartitionsDefinition(["3|2025-05-01"]),
        io_manager_key=EXPORTS_IO_MANAGER_KEY,
    )
    def not_a_file() -> str:
        return "rows"

    resources = export_resources("postgresql://unused@127.0.0.1:1/x", local_storage(tmp_path))
    with fresh_instance() as instance:
        result = dg.materialize(
            [not_a_file],
            partition_key="3|2025-05-01",
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    assert not result.success
    message = step_failures(result)["not_a_file"]
    assert "not_a_file returned no file stream for 1 of its 1 partitions (3|2025-05-01: str)" in (
        message
    )
    assert not any(tmp_path.rglob("*"))
