"""`run` and `link` with local storage, the progress view on a terminal, and the progress
reader over a real event log."""

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from export_pipeline.cli.progress import latest_progress
from export_pipeline.dagster_private import report_progress_event
from export_pipeline.io_managers.progress import batch_metadata, export_metadata
from export_pipeline.localdev import write_dotenv
from export_pipeline.progress import BatchProgress, ExportProgress
from export_pipeline_tests.cli.conftest import make_cli, one_line
from export_pipeline_tests.harness import fresh_instance


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

    link = cli.call("link", "2", "2025-02", "invoices")
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

    with fresh_instance() as instance:
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


def test_progress_reader_shows_waiting_and_a_ranged_steps_own_line() -> None:
    """What the IO manager's reporter writes (its own metadata functions, as engine events):
    an export still waiting for its first row says so, with the time waited; a ranged step's
    line (partitions done of N) is kept apart from the exports' and shown for a partition
    whose export is not the latest one reported."""

    @dg.asset(key=["exports", "orders"])
    def orders(context: dg.AssetExecutionContext) -> None:
        waiting = ExportProgress("orders", "3|2025-03-01", 0, 0, 7.2, 1000, "planner")
        batch = BatchProgress("exports/orders", 5, 2, 1, 1234, 56_000, 24.0)
        for metadata in (export_metadata(waiting), batch_metadata(batch)):
            report_progress_event(
                context.instance, context.run, "exports__orders", "progress", metadata
            )

    with fresh_instance() as instance:
        result = dg.materialize([orders], instance=instance)
        state = latest_progress(instance, result.run_id)
    waiting = state.report("orders", "3|2025-03-01")
    assert waiting is not None and waiting.waiting_for_first_row
    assert waiting.describe() == "waiting for the first row for 7 s"
    assert state.progress["orders"] == waiting  # the batch's line did not replace it
    other = state.report("orders", "4|2025-03-01")
    assert other is not None and other.is_batch
    assert (other.partitions_done, other.partitions_failed, other.partitions_total) == (2, 1, 5)
    assert other.describe() == "2 of 5 partitions (1 failed), 1,234 rows, 51 rows/s, ETA 16s"


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
            report_progress_event(
                instance,
                running,
                "exports__events",
                "progress",
                {
                    "progress_rows": rows,
                    "progress_rows_per_second": 2000.0,
                    "progress_dataset": "events",
                },
            )


@pytest.mark.slow
def test_status_shows_queued_and_running_with_progress(tmp_path: Path, demo_dsn: str) -> None:
    cli = make_cli(tmp_path, ["3"], EXPORT_SOURCE_DSN=demo_dsn, EXPORT_STORAGE_DIR=str(tmp_path))
    _runs_in_flight(cli.home)
    proc = cli.call("status", "3", "--month", "2025-03", "--json")
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


@pytest.mark.slow
def test_run_is_timed_and_runs_in_one_process(
    tmp_path: Path, demo_dsn: str, record_property: Callable[[str, object], None]
) -> None:
    """`run` of one customer-month, every dataset, timed end to end. The figure is recorded
    (junit property `run_wall_seconds`; docs/cli.md has the measurements), not asserted; what
    keeps it short is: the whole run executes in the child process (the in-process executor,
    no process per step), and the command finds that run by the child's pid."""
    cli = make_cli(
        tmp_path, ["4"], EXPORT_SOURCE_DSN=demo_dsn, EXPORT_STORAGE_DIR=str(tmp_path / "out")
    )
    started = time.monotonic()
    proc = cli("run", "4", "2025-05", "--json")
    record_property("run_wall_seconds", round(time.monotonic() - started, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert [r["status"] for r in summary["datasets"]] == ["done", "done", "done"]
    with cli.instance() as instance:
        [run] = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "4|2025-05-01"}))
        assert run.run_id == summary["run_id"] and run.status == dg.DagsterRunStatus.SUCCESS
        events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event]
    pids = {event.pid for event in events if event.pid is not None}
    assert len(pids) == 1, pids  # every step ran in the run's own process
    steps = {event.step_key for event in events if event.event_type_value == "STEP_SUCCESS"}
    assert {"exports__events", "exports__orders", "exports_manifest"} <= steps


@pytest.mark.slow
def test_run_starts_its_child_before_importing_dagster() -> None:
    """Parsing and `run`'s launcher import no Dagster: the child, which pays for Dagster's
    import and the code location's load, starts before this process pays for its own."""
    probe = (
        "import sys\n"
        "from export_pipeline.cli import main, run\n"
        "main.build_parser().parse_args(['run', '3', '2025-03'])\n"
        "heavy = {'dagster', 'boto3', 'psycopg', 'pyarrow'}\n"
        "sys.exit(', '.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)) or None)\n"
        "sys.exit(', '.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_commands_read_the_dotenv_of_the_current_directory(tmp_path: Path) -> None:
    """As Dagster's own commands do, `run`'s child among them: `.env` in the current
    directory (localdev writes one) sets the variables, over the environment's."""
    cli = make_cli(tmp_path, ["3"])
    write_dotenv(tmp_path / ".env", {"DAGSTER_HOME": str(cli.home)})  # the Cli's directory
    proc = cli("status", "3", "--month", "2025-03", "--json", env={"DAGSTER_HOME": ""})
    assert proc.returncode == 0, proc.stderr
    assert {r["state"] for r in json.loads(proc.stdout)} == {"never run"}
    (tmp_path / ".env").unlink()
    unset = cli("status", "3", env={"DAGSTER_HOME": ""})
    assert unset.returncode == 1 and "DAGSTER_HOME is not set" in one_line(unset.stderr)
