"""Progress events in the Dagster event log: by the clock, live, bounded, readable; a ranged
step's own line (partitions done of N); an export waiting for its first row says so; numeric
Plots metadata on the materializations."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg

from export_pipeline.cli.progress import LoggedProgress, latest_progress
from export_pipeline.extract.session import lock_key
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.io_managers.progress import (
    PROGRESS_PARTITIONS_DONE,
    PROGRESS_PARTITIONS_TOTAL,
    PROGRESS_WAITING_FOR,
    PROGRESS_WAITING_FOR_FIRST_ROW,
)
from export_pipeline.partitions import split_partition_key
from export_pipeline.spec import Compression, CustomersSpec, DatasetSpec, ExportSpec, Format
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
)

ROWS = 1500
INTERVAL = 0.2
SLOW = DatasetSpec(
    name="slow",
    customer_column="customer_id",
    format=Format.PARQUET,
    compression=Compression.ZSTD,
    # About 1 ms a row (pg_sleep's shortest wait): some 2 s in all.
    sql="SELECT slow_row(g) AS id, 4 AS customer_id, repeat('x', 40) AS pad "
    "FROM generate_series(1, 1500) AS g",
)
# 0.6 s before the first row (the query "runs on the server"), then 200 slow rows.
LATE = DatasetSpec(
    name="late",
    customer_column="customer_id",
    format=Format.PARQUET,
    compression=Compression.ZSTD,
    sql="SELECT slow_row(g) AS id, 4 AS customer_id FROM (SELECT pg_sleep(0.6)) AS wait, "
    "generate_series(1, 200) AS g",
)
PARTITION = "4|2025-05-01"
PLOT_TYPES = {
    "dagster/row_count": dg.IntMetadataValue,
    "size_bytes": dg.IntMetadataValue,
    "duration_seconds": dg.FloatMetadataValue,
    "rows_per_second": dg.FloatMetadataValue,
}


def _spec(*datasets: DatasetSpec) -> ExportSpec:
    return ExportSpec(
        customers=CustomersSpec("id", sql="SELECT 4 AS id"),
        months_start=date(2025, 1, 1),
        datasets={d.name: d for d in datasets},
    )


def _slow_source(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION slow_row(g int) RETURNS int LANGUAGE plpgsql VOLATILE"
            " AS $$ BEGIN PERFORM pg_sleep(0.0005); RETURN g; END $$"
        )


def _definitions(spec: ExportSpec, dsn: str, root: Path) -> dg.Definitions:
    # Small Arrow batches, so the rows arrive a few at a time.
    resources = export_resources(
        dsn, local_storage(root), progress_interval_seconds=INTERVAL, batch_size_hint_bytes=1024
    )
    return export_definitions(spec, resources, checks=False, manifest=False)


def _progress_events(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    """The run's progress events (engine events with progress_* metadata), in order."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    entries = [r.event_log_entry for r in records.records]
    return [e for e in entries if "progress_rows" in _metadata(e)]


def _metadata(entry: dg.EventLogEntry) -> dict[str, Any]:
    event = entry.dagster_event
    if event is None or event.engine_event_data is None:
        return {}
    return {k: v.value for k, v in event.engine_event_data.metadata.items()}


def _materialization(
    instance: dg.DagsterInstance, dataset: str, partition: str
) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=export_asset_key(dataset), asset_partitions=[partition]),
        limit=1,
    ).records
    return records[0] if records else None


def _assert_plot_types(record: dg.EventLogRecord | None) -> None:
    assert record is not None and record.asset_materialization is not None
    metadata = record.asset_materialization.metadata
    for key, kind in PLOT_TYPES.items():
        assert isinstance(metadata[key], kind), f"{key}: {type(metadata[key]).__name__}"
        assert isinstance(metadata[key].value, int if kind is dg.IntMetadataValue else float)


