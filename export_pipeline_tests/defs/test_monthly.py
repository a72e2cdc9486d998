"""The monthly job and schedule, on a real instance, PostgreSQL and storage."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.defs.monthly import build_monthly_exports_job
from export_pipeline.defs.schedules import build_monthly_schedule
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, LocalExportIOManager
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.settings import DELIVERY_WEBHOOK_KEY, SettingsError, schedule_settings
from export_pipeline.spec import ExportSpec
from export_pipeline_tests.helpers import sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_month(
    instance: dg.DagsterInstance,
    spec: ExportSpec,
    dsn: str,
    root: Path,
    month: str,
    config: dict[str, Any] | None = None,
    webhook: DeliveryWebhookResource | None = None,
) -> dg.ExecuteInProcessResult:
    job = build_monthly_exports_job(spec)
    return job.execute_in_process(
        instance=instance,
        partition_key=month,
        run_config={"ops": {"export_month": {"config": config or {}}}},
        resources={
            "source": PostgresSourceResource(dsn=dsn),
            EXPORTS_IO_MANAGER_KEY: LocalExportIOManager(base_dir=str(root)),
            DELIVERY_WEBHOOK_KEY: webhook or DeliveryWebhookResource(),
        },
        raise_on_error=False,
    )


def _latest(instance: dg.DagsterInstance, dataset: str, partition: str) -> dict[str, Any]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["exports", dataset]), asset_partitions=[partition]
        ),
        limit=1,
    ).records
    assert records, f"no materialization of exports/{dataset} {partition}"
    event = records[0].asset_materialization
    assert event is not None
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def test_one_run_records_every_customer_month(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["1", "2", "3"])
        result = _run_month(instance, demo_spec, demo_dsn, tmp_path, "2025-04-01")
        assert result.success
        events = result.asset_materializations_for_node("export_month")
        # 3 customers x 3 datasets, each its own event, and each customer's manifest
        assert len(events) == 12
        manifests = [e for e in events if e.asset_key == MANIFEST_ASSET_KEY]
        assert {str(e.partition) for e in manifests} == {
            "1|2025-04-01",
            "2|2025-04-01",
            "3|2025-04-01",
        }
        for customer in ("1", "2", "3"):
            for dataset, ext in (
                ("events", "parquet"),
                ("orders", "jsonl"),
                ("invoices", "csv.gz"),
            ):
                md = _latest(instance, dataset, f"{customer}|2025-04-01")
                path = tmp_path / f"exports/{customer}/2025-04/{dataset}.{ext}"
                assert md["uri"] == str(path)
                assert md["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
                assert md["size_bytes"] == path.stat().st_size
                assert md["dagster/row_count"] > 0 and md["format"] == dataset_format(ext)
        # The asset's partition status sees them, as for runs of the asset itself.
        materialized = instance.get_materialized_partitions(dg.AssetKey(["exports", "orders"]))
        assert {"1|2025-04-01", "2|2025-04-01", "3|2025-04-01"} <= set(materialized)


def dataset_format(ext: str) -> str:
    return {"parquet": "parquet", "jsonl": "jsonl", "csv.gz": "csv"}[ext]


def test_chosen_customers_and_datasets_only(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["1", "2", "3"])
        config = {"customers": ["2"], "datasets": ["invoices"]}
        result = _run_month(instance, demo_spec, demo_dsn, tmp_path, "2025-04-01", config)
        assert result.success
        assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.*")] == [
            "exports/2/2025-04/invoices.csv.gz"
        ]


def test_unknown_customer_fails_before_exporting(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["1"])
        result = _run_month(
            instance, demo_spec, demo_dsn, tmp_path, "2025-04-01", {"customers": ["1", "99"]}
        )
        assert not result.success
        [failure] = result.get_step_failure_events()
        assert "unknown customer(s) '99'" in str(failure.step_failure_data.error)
        assert not any(tmp_path.rglob("*.*"))


def test_failed_partitions_are_named_and_the_rest_delivered(
    demo_spec: ExportSpec, tmp_path: Path, demo_dsn: str
) -> None:
    with dg.instance_for_test() as instance:
        # A customer key the source's bigint column cannot compare to: a permanent SQL error
        # for that customer only.
        instance.add_dynamic_partitions("customers", ["1", "x-not-a-number"])
        result = _run_month(
            instance, demo_spec, demo_dsn, tmp_path, "2025-04-01", {"datasets": ["orders"]}
        )
        assert not result.success
        [failure] = result.get_step_failure_events()
        message = str(failure.step_failure_data.error and failure.step_failure_data.error.message)
        assert "1 of 2 exports of 2025-04 failed" in message
        assert "exports/orders x-not-a-number|2025-04-01" in message
        assert (tmp_path / "exports/1/2025-04/orders.jsonl").exists()
        assert not (tmp_path / "exports/x-not-a-number").exists()
        # no retry for a permanent failure
        assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def _repo(job: dg.JobDefinition, schedule: dg.ScheduleDefinition) -> dg.RepositoryDefinition:
    resources = {
        "source": PostgresSourceResource(dsn="postgresql://unused@127.0.0.1:1/x"),
        EXPORTS_IO_MANAGER_KEY: LocalExportIOManager(base_dir="/nonexistent"),
        DELIVERY_WEBHOOK_KEY: DeliveryWebhookResource(),
    }
    return dg.Definitions(
        jobs=[job], schedules=[schedule], resources=resources
    ).get_repository_def()


@pytest.mark.parametrize(
    ("tick", "month_key"),
    [
        (datetime(2025, 4, 1, 2, tzinfo=UTC), "2025-03-01"),
        (datetime(2026, 1, 1, 2, tzinfo=UTC), "2025-12-01"),
    ],
)
def test_schedule_tick_requests_last_month_once(
    demo_spec: ExportSpec, tick: datetime, month_key: str
) -> None:
    job = build_monthly_exports_job(demo_spec)
    schedule = build_monthly_schedule(job, demo_spec.months_start, 2, "UTC")
    assert schedule.cron_schedule == "0 2 1 * *"
    with dg.instance_for_test() as instance:
        repo = _repo(job, schedule)
        requests = []
        for _ in range(2):  # evaluated twice: the same single request, the same run key
            context = dg.build_schedule_context(
                instance=instance, scheduled_execution_time=tick, repository_def=repo
            )
            data = schedule.evaluate_tick(context)
            requests.append([(r.run_key, r.partition_key) for r in data.run_requests or []])
    assert requests[0] == requests[1] == [(f"monthly-{month_key[:7]}", month_key)]


def test_schedule_skips_months_before_the_spec_start(demo_spec: ExportSpec) -> None:
    job = build_monthly_exports_job(demo_spec)
    schedule = build_monthly_schedule(job, demo_spec.months_start, 2, "UTC")
    with dg.instance_for_test() as instance:
        repo = _repo(job, schedule)
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2025, 1, 1, 2, tzinfo=UTC),
            repository_def=repo,
        )
        data = schedule.evaluate_tick(context)
    assert not data.run_requests and "before months.start" in str(data.skip_message)


def test_schedule_settings_from_the_environment() -> None:
    settings = schedule_settings(
        {"EXPORT_SCHEDULE_HOUR": "5", "EXPORT_SCHEDULE_TIMEZONE": "Europe/Berlin"}
    )
    assert (settings.hour, settings.timezone) == (5, "Europe/Berlin")
    assert (schedule_settings({}).hour, schedule_settings({}).timezone) == (2, "UTC")
    with pytest.raises(SettingsError, match="EXPORT_SCHEDULE_HOUR must be an hour"):
        schedule_settings({"EXPORT_SCHEDULE_HOUR": "24"})
    with pytest.raises(SettingsError, match="not an IANA time zone"):
        schedule_settings({"EXPORT_SCHEDULE_TIMEZONE": "Mars/Olympus"})


def test_monthly_run_records_check_results_per_partition(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["1"])
        result = _run_month(
            instance, demo_spec, demo_dsn, tmp_path, "2025-04-01", {"datasets": ["events"]}
        )
        assert result.success
        evaluations = [
            e.event_specific_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        names = {ev.check_name: ev for ev in evaluations}  # type: ignore[union-attr]
        assert set(names) == {
            "file_present",
            "row_count_matches_file",
            "not_empty_after_rows",
            "schema_unchanged",
        }
        for evaluation in names.values():
            assert evaluation.passed and evaluation.partition == "1|2025-04-01"  # type: ignore[union-attr]
        # and the UI's check history has them, per partition
        key = dg.AssetCheckKey(dg.AssetKey(["exports", "events"]), "file_present")
        records = instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
        assert records and records[0].partition == "1|2025-04-01"


def test_monthly_run_on_a_postgres_instance_with_pooled_connections(
    demo_spec: ExportSpec,
    demo_dsn: str,
    scratch_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production instance (deploy/dagster.yaml on Postgres), where the op switches the
    instance to pooled connections: every event is still recorded."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(scratch_dsn))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("customers", ["1", "2"])
        result = _run_month(instance, demo_spec, demo_dsn, tmp_path / "files", "2025-05-01")
        assert result.success
        for dataset in ("events", "orders", "invoices"):
            assert set(instance.get_materialized_partitions(dg.AssetKey(["exports", dataset]))) == {
                "1|2025-05-01",
                "2|2025-05-01",
            }
        key = dg.AssetCheckKey(dg.AssetKey(["exports", "orders"]), "file_present")
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
        assert {record.partition for record in history} == {"1|2025-05-01", "2|2025-05-01"}
