"""Progress events in the Dagster event log: live, bounded, readable; numeric Plots metadata."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from dagster._core.events import DagsterEventType

from export_pipeline.cli.progress import Progress, latest_progress
from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.monthly import build_monthly_exports_job
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, LocalExportIOManager
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.settings import DELIVERY_WEBHOOK_KEY
from export_pipeline.spec import Compression, CustomersSpec, DatasetSpec, ExportSpec, Format

ROWS = 1500
INTERVAL = 0.2
EVERY_ROWS = 20
SLOW = DatasetSpec(
    name="slow",
    customer_column="customer_id",
    format=Format.PARQUET,
    compression=Compression.ZSTD,
    # About 1 ms a row (pg_sleep's shortest wait): some 2 s in all.
    sql="SELECT slow_row(g) AS id, 4 AS customer_id, repeat('x', 40) AS pad "
    "FROM generate_series(1, 1500) AS g",
)
SPEC = ExportSpec(
    customers=CustomersSpec("id", sql="SELECT 4 AS id"),
    months_start=date(2025, 1, 1),
    datasets={"slow": SLOW},
)
PARTITION = "4|2025-05-01"
PLOT_TYPES = {
    "dagster/row_count": dg.IntMetadataValue,
    "size_bytes": dg.IntMetadataValue,
    "duration_seconds": dg.FloatMetadataValue,
    "rows_per_second": dg.FloatMetadataValue,
}


def _slow_source(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION slow_row(g int) RETURNS int LANGUAGE plpgsql VOLATILE"
            " AS $$ BEGIN PERFORM pg_sleep(0.0005); RETURN g; END $$"
        )


def _resources(dsn: str, root: Path) -> dict[str, Any]:
    return {
        # Small Arrow batches, so the write loop sees many of them.
        "source": PostgresSourceResource(dsn=dsn, batch_size_hint_bytes=1024),
        EXPORTS_IO_MANAGER_KEY: LocalExportIOManager(
            base_dir=str(root),
            progress_interval_seconds=INTERVAL,
            progress_every_rows=EVERY_ROWS,
        ),
        DELIVERY_WEBHOOK_KEY: DeliveryWebhookResource(),
    }


def _progress_events(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    # Reports are written on threads of their own: let the last one finish.
    for thread in threading.enumerate():
        if thread.name == "export-progress":
            thread.join(timeout=30)
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    entries = [r.event_log_entry for r in records]
    return [
        e
        for e in entries
        if e.dagster_event and "progress_rows" in e.dagster_event.engine_event_data.metadata
    ]


def _materialization(
    instance: dg.DagsterInstance, dataset: str, partition: str
) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["exports", dataset]), asset_partitions=[partition]
        ),
        limit=1,
    ).records
    return records[0] if records else None


def _assert_plot_types(record: dg.EventLogRecord | None) -> None:
    assert record is not None and record.asset_materialization is not None
    metadata = record.asset_materialization.metadata
    for key, kind in PLOT_TYPES.items():
        assert isinstance(metadata[key], kind), f"{key}: {type(metadata[key]).__name__}"
        assert isinstance(metadata[key].value, int if kind is dg.IntMetadataValue else float)


def _assert_bounded_and_increasing(
    events: list[dg.EventLogEntry], elapsed: float, estimate: tuple[str, int]
) -> list[dict[str, Any]]:
    metadata = [
        {k: v.value for k, v in e.dagster_event.engine_event_data.metadata.items()}  # type: ignore[union-attr]
        for e in events
    ]
    assert len(events) >= 3, f"{len(events)} progress events in {elapsed:.2f}s"
    assert len(events) <= elapsed / INTERVAL + 1
    assert len(events) <= ROWS / EVERY_ROWS + 1
    rows = [m["progress_rows"] for m in metadata]
    assert rows == sorted(set(rows)) and rows[-1] <= ROWS
    for m in metadata:
        assert isinstance(m["progress_rows"], int) and isinstance(m["progress_bytes"], int)
        assert isinstance(m["progress_rows_per_second"], float)
        assert (m["progress_dataset"], m["progress_partition"]) == ("slow", PARTITION)
        assert (m["progress_estimate_source"], m["progress_estimated_rows"]) == estimate
        assert 0 < m["progress_percent"] <= 100 * ROWS / estimate[1]
        assert m["progress_eta_seconds"] >= 0
    return metadata


def test_a_slow_export_reports_progress_live_and_at_a_bounded_rate(
    scratch_dsn: str, tmp_path: Path
) -> None:
    _slow_source(scratch_dsn)
    pdef = build_export_partitions_def(SPEC.months_start)
    asset = build_export_asset(SLOW, pdef, retry_policy=None)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["4"])
        # The month before recorded 3,000 rows: that is the estimate.
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=asset.key,
                partition="4|2025-04-01",
                metadata={"dagster/row_count": dg.MetadataValue.int(2 * ROWS)},
            )
        )
        outcome: dict[str, Any] = {}

        def run() -> None:
            outcome["result"] = dg.materialize(
                [asset],
                partition_key=PARTITION,
                instance=instance,
                resources=_resources(scratch_dsn, tmp_path),
            )

        runner = threading.Thread(target=run)
        started = time.monotonic()
        runner.start()
        # Read the event log from here while the run is going: progress must be there before
        # the materialization is.
        live: Progress | None = None
        deadline = time.monotonic() + 60
        while live is None and runner.is_alive() and time.monotonic() < deadline:
            runs = instance.get_runs(limit=1)
            seen = latest_progress(instance, runs[0].run_id).progress.get("slow") if runs else None
            if seen is not None and _materialization(instance, "slow", PARTITION) is None:
                live = seen
            time.sleep(0.02)
        runner.join(timeout=120)
        elapsed = time.monotonic() - started
        result = outcome["result"]
        assert result.success
        assert live is not None, "no progress event was readable while the run was going"
        assert 0 < live.rows < ROWS

        events = _progress_events(instance, result.run_id)
        metadata = _assert_bounded_and_increasing(events, elapsed, ("previous_month", 2 * ROWS))
        materialized = _materialization(instance, "slow", PARTITION)
        _assert_plot_types(materialized)
        assert materialized is not None
        # Written as they happened, not flushed with the materialization at the end.
        assert events[0].timestamp < materialized.timestamp - INTERVAL
        assert metadata[-1]["progress_partition"] == PARTITION
        last = latest_progress(instance, result.run_id).progress["slow"]
        assert last == Progress.from_metadata(metadata[-1])
        # The same reports as readable lines in the run's log.
        lines = [
            e.user_message
            for e in instance.all_logs(result.run_id)
            if e.dagster_event is None and "rows/s" in e.user_message
        ]
        assert len(lines) == len(events)
        assert lines[0].startswith("slow 4|2025-05-01: ")
        assert "of ~3,000 rows (" in lines[0] and "previous_month estimate" in lines[0], lines[0]


def test_a_fast_export_reports_no_progress_and_records_numbers_for_the_plots(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    pdef = build_export_partitions_def(demo_spec.months_start)
    asset = build_export_asset(demo_spec.datasets["orders"], pdef, retry_policy=None)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["4"])
        started = time.monotonic()
        result = dg.materialize(
            [asset],
            partition_key="4|2025-05-01",
            instance=instance,
            resources=_resources(demo_dsn, tmp_path),
        )
        elapsed = time.monotonic() - started
        assert result.success
        materialized = _materialization(instance, "orders", "4|2025-05-01")
        _assert_plot_types(materialized)
        assert materialized is not None and materialized.asset_materialization is not None
        duration = materialized.asset_materialization.metadata["duration_seconds"].value
        events = _progress_events(instance, result.run_id)
        assert len(events) <= int(duration / INTERVAL), (len(events), duration, elapsed)
        if duration < INTERVAL:
            assert events == [] and latest_progress(instance, result.run_id).progress == {}


def test_the_monthly_job_reports_progress_and_records_numbers(
    scratch_dsn: str, tmp_path: Path
) -> None:
    _slow_source(scratch_dsn)
    job = build_monthly_exports_job(SPEC)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["4"])
        started = time.monotonic()
        result = job.execute_in_process(
            instance=instance,
            partition_key="2025-05-01",
            run_config={"ops": {"export_month": {"config": {"run_checks": False}}}},
            resources=_resources(scratch_dsn, tmp_path),
        )
        elapsed = time.monotonic() - started
        assert result.success
        events = _progress_events(instance, result.run_id)
        # The monthly job asks the planner (exact for generate_series with constant bounds).
        _assert_bounded_and_increasing(events, elapsed, ("planner", ROWS))
        assert all(e.step_key == "export_month" for e in events)
        materialized = _materialization(instance, "slow", PARTITION)
        _assert_plot_types(materialized)
        assert materialized is not None
        assert events[0].timestamp < materialized.timestamp - INTERVAL
