"""`exports_manifest` and the monthly job's manifests: real runs, PostgreSQL, S3 through the SigV4
proxy or a folder, and a real HTTP receiver for the completion webhook."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from export_pipeline.completion import CompletionNotifier
from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY, build_manifest_asset
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.io_managers.exports import (
    EXPORTS_IO_MANAGER_KEY,
    LocalExportIOManager,
    S3ExportIOManager,
)
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.settings import DELIVERY_WEBHOOK_KEY
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MIN_PART_SIZE
from export_pipeline.webhook import WebhookConfig
from export_pipeline_tests.defs.test_alerts import receiver
from export_pipeline_tests.defs.test_monthly import _run_month as run_month
from export_pipeline_tests.helpers import files_under
from export_pipeline_tests.manifest_helpers import (
    check_delivery,
    publish_order,
    read_bytes,
    recording_s3,
)

SECRET = "whsec-delivery-0815"
KEY = dg.MultiPartitionKey({"customer": "2", "month": "2025-03-01"})
FOLDER = "exports/2/2025-03"


def _assets(spec: ExportSpec) -> list[dg.AssetsDefinition]:
    pdef = build_export_partitions_def(spec.months_start)
    exports = [build_export_asset(d, pdef, retry_policy=None) for d in spec.datasets.values()]
    return [*exports, build_manifest_asset(spec, pdef, retry_policy=None)]


def _materialize(
    instance: dg.DagsterInstance,
    spec: ExportSpec,
    dsn: str,
    storage: dg.ConfigurableIOManager,
    webhook: DeliveryWebhookResource | None = None,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        _assets(spec),
        partition_key=KEY,
        instance=instance,
        resources={
            "source": PostgresSourceResource(dsn=dsn),
            EXPORTS_IO_MANAGER_KEY: storage,
            DELIVERY_WEBHOOK_KEY: webhook or DeliveryWebhookResource(),
        },
        raise_on_error=False,
    )


def _metadata(result: dg.ExecuteInProcessResult, asset_key: dg.AssetKey) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == asset_key]
    materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
    return {k: v.value for k, v in materialization.metadata.items()}


def _signed(headers: dict[str, str], body: bytes) -> bool:
    timestamp = headers["X-Export-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(headers["X-Export-Signature"], f"sha256={expected.hexdigest()}")


def test_manifest_asset_writes_last_and_posts_a_signed_webhook_retried_after_a_500(
    demo_spec: ExportSpec, demo_dsn: str, moto_url: str
) -> None:
    with (
        recording_s3(moto_url) as (store, log),
        receiver([500]) as hook,
        dg.instance_for_test() as instance,
    ):
        instance.add_dynamic_partitions("customers", ["2"])
        storage = S3ExportIOManager(
            s3=ExportS3Resource(endpoint_url=store.config.endpoint_url),
            bucket=store.config.bucket,
            part_size_bytes=MIN_PART_SIZE,
        )
        webhook = DeliveryWebhookResource(url=hook.url, secret=SECRET, backoff_seconds=0.01)
        result = _materialize(instance, demo_spec, demo_dsn, storage, webhook)
        assert result.success
        recorded = {
            name: _metadata(result, dg.AssetKey(["exports", name])) for name in demo_spec.datasets
        }
        md = _metadata(result, MANIFEST_ASSET_KEY)

        bucket = store.config.bucket
        data_keys = {r["uri"].removeprefix(f"s3://{bucket}/") for r in recorded.values()}
        last_data, manifest_at, success_at, count = publish_order(log, bucket, data_keys, FOLDER)
        assert last_data < manifest_at < success_at == count - 1

        manifest = check_delivery(store, FOLDER)  # every sha256 matches the bytes
        marker = read_bytes(store, f"{FOLDER}/_SUCCESS").decode()
        assert md["uri"] == f"s3://{bucket}/{FOLDER}/manifest.json"
        assert md["success_uri"] == f"s3://{bucket}/{FOLDER}/_SUCCESS"
        assert md["sha256"] == marker
        rows = sum(d["dagster/row_count"] for d in recorded.values())
        assert (md["datasets"], md["total_rows"]) == (3, rows)
        for name, entry in manifest["datasets"].items():
            assert entry["sha256"] == recorded[name]["sha256"]
            assert entry["rows"] == recorded[name]["dagster/row_count"]
            # the export records when its snapshot was taken; the manifest lists that time
            snapshot = datetime.fromtimestamp(recorded[name]["snapshot_at"], UTC)
            assert entry["snapshot_at"] == snapshot.isoformat()
            assert [c["name"] for c in entry["columns"]] == [
                c.name for c in recorded[name]["dagster/column_schema"].columns
            ]

        # the webhook: a 500, then a 200 on the retry; both signed; outcome in the metadata
        assert len(hook.received) == 2
        assert all(_signed(headers, body) for headers, body in hook.received)
        assert hook.received[0][1] == hook.received[1][1]
        payload = json.loads(hook.received[1][1])
        assert payload["event"] == "export.delivery_complete"
        assert (payload["customer"], payload["month"]) == ("2", "2025-03")
        assert payload["manifest_sha256"] == marker and payload["manifest"] == manifest
        assert payload["run_id"] == result.run_id
        assert (md["webhook_delivered"], md["webhook_attempts"]) == (True, 2)
        assert md["webhook_status_code"] == 200 and "webhook_error" not in md
        assert SECRET not in json.dumps(md, default=str)


def _break(spec: ExportSpec, dataset: str) -> ExportSpec:
    """The spec with one dataset's query referencing a column that does not exist."""
    broken = dataclasses.replace(spec.datasets[dataset], time_column="no_such_column")
    return dataclasses.replace(spec, datasets={**spec.datasets, dataset: broken})


