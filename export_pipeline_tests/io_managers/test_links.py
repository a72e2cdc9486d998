"""EXPORT_RECORD_DOWNLOAD_LINKS=false: no link in metadata or the event log, one on demand
(resources/links.py), signed with the configured export storage."""

from __future__ import annotations

import hashlib
import urllib.request
from typing import Any

import dagster as dg
import pytest

from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.resources.links import configured_storage, sign_download_link
from export_pipeline.resources.storage import S3ExportStorageResource
from export_pipeline.settings import SettingsError, build_resources, export_storage
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.files import StoredFileError
from export_pipeline.storage.s3 import MIN_PART_SIZE
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    materialize,
    recorded,
    s3_storage,
)

PARTITION = "3|2025-04-01"
ORDERS = export_asset_key("orders")


def _storage(endpoint: str, bucket: str, record: bool) -> S3ExportStorageResource:
    return s3_storage(
        endpoint,
        bucket,
        part_size_bytes=MIN_PART_SIZE,
        link_ttl_seconds=900,
        record_download_links=record,
    )


def _materialize(
    instance: dg.DagsterInstance, spec: ExportSpec, dsn: str, storage: S3ExportStorageResource
) -> dict[str, Any]:
    add_customers(instance, ["3"])
    defs = export_definitions(spec, export_resources(dsn, storage), manifest=False)
    result = materialize(instance, defs, PARTITION, selection=[ORDERS])
    metadata = recorded(instance, "orders", PARTITION)
    assert result.success and metadata is not None
    return metadata


def _event_log_text(instance: dg.DagsterInstance) -> str:
    [run] = instance.get_runs()
    return "\n".join(str(entry) for entry in instance.all_logs(run.run_id))


def test_links_kept_out_of_metadata_and_signed_on_demand(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    storage = _storage(s3_endpoint, bucket, record=False)
    with fresh_instance() as instance:
        md = _materialize(instance, demo_spec, demo_dsn, storage)
        assert "download_url" not in md and "download_url_expires_at" not in md
        assert md["uri"] == f"s3://{bucket}/exports/3/2025-04/orders.jsonl"
        log = _event_log_text(instance)
        assert "X-Amz-Signature" not in log and "X-Amz-Credential" not in log
        assert md["uri"] in log  # the log still says where the file is

        link = sign_download_link(storage, instance, ORDERS, PARTITION, ttl_seconds=300)
        assert "X-Amz-Expires=300" in link.url
        with urllib.request.urlopen(link.url) as response:  # the SigV4-checking endpoint
            assert hashlib.sha256(response.read()).hexdigest() == md["sha256"]
        default = sign_download_link(storage, instance, ORDERS, PARTITION)
        assert "X-Amz-Expires=900" in default.url  # the configured TTL

        with pytest.raises(StoredFileError, match="has not been materialized yet"):
            sign_download_link(storage, instance, ORDERS, "3|2025-05-01")
        s3_client.delete_object(Bucket=bucket, Key="exports/3/2025-04/orders.jsonl")
        with pytest.raises(StoredFileError, match="missing"):
            sign_download_link(storage, instance, ORDERS, PARTITION)


def test_links_are_recorded_by_default(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str
) -> None:
    with fresh_instance() as instance:
        md = _materialize(instance, demo_spec, demo_dsn, _storage(s3_endpoint, bucket, True))
        assert "X-Amz-Expires=900" in md["download_url"]
        assert "X-Amz-Signature" in _event_log_text(instance)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("false", False), ("FALSE ", False), ("0", False), ("true", True), ("", True)],
)
def test_record_download_links_setting(value: str, expected: bool) -> None:
    storage = export_storage({"EXPORT_S3_BUCKET": "b", "EXPORT_RECORD_DOWNLOAD_LINKS": value})
    assert isinstance(storage, S3ExportStorageResource)
    assert storage.record_download_links is expected
    assert storage.record_links is expected


def test_record_download_links_setting_is_validated() -> None:
    with pytest.raises(SettingsError, match="EXPORT_RECORD_DOWNLOAD_LINKS must be true or false"):
        export_storage({"EXPORT_S3_BUCKET": "b", "EXPORT_RECORD_DOWNLOAD_LINKS": "maybe"})
    with pytest.raises(SettingsError, match="EXPORT_RECORD_DOWNLOAD_LINKS"):
        export_storage({"EXPORT_STORAGE_DIR": "/tmp/x", "EXPORT_RECORD_DOWNLOAD_LINKS": "n"})


def test_configured_storage_resolves_the_environment(
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
    with configured_storage(build_resources(env)) as storage:
        assert isinstance(storage, S3ExportStorageResource)
        assert (storage.bucket, storage.link_ttl_seconds) == (bucket, 600)
        assert storage.record_links is False
        link = storage.store().download_link("any/key.csv")
        assert link is not None and "X-Amz-Expires=600" in link.url