def test_a_slow_export_reports_progress_live_and_at_a_bounded_rate(
    scratch_dsn: str, tmp_path: Path
) -> None:
    _slow_source(scratch_dsn)
    defs = _definitions(_spec(SLOW), scratch_dsn, tmp_path)
    with fresh_instance() as instance:
        add_customers(instance, ["4"])
        # The month before recorded 3,000 rows: that is the estimate.
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=export_asset_key("slow"),
                partition="4|2025-04-01",
                metadata={"dagster/row_count": dg.MetadataValue.int(2 * ROWS)},
            )
        )
        outcome: dict[str, Any] = {}

        def run() -> None:
            outcome["result"] = materialize(instance, defs, PARTITION)

        runner = threading.Thread(target=run)
        started = time.monotonic()
        runner.start()
        # Read the event log from here while the run is going: progress must be there before
        # the materialization is.
        live: LoggedProgress | None = None
        deadline = time.monotonic() + 60
        while live is None and runner.is_alive() and time.monotonic() < deadline:
            runs = instance.get_runs(limit=1)
            seen = latest_progress(instance, runs[0].run_id).progress.get("slow") if runs else None
            if (
                seen is not None
                and seen.rows > 0
                and _materialization(instance, "slow", PARTITION) is None
            ):
                live = seen
            time.sleep(0.02)  # polling the event log, not waiting for an outcome
        runner.join(timeout=120)
        elapsed = time.monotonic() - started
        result = outcome["result"]
        assert result.success
        assert live is not None, "no progress event was readable while the run was going"
        assert 0 < live.rows < ROWS

        events = _progress_events(instance, result.run_id)
        metadata = [_metadata(e) for e in events]
        # a report each interval while the export runs (none for the batch of one)
        assert 3 <= len(events) <= elapsed / INTERVAL + 1
        assert all(PROGRESS_PARTITIONS_TOTAL not in m for m in metadata)
        rows = [m["progress_rows"] for m in metadata]
        assert rows == sorted(rows) and rows[-1] <= ROWS and rows[-1] > 0
        for m in metadata:
            assert isinstance(m["progress_rows"], int) and isinstance(m["progress_bytes"], int)
            assert isinstance(m["progress_rows_per_second"], float)
            assert (m["progress_dataset"], m["progress_partition"]) == ("slow", PARTITION)
            assert (m["progress_estimate_source"], m["progress_estimated_rows"]) == (
                "previous_month",
                2 * ROWS,
            )
            assert 0 <= m["progress_percent"] <= 100 * ROWS / (2 * ROWS)
        materialized = _materialization(instance, "slow", PARTITION)
        _assert_plot_types(materialized)
        assert materialized is not None
        # Written as they happened, not flushed with the materialization at the end.
        assert events[0].timestamp < materialized.timestamp - INTERVAL
        last = latest_progress(instance, result.run_id).progress["slow"]
        assert last == LoggedProgress.from_metadata(metadata[-1])
        # The same reports as readable lines in the run's log.
        lines = [
            e.user_message
            for e in instance.all_logs(result.run_id)
            if e.dagster_event is None and e.user_message.startswith("slow 4|2025-05-01: ")
        ]
        assert len(lines) == len(events)
        reading = [line for line in lines if "rows/s" in line]
        assert reading and "of ~3,000 rows (" in reading[-1]
        assert "previous_month estimate" in reading[-1], reading[-1]