def test_a_failed_dataset_means_no_manifest_and_a_good_rerun_writes_it(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    storage = LocalExportIOManager(base_dir=str(tmp_path))
    store = LocalObjectStore(tmp_path)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["2"])
        assert _materialize(instance, demo_spec, demo_dsn, storage).success
        first = check_delivery(store, FOLDER)

        failed = _materialize(instance, _break(demo_spec, "orders"), demo_dsn, storage)
        assert not failed.success
        [failure] = failed.get_step_failure_events()
        assert failure.step_key == "exports__orders"
        assert "no_such_column" in str(failure.step_failure_data.error)
        started = [e.step_key for e in failed.all_events if e.event_type_value == "STEP_START"]
        assert "exports__events" in started and "exports_manifest" not in started
        files = files_under(tmp_path)
        assert f"{FOLDER}/manifest.json" not in files and f"{FOLDER}/_SUCCESS" not in files
        assert f"{FOLDER}/events.parquet" in files  # the data stays; the claim is withdrawn

        # a half-configured webhook is reported, and does not fail a complete delivery
        again = _materialize(
            instance, demo_spec, demo_dsn, storage, DeliveryWebhookResource(url="http://x/h")
        )
        assert again.success
        second = check_delivery(store, FOLDER)
        assert second["created_at"] > first["created_at"]
        md = _metadata(again, MANIFEST_ASSET_KEY)
        assert (md["webhook_delivered"], md["webhook_attempts"]) == (False, 0)
        assert "EXPORT_DELIVERY_WEBHOOK_SECRET is not" in md["webhook_error"]
        history = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=MANIFEST_ASSET_KEY, asset_partitions=[str(KEY)]),
            limit=10,
        ).records
        assert len(history) == 2  # the failed run recorded none


def _run_month(
    instance: dg.DagsterInstance,
    spec: ExportSpec,
    dsn: str,
    root: Path,
    config: dict[str, Any] | None = None,
    webhook: DeliveryWebhookResource | None = None,
) -> dg.ExecuteInProcessResult:
    return run_month(instance, spec, dsn, root, "2025-03-01", config, webhook)


