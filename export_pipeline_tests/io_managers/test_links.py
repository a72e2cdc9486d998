"""EXPORT_RECORD_DOWNLOAD_LINKS=false: no link in metadata or the event log, one on demand."""

from __future__ import annotations

import hashlib
import urllib.request
from typing import Any

import dagster as dg
import pytest

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, S3ExportIOManager
from export_pipeline.io_managers.links import (
    configured_io_manager,
    sign_download_link,
    sign_key_link,
)
from export_pipeline.io_managers.metadata import latest_metadata
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.settings import SettingsError, build_resources, exports_io_manager
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.files import StoredFileError
from export_pipeline.storage.s3 import MIN_PART_SIZE

PARTITION = "3|2025-04-01"
ORDERS = dg.AssetKey(["exports", "orders"])


def _manager(endpoint: str, bucket: str, record: bool) -> S3ExportIOManager:
    return S3ExportIOManager(
        s3=ExportS3Resource(endpoint_url=endpoint),
        bucket=bucket,
        part_size_bytes=MIN_PART_SIZE,
        link_ttl_seconds=900,
        record_download_links=record,
    )


def _materialize(
    instance: dg.DagsterInstance, spec: ExportSpec, dsn: str, manager: S3ExportIOManager
) -> dict[str, Any]:
    pdef = build_export_partitions_def(spec.months_start)
    instance.add_dynamic_partitions("customers", ["3"])
    result = dg.materialize(
        [build_export_asset(spec.datasets["orders"], pdef)],
        partition_key=PARTITION,
        instance=instance,
        resources={"source": PostgresSourceResource(dsn=dsn), EXPORTS_IO_MANAGER_KEY: manager},
    )
    recorded = latest_metadata(instance, ORDERS, PARTITION)
    assert result.success and recorded is not None
    return recorded


def _event_log_text(instance: dg.DagsterInstance) -> str:
    [run] = instance.get_runs()
    return "\n".join(str(entry) for entry in instance.all_logs(run.run_id))


def test_links_kept_out_of_metadata_and_signed_on_demand(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    manager = _manager(s3_endpoint, bucket, record=False)
    with dg.instance_for_test() as instance:
        recorded = _materialize(instance, demo_spec, demo_dsn, manager)
        assert "download_url" not in recorded and "download_url_expires_at" not in recorded
        assert recorded["uri"] == f"s3://{bucket}/exports/3/2025-04/orders.jsonl"
        log = _event_log_text(instance)
        assert "X-Amz-Signature" not in log and "X-Amz-Credential" not in log
        assert recorded["uri"] in log  # the log still says where the file is

        link = sign_download_link(manager, instance, ORDERS, PARTITION, ttl_seconds=300)
        assert "X-Amz-Expires=300" in link.url
        with urllib.request.urlopen(link.url) as response:  # the SigV4-checking endpoint
            assert hashlib.sha256(response.read()).hexdigest() == recorded["sha256"]
        by_key = sign_key_link(manager, "exports/3/2025-04/orders.jsonl")
        assert "X-Amz-Expires=900" in by_key.url  # the configured TTL
        with urllib.request.urlopen(by_key.url) as response:
            assert hashlib.sha256(response.read()).hexdigest() == recorded["sha256"]

        with pytest.raises(StoredFileError, match="has not been materialized yet"):
            sign_download_link(manager, instance, ORDERS, "3|2025-05-01")
        s3_client.delete_object(Bucket=bucket, Key="exports/3/2025-04/orders.jsonl")
        with pytest.raises(StoredFileError, match="found missing"):
            sign_download_link(manager, instance, ORDERS, PARTITION)


def test_links_are_recorded_by_default(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str
) -> None:
    with dg.instance_for_test() as instance:
        recorded = _materialize(
            instance, demo_spec, demo_dsn, _manager(s3_endpoint, bucket, record=True)
        )
        assert "X-Amz-Expires=900" in recorded["download_url"]
        assert "X-Amz-Signature" in _event_log_text(instance)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("false", False), ("FALSE ", False), ("0", False), ("true", True), ("", True)],
)
def test_record_download_links_setting(value: str, expected: bool) -> None:
    env = {"EXPORT_S3_BUCKET": "b", "EXPORT_RECORD_DOWNLOAD_LINKS": value}
    assert exports_io_manager(env).record_download_links is expected


def test_record_download_links_setting_is_validated() -> None:
    with pytest.raises(SettingsError, match="EXPORT_RECORD_DOWNLOAD_LINKS must be true or false"):
        exports_io_manager({"EXPORT_S3_BUCKET": "b", "EXPORT_RECORD_DOWNLOAD_LINKS": "maybe"})
    with pytest.raises(SettingsError, match="EXPORT_RECORD_DOWNLOAD_LINKS"):
        exports_io_manager({"EXPORT_STORAGE_DIR": "/tmp/x", "EXPORT_RECORD_DOWNLOAD_LINKS": "n"})


def test_configured_io_manager_resolves_the_environment(
    monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, bucket: str
) -> None:
    env = {
        "EXPORT_S3_BUCKET": bucket,
        "EXPORT_S3_ENDPOINT_URL": s3_endpoint,
        "EXPORT_LINK_TTL_SECONDS": "600",
        "EXPORT_RECORD_DOWNLOAD_LINKS": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with configured_io_manager(build_resources(env)) as manager:
        assert isinstance(manager, S3ExportIOManager)
        assert (manager.bucket, manager.link_ttl_seconds) == (bucket, 600)
        assert manager.record_download_links is False
        assert "X-Amz-Expires=600" in sign_key_link(manager, "any/key.csv").url
