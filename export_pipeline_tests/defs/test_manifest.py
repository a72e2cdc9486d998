"""`exports_manifest`: real runs (one partition, a range), PostgreSQL, S3 through the SigV4
proxy or a folder, and a real HTTP receiver for the completion webhook."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from export_pipeline.completion import CompletionNotifier
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.extract.session import lock_key
from export_pipeline.io_managers.exports import FAILED_PARTITIONS
from export_pipeline.io_managers.metadata import export_asset_key, latest_records
from export_pipeline.partitions import split_partition_key
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.resources.storage import ExportStorageResource
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MIN_PART_SIZE
from export_pipeline.webhook import WebhookConfig
from export_pipeline_tests.defs.test_alerts import receiver
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
    s3_storage,
)
from export_pipeline_tests.helpers import files_under
from export_pipeline_tests.manifest_helpers import (
    check_delivery,
    publish_order,
    read_bytes,
    recording_s3,
)

SECRET = "whsec-delivery-0815"
KEY = "2|2025-03-01"
FOLDER = "exports/2/2025-03"


def _materialize(
    instance: dg.DagsterInstance,
    spec: ExportSpec,
    dsn: str,
    storage: ExportStorageResource,
    webhook: DeliveryWebhookResource | None = None,
    partitions: str | tuple[str, str] = KEY,
    selection: list[dg.AssetKey] | None = None,
) -> dg.ExecuteInProcessResult:
    """A run of the spec's exports, checks and manifest (no retries: failures here are meant)."""
    resources = export_resources(dsn, storage, delivery_webhook=webhook)
    defs = export_definitions(spec, resources, retry_policy=None)
    return materialize(instance, defs, partitions, selection=selection)


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
        fresh_instance() as instance,
    ):
        add_customers(instance, ["2"])
        endpoint = store.config.endpoint_url
        assert endpoint is not None
        storage = s3_storage(endpoint, store.config.bucket, part_size_bytes=MIN_PART_SIZE)
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
    storage = local_storage(tmp_path)
    store = LocalObjectStore(tmp_path)
    with fresh_instance() as instance:
        add_customers(instance, ["2"])
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
            dg.AssetRecordsFilter(asset_key=MANIFEST_ASSET_KEY, asset_partitions=[KEY]),
            limit=10,
        ).records
        assert len(history) == 2  # the failed run recorded none