def _manifest_events(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    return {
        str(e.partition): {k: v.value for k, v in e.metadata.items()}
        for e in result.asset_materializations_for_node("export_month")
        if e.asset_key == MANIFEST_ASSET_KEY
    }


def test_monthly_job_writes_each_complete_customers_manifest_and_posts_it(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    store = LocalObjectStore(tmp_path)
    with receiver([]) as hook, dg.instance_for_test() as instance:
        # customer "x-..." fails every dataset (the source's key is a number): no manifest
        instance.add_dynamic_partitions("customers", ["2", "x-not-a-number"])
        webhook = DeliveryWebhookResource(url=hook.url, secret=SECRET)
        result = _run_month(instance, demo_spec, demo_dsn, tmp_path, webhook=webhook)
        assert not result.success
        manifests = _manifest_events(result)
        assert list(manifests) == ["2|2025-03-01"]
        md = manifests["2|2025-03-01"]
        manifest = check_delivery(store, FOLDER)
        assert md["sha256"] == read_bytes(store, f"{FOLDER}/_SUCCESS").decode()
        assert (md["webhook_delivered"], md["webhook_attempts"], md["webhook_status_code"]) == (
            True,
            1,
            200,
        )
        assert not (tmp_path / "exports/x-not-a-number").exists()
        [(headers, body)] = hook.received
        assert _signed(headers, body) and json.loads(body)["manifest"] == manifest
        # as the asset's partition status sees it
        assert instance.get_materialized_partitions(MANIFEST_ASSET_KEY) == {"2|2025-03-01"}
        for name, entry in manifest["datasets"].items():
            assert entry["snapshot_at"] is not None, name


def test_monthly_job_narrowed_to_one_dataset_lists_the_others_as_recorded(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    store = LocalObjectStore(tmp_path)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["2"])
        # nothing recorded for events and invoices yet: no manifest
        only = _run_month(instance, demo_spec, demo_dsn, tmp_path, {"datasets": ["orders"]})
        assert only.success and not _manifest_events(only)
        assert f"{FOLDER}/manifest.json" not in files_under(tmp_path)

        assert _run_month(instance, demo_spec, demo_dsn, tmp_path).success
        full = check_delivery(store, FOLDER)
        redo = _run_month(instance, demo_spec, demo_dsn, tmp_path, {"datasets": ["orders"]})
        assert redo.success and list(_manifest_events(redo)) == ["2|2025-03-01"]
        narrowed = check_delivery(store, FOLDER)
        assert narrowed["datasets"]["events"] == full["datasets"]["events"]
        assert (
            narrowed["datasets"]["orders"]["snapshot_at"]
            > full["datasets"]["orders"]["snapshot_at"]
        )


def test_a_run_stops_posting_once_the_receiver_is_down(demo_spec: ExportSpec) -> None:
    """After `max_failures_in_a_row` deliveries got only 5xx, the rest are not sent."""
    del demo_spec
    with receiver([503] * 10) as hook:
        config = WebhookConfig(hook.url, SECRET, max_attempts=2, backoff_seconds=0.01)
        notifier = CompletionNotifier(config, max_failures_in_a_row=2)
        outcomes = [notifier.notify({"n": n}) for n in range(3)]
    assert [(o.ok, o.attempts, o.status) for o in outcomes] == [
        (False, 2, 503),
        (False, 2, 503),
        (False, 0, None),
    ]
    assert "not sent" in outcomes[2].detail
    assert len(hook.received) == 4


@pytest.mark.parametrize("statuses", [[400], [201]])
def test_a_4xx_or_a_success_resets_nothing_and_is_not_retried(statuses: list[int]) -> None:
    with receiver(statuses * 3) as hook:
        config = WebhookConfig(hook.url, SECRET, max_attempts=3, backoff_seconds=0.01)
        notifier = CompletionNotifier(config, max_failures_in_a_row=1)
        outcomes = [notifier.notify({"n": n}) for n in range(3)]
    assert [o.attempts for o in outcomes] == [1, 1, 1]  # answered at once, never skipped
    assert {o.status for o in outcomes} == {statuses[0]}
    assert len(hook.received) == 3
