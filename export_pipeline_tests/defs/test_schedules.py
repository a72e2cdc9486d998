"""The monthly schedule: last month for every customer, as ranged runs of `exports_job`, with
run keys that make a tick evaluated twice ask for nothing twice; executed, it delivers each
customer's month once."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import dagster as dg
import pytest

from export_pipeline.dagster_private import ranged_run_tags
from export_pipeline.defs.assets import MAX_PARTITIONS_PER_RUN
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.defs.schedules import TRIGGER_TAG, build_monthly_schedule
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.settings import SettingsError, schedule_settings
from export_pipeline.spec import ExportSpec
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
)

DATASETS = ("events", "orders", "invoices")


def _evaluate(
    instance: dg.DagsterInstance, defs: dg.Definitions, tick: datetime
) -> dg.ScheduleExecutionData:
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("monthly_exports_schedule")
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=tick, repository_def=repo
    )
    return schedule.evaluate_tick(context)


def _with_schedule(spec: ExportSpec, defs: dg.Definitions) -> dg.Definitions:
    schedule = build_monthly_schedule(spec.months_start, 2, "UTC")
    assert schedule.cron_schedule == "0 2 1 * *"
    return dg.Definitions.merge(defs, dg.Definitions(schedules=[schedule]))


@pytest.fixture(scope="module")
def defs(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> dg.Definitions:
    storage = local_storage(tmp_path_factory.mktemp("schedule"))
    return _with_schedule(
        demo_spec, export_definitions(demo_spec, export_resources(demo_dsn, storage))
    )


@pytest.mark.parametrize(
    ("tick", "month"),
    [
        (datetime(2025, 4, 1, 2, tzinfo=UTC), "2025-03"),
        (datetime(2026, 1, 1, 2, tzinfo=UTC), "2025-12"),
    ],
)
def test_a_tick_asks_for_last_month_in_ranged_runs_with_stable_keys(
    defs: dg.Definitions, demo_spec: ExportSpec, tick: datetime, month: str
) -> None:
    customers = [str(n) for n in range(1, 1202)]  # 1,201: two full runs and one of a customer
    pdef = build_export_partitions_def(demo_spec.months_start)
    with fresh_instance() as instance:
        add_customers(instance, customers)
        first, second = (_evaluate(instance, defs, tick) for _ in range(2))
        requests = first.run_requests or []
        # evaluated twice (a daemon restart, a retried tick): the same runs, the same keys
        assert [(r.run_key, r.tags) for r in requests] == [
            (r.run_key, r.tags) for r in second.run_requests or []
        ]
        assert [r.run_key for r in requests] == [f"monthly-{month}-{n}" for n in range(3)]
        assert [r.partition_key_range for r in requests] == [
            dg.PartitionKeyRange(f"{a}|{month}-01", f"{b}|{month}-01")
            for a, b in ((1, 500), (501, 1000), (1001, 1201))
        ]
        for request in requests:
            assert request.tags[TRIGGER_TAG] == "schedule"
            assert request.job_name in (None, "exports_job")
        covered = Counter(
            key
            for r in requests
            if r.partition_key_range is not None
            for key in pdef.get_partition_keys_in_range(
                r.partition_key_range, dynamic_partitions_store=instance
            )
        )
        assert covered == Counter(f"{c}|{month}-01" for c in customers)  # each exactly once
    assert MAX_PARTITIONS_PER_RUN == 500


def test_executing_a_tick_delivers_last_month_for_every_customer_once(
    defs: dg.Definitions,
) -> None:
    customers = ["1", "2", "3", "4", "5"]
    tick = datetime(2025, 5, 1, 2, tzinfo=UTC)
    with fresh_instance() as instance:
        add_customers(instance, customers)
        [request] = _evaluate(instance, defs, tick).run_requests or []
        assert request.tags == {
            TRIGGER_TAG: "schedule",
            "dagster/schedule_name": "monthly_exports_schedule",
            **ranged_run_tags("1|2025-04-01", "5|2025-04-01"),
        }
        result = materialize(instance, defs, ("1|2025-04-01", "5|2025-04-01"), tags=request.tags)
        assert result.success
        keys = [f"{c}|2025-04-01" for c in customers]
        for asset_key in [*(export_asset_key(d) for d in DATASETS), MANIFEST_ASSET_KEY]:
            records = instance.fetch_materializations(asset_key, limit=100).records
            assert Counter(r.partition_key for r in records) == Counter(keys), asset_key
        assert result.dagster_run.tags[TRIGGER_TAG] == "schedule"
        # the same tick again: the same run key, which Dagster runs only once
        [again] = _evaluate(instance, defs, tick).run_requests or []
        assert again.run_key == request.run_key == "monthly-2025-04-0"


def test_a_tick_skips_months_before_the_spec_start(defs: dg.Definitions) -> None:
    with fresh_instance() as instance:
        add_customers(instance, ["1"])
        data = _evaluate(instance, defs, datetime(2025, 1, 1, 2, tzinfo=UTC))
    assert not data.run_requests and "before months.start" in str(data.skip_message)


def test_a_tick_without_customers_skips(defs: dg.Definitions) -> None:
    with fresh_instance() as instance:
        data = _evaluate(instance, defs, datetime(2025, 4, 1, 2, tzinfo=UTC))
    assert not data.run_requests and "no customers yet" in str(data.skip_message)


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
    schedule = build_monthly_schedule(datetime(2025, 1, 1).date(), 5, "Europe/Berlin")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 5 1 * *", "Europe/Berlin")
