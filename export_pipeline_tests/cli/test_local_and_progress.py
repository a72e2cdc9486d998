"""`run` and `link` with local storage, the progress view on a terminal, and the progress
reader over a real event log."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import pytest

from export_pipeline.cli.progress import latest_progress
from export_pipeline_tests.cli.conftest import make_cli, one_line


@pytest.mark.slow
def test_run_and_link_with_local_storage(tmp_path: Path, demo_dsn: str) -> None:
    storage = tmp_path / "storage"
    cli = make_cli(tmp_path, ["2"], EXPORT_SOURCE_DSN=demo_dsn, EXPORT_STORAGE_DIR=str(storage))
    # TTY_COMPATIBLE=1: rich draws the progress view as on a terminal. Every dataset: the
    # delivery manifest is written too, naming each file's sha256.
    proc = cli("run", "2", "2025-02", env={"TTY_COMPATIBLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = storage / "exports" / "2" / "2025-02"
    manifest = (folder / "manifest.json").read_bytes()
    assert (folder / "_SUCCESS").read_text() == hashlib.sha256(manifest).hexdigest()
    listed = json.loads(manifest)["datasets"]
    assert set(listed) == {"events", "orders", "invoices"}
    for entry in listed.values():
        name = entry["key"].rsplit("/", 1)[-1]
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    path = folder / "invoices.csv.gz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with cli.instance() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["exports", "invoices"]))
        assert event is not None and event.asset_materialization is not None
        assert event.asset_materialization.metadata["sha256"].value == digest
    assert digest[:12] in proc.stdout and str(path) in proc.stdout
    assert "invoices" in proc.stderr and "rows" in proc.stderr  # the progress view's last frame

    link = cli("link", "2", "2025-02", "invoices")
    assert link.returncode == 0, link.stderr
    assert one_line(link.stdout) == str(path)
    assert "local storage has no download links" in one_line(link.stderr)


def test_progress_reader_takes_the_latest_progress_event_of_any_type() -> None:
    """Progress events of two types (an observation, a materialization's metadata): the
    latest wins per dataset; steps' states come from the step events."""

    @dg.asset(key=["exports", "orders"])
    def orders(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        for rows in (100, 250):
            context.log_event(
                dg.AssetObservation(
                    asset_key=context.asset_key,
                    metadata={
                        "progress_rows": rows,
                        "progress_bytes": rows * 10,
                        "progress_rows_per_second": 50.0,
                        "progress_estimated_rows": 1000,
                        "progress_percent": rows / 10,
                        "progress_eta_seconds": 15.0,
                        "progress_estimate_source": "planner",
                        "progress_dataset": "orders",
                        "progress_partition": "3|2025-03-01",
                    },
                )
            )
        context.log.info("no metadata here")
        return dg.MaterializeResult(metadata={"sha256": "abc", "dagster/row_count": 300})

    @dg.asset(key=["exports", "events"])
    def events() -> dg.MaterializeResult:
        # no progress event (the exporter has not reported yet): no entry, step state only
        return dg.MaterializeResult(metadata={"dagster/row_count": 7})

    with dg.instance_for_test() as instance:
        result = dg.materialize([orders, events], instance=instance)
        state = latest_progress(instance, result.run_id)
    report = state.progress["orders"]
    assert (report.rows, report.bytes, report.percent) == (250, 2500, 25.0)
    assert report.eta_seconds == 15.0
    assert report.estimated_rows == 1000 and report.estimate_source == "planner"
    assert report.describe() == "250 rows, 25%, 50 rows/s, ETA 15s"
    assert "events" not in state.progress
    assert state.steps == {"orders": "done", "events": "done"}
    assert state.materialized["orders"]["sha256"] == "abc"
    assert state.materialized["events"]["dagster/row_count"] == 7


def test_console_script_is_declared_and_resolves() -> None:
    """pyproject's [project.scripts] names main(); an install creates `export-pipeline`."""
    import importlib
    import tomllib

    from export_pipeline_tests.cli.conftest import REPO_ROOT

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["export-pipeline"].partition(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as usage:
        main(["run"])
    assert usage.value.code == 2
    assert main(["status", "--month", "2025-13"]) == 2  # a usage error, before any instance


def _runs_in_flight(home: Path) -> None:
    """Customer 3, March 2025: a run of orders not started yet (QUEUED needs a code location's
    origin; NOT_STARTED shows the same way); a started run of events that has
    reported progress as an engine event (the reader accepts any event type)."""
    from dagster._core.events import EngineEventData

    keys = {name: dg.AssetKey(["exports", name]) for name in ("events", "orders", "invoices")}

    def stub(key: dg.AssetKey) -> dg.AssetsDefinition:
        @dg.asset(key=key)
        def _stub() -> None:
            return None

        return _stub

    job = dg.Definitions(
        assets=[stub(k) for k in keys.values()],
        jobs=[dg.define_asset_job("exports_job")],
    ).resolve_job_def("exports_job")
    tags = {"dagster/partition": "3|2025-03-01"}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.create_run_for_job(
            job, status=dg.DagsterRunStatus.NOT_STARTED, tags=tags, asset_selection={keys["orders"]}
        )
        running = instance.create_run_for_job(
            job, status=dg.DagsterRunStatus.STARTED, tags=tags, asset_selection={keys["events"]}
        )
        for rows in (1_000, 4_000):
            instance.report_engine_event(
                "progress",
                running,
                EngineEventData(
                    metadata={
                        "progress_rows": rows,
                        "progress_rows_per_second": 2000.0,
                        "progress_dataset": "events",
                    }
                ),
                step_key="exports__events",
            )


@pytest.mark.slow
def test_status_shows_queued_and_running_with_progress(tmp_path: Path, demo_dsn: str) -> None:
    cli = make_cli(tmp_path, ["3"], EXPORT_SOURCE_DSN=demo_dsn, EXPORT_STORAGE_DIR=str(tmp_path))
    _runs_in_flight(cli.home)
    proc = cli("status", "3", "--month", "2025-03", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["dataset"]: r for r in json.loads(proc.stdout)}
    assert {name: r["state"] for name, r in rows.items()} == {
        "events": "running",
        "orders": "queued",
        "invoices": "never run",
    }
    assert rows["events"]["progress_rows"] == 4_000
    assert rows["events"]["progress"] == "4,000 rows, 2,000 rows/s"
    assert "progress" not in rows["orders"]