def test_a_ranged_run_writes_and_posts_each_customer_months_manifest(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    store = LocalObjectStore(tmp_path)
    keys = ["2|2025-03-01", "3|2025-03-01", "2|2025-04-01", "3|2025-04-01"]
    with receiver([]) as hook, fresh_instance() as instance:
        add_customers(instance, ["2", "3"])
        webhook = DeliveryWebhookResource(url=hook.url, secret=SECRET)
        result = _materialize(
            instance, demo_spec, demo_dsn, local_storage(tmp_path), webhook, (keys[0], keys[-1])
        )
        assert result.success
        manifests = latest_records(instance, MANIFEST_ASSET_KEY, keys)
        assert set(manifests) == set(keys)
        assert instance.get_materialized_partitions(MANIFEST_ASSET_KEY) == set(keys)
        posted = {}
        for headers, body in hook.received:
            assert _signed(headers, body)
            payload = json.loads(body)
            posted[f"{payload['customer']}|{payload['month']}-01"] = payload
        assert sorted(posted) == sorted(keys)  # one post per customer-month
        for key, record in manifests.items():
            customer, month = key.split("|")
            folder = f"exports/{customer}/{month[:7]}"
            manifest = check_delivery(store, folder)
            md = record.metadata
            assert md["sha256"] == read_bytes(store, f"{folder}/_SUCCESS").decode()
            assert (md["webhook_delivered"], md["webhook_attempts"]) == (True, 1)
            assert md["webhook_status_code"] == 200
            assert posted[key]["manifest"] == manifest
            assert posted[key]["run_id"] == result.run_id
            for name, entry in manifest["datasets"].items():
                file = latest_records(instance, export_asset_key(name), [key])[key]
                assert entry["sha256"] == file.metadata["sha256"], (key, name)
                assert entry["snapshot_at"] is not None, name


def test_a_manifest_waits_for_every_dataset_and_lists_the_others_as_recorded(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    """A run of one dataset and the manifest: customer-months without a file of every dataset
    get no manifest (each its own failed partition); once they have one, a run of one dataset
    lists the others as recorded."""
    store = LocalObjectStore(tmp_path)
    storage = local_storage(tmp_path)
    keys = ("2|2025-03-01", "3|2025-03-01")
    only_orders = [export_asset_key("orders"), MANIFEST_ASSET_KEY]
    folders = ["exports/2/2025-03", "exports/3/2025-03"]
    with fresh_instance() as instance:
        add_customers(instance, ["2", "3"])
        only = _materialize(instance, demo_spec, demo_dsn, storage, None, keys, only_orders)
        assert not only.success
        [failure] = only.get_step_failure_events()
        assert failure.step_key == "exports_manifest"
        user = failure.step_failure_data.user_failure_data
        assert user is not None
        rows = user.metadata[FAILED_PARTITIONS].value
        assert isinstance(rows, list)
        assert [r["partition"] for r in rows] == list(keys)
        assert all("no usable file of ['events', 'invoices']" in r["error"] for r in rows)
        assert not any(f.endswith("manifest.json") for f in files_under(tmp_path))

        assert _materialize(instance, demo_spec, demo_dsn, storage, None, keys).success
        full = {folder: check_delivery(store, folder) for folder in folders}
        redo = _materialize(instance, demo_spec, demo_dsn, storage, None, keys, only_orders)
        assert redo.success
        for folder in folders:
            narrowed = check_delivery(store, folder)
            assert narrowed["datasets"]["events"] == full[folder]["datasets"]["events"]
            assert (
                narrowed["datasets"]["orders"]["snapshot_at"]
                > full[folder]["datasets"]["orders"]["snapshot_at"]
            )


def test_a_run_stops_posting_once_the_receiver_is_down() -> None:
    """After `max_failures_in_a_row` deliveries got only 5xx, the rest are not sent."""
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


def test_a_file_not_as_recorded_fails_only_its_customer_months_manifest(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    """A manifest-only run of a range in which one dataset's file is gone: that customer-month
    fails (the log names the file), the other's manifest is written."""
    storage = local_storage(tmp_path)
    keys = ("2|2025-03-01", "3|2025-03-01")
    with fresh_instance() as instance:
        add_customers(instance, ["2", "3"])
        assert _materialize(instance, demo_spec, demo_dsn, storage, None, keys).success
        gone = tmp_path / "exports/2/2025-03/events.parquet"
        gone.unlink()
        (tmp_path / "exports/3/2025-03/_SUCCESS").unlink()
        again = _materialize(
            instance, demo_spec, demo_dsn, storage, None, keys, [MANIFEST_ASSET_KEY]
        )
        assert not again.success
        [failure] = again.get_step_failure_events()
        user = failure.step_failure_data.user_failure_data
        assert user is not None
        [row] = user.metadata[FAILED_PARTITIONS].value  # type: ignore[misc]
        assert row["partition"] == keys[0] and "no usable file of ['events']" in row["error"]
        warnings = [
            r.user_message for r in instance.all_logs(again.run_id) if r.level == logging.WARNING
        ]
        assert [w for w in warnings if w.startswith(f"loading exports/events {keys[0]}")]
        check_delivery(LocalObjectStore(tmp_path), "exports/3/2025-03")  # written again
        assert not (tmp_path / "exports/2/2025-03/_SUCCESS").exists()  # withdrawn, not written


def test_a_file_replaced_while_the_manifest_waited_for_its_lock_is_listed_as_replaced(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    """A manifest-only run loads the files' records, then waits for the customer-month's lock
    (another run is writing it). What that run recorded meanwhile is what the manifest lists."""
    store = LocalObjectStore(tmp_path)
    storage = local_storage(tmp_path)
    orders = export_asset_key("orders")
    with fresh_instance() as instance:
        add_customers(instance, ["2"])
        assert _materialize(instance, demo_spec, demo_dsn, storage).success
        before = latest_records(instance, orders, [KEY])[KEY]
        customer, month = split_partition_key(KEY)
        holder = psycopg.connect(demo_dsn, autocommit=True)
        holder.execute(
            "SELECT pg_advisory_lock(%s)", (lock_key(store.location, customer, str(month)),)
        )
        outcome: list[dg.ExecuteInProcessResult] = []
        manifest_only = threading.Thread(
            target=lambda: outcome.append(
                _materialize(
                    instance, demo_spec, demo_dsn, storage, None, KEY, [MANIFEST_ASSET_KEY]
                )
            )
        )
        try:
            manifest_only.start()
            _wait_for_a_lock_waiter(demo_dsn, holder.info.backend_pid)
            # the other run records a new file of orders (same object here: only its record
            # differs, which is what the manifest must follow)
            replaced = {**before.recorded, "sha256": dg.MetadataValue.text("0" * 64)}
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=orders, partition=KEY, metadata=replaced)
            )
        finally:
            holder.close()  # the other run ends: its lock with it
            manifest_only.join(60)
        [result] = outcome
        assert result.success
        manifest = check_delivery_listing(store, FOLDER)
        assert manifest["datasets"]["orders"]["sha256"] == "0" * 64


def check_delivery_listing(store: LocalObjectStore, folder: str) -> dict[str, Any]:
    """The manifest as written (its entries, without comparing them to the bytes)."""
    return json.loads(read_bytes(store, f"{folder}/manifest.json"))


def _wait_for_a_lock_waiter(dsn: str, holder_pid: int) -> None:
    """Until a backend waits for an advisory lock that `holder_pid` holds (polled, bounded)."""
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (holder_pid,),
            ).fetchone()
            if row and row[0] > 0:
                return
            time.sleep(0.05)  # polling a condition, bounded by the deadline
    raise AssertionError("no backend waited for the held lock")