def test_a_fast_export_reports_no_progress_and_records_numbers_for_the_plots(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    defs = _definitions(_spec(demo_spec.datasets["orders"]), demo_dsn, tmp_path)
    with fresh_instance() as instance:
        add_customers(instance, ["4"])
        result = materialize(instance, defs, PARTITION)
        assert result.success
        materialized = _materialization(instance, "orders", PARTITION)
        _assert_plot_types(materialized)
        assert materialized is not None and materialized.asset_materialization is not None
        duration = materialized.asset_materialization.metadata["duration_seconds"].value
        assert isinstance(duration, float)
        events = _progress_events(instance, result.run_id)
        assert len(events) <= int(duration / INTERVAL), (len(events), duration)
        if duration < INTERVAL:
            assert events == [] and latest_progress(instance, result.run_id).progress == {}


def test_a_ranged_step_reports_its_range_and_an_export_waiting_for_its_first_row(
    scratch_dsn: str, tmp_path: Path
) -> None:
    _slow_source(scratch_dsn)
    defs = _definitions(_spec(LATE), scratch_dsn, tmp_path)
    keys = ["4|2025-04-01", "4|2025-05-01"]
    with fresh_instance() as instance:
        add_customers(instance, ["4"])
        result = materialize(instance, defs, (keys[0], keys[-1]))
        assert result.success
        events = _progress_events(instance, result.run_id)
        assert {e.step_key for e in events} == {"exports__late"}
        batch = [_metadata(e) for e in events if PROGRESS_PARTITIONS_TOTAL in _metadata(e)]
        exports = [_metadata(e) for e in events if PROGRESS_PARTITIONS_TOTAL not in _metadata(e)]
        # the step's own line, every interval: k of 2 partitions, never going back
        assert batch and all(m[PROGRESS_PARTITIONS_TOTAL] == 2 for m in batch)
        done = [m[PROGRESS_PARTITIONS_DONE] for m in batch]
        assert done == sorted(done) and done[0] == 0 and set(done) <= {0, 1, 2}
        assert all(m["progress_dataset"] == "exports/late" for m in batch)
        # each export reports under its own partition, first waiting, then with rows
        assert {m["progress_partition"] for m in exports} == set(keys)
        for key in keys:
            mine = [m for m in exports if m["progress_partition"] == key]
            waiting = [m for m in mine if m[PROGRESS_WAITING_FOR_FIRST_ROW]]
            assert waiting and all(m["progress_rows"] == 0 for m in waiting)
            assert mine[0][PROGRESS_WAITING_FOR_FIRST_ROW]  # it waited before any row came
            # no month before was recorded: the planner's estimate (exact for this query),
            # known while the query still waits for its first row
            assert {
                (m["progress_estimate_source"], m["progress_estimated_rows"]) for m in mine
            } == {("planner", 200)}
        lines = [e.user_message for e in instance.all_logs(result.run_id)]
        assert any(
            line.startswith("exports/late: 0 of 2 partitions, ") and "rows/s" in line
            for line in lines
        )
        assert any(
            line.startswith("late 4|2025-04-01: waiting for the first row for ") for line in lines
        )
        for key in keys:
            assert _materialization(instance, "late", key) is not None


def test_a_step_waiting_for_another_runs_partition_locks_reports_the_wait(
    scratch_dsn: str, tmp_path: Path
) -> None:
    """Another run holds the customer-month's lock: the step says what it waits for, and for
    how long, every interval, then exports once the lock is free."""
    quick = DatasetSpec(
        name="quick",
        customer_column="customer_id",
        format=Format.CSV,
        compression=Compression.NONE,
        sql="SELECT 4 AS customer_id, 1 AS id",
    )
    defs = _definitions(_spec(quick), scratch_dsn, tmp_path)
    customer, month = split_partition_key(PARTITION)
    key = lock_key(LocalObjectStore(tmp_path).location, customer, str(month))
    with fresh_instance() as instance:
        add_customers(instance, ["4"])
        holder = psycopg.connect(scratch_dsn, autocommit=True)
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        outcome: list[dg.ExecuteInProcessResult] = []
        run = threading.Thread(
            target=lambda: outcome.append(materialize(instance, defs, PARTITION))
        )
        run.start()
        try:
            waits = _wait_for_waits(instance, 2)
        finally:
            holder.close()  # the other run ends: its lock with it
            run.join(60)
        [result] = outcome
        assert result.success and _materialization(instance, "quick", PARTITION) is not None
        first, second = waits[:2]
        for entry in (first, second):
            assert entry.dagster_event is not None
            assert (entry.dagster_event.message or "").startswith(
                "exports/quick: waiting for the customer-months another run is writing (their "
                "partition locks) for "
            )
        seconds = [_metadata(e)["progress_elapsed_seconds"] for e in (first, second)]
        assert INTERVAL <= seconds[0] < seconds[1]


def _wait_for_waits(instance: dg.DagsterInstance, count: int) -> list[dg.EventLogEntry]:
    """The first `count` lock-wait progress events of the only run, once there are as many
    (the event log polled, bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = instance.get_runs(limit=1)
        if runs:
            records = instance.get_records_for_run(
                runs[0].run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
            ).records
            waits = [
                r.event_log_entry
                for r in records
                if PROGRESS_WAITING_FOR in _metadata(r.event_log_entry)
            ]
            if len(waits) >= count:
                return waits
        time.sleep(INTERVAL / 2)  # polling the event log, bounded by the deadline
    raise AssertionError(f"fewer than {count} lock-wait reports in 30 s")
