from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from export_pipeline.defs.requests import (
    build_export_requests_sensor,
    export_request_failed_sensor,
    export_request_started_sensor,
    export_request_succeeded_sensor,
)
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.spec import ExportSpec, load_spec
from export_pipeline.state.db import StateDatabaseError
from export_pipeline.state.requests import get_request, submit_request
from export_pipeline_tests.defs.run_helpers import (
    UNREACHABLE_SOURCE,
    failure_context,
    status_context,
)
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# The sensor of the shipped spec, as the code location builds it.
export_requests_sensor = build_export_requests_sensor(load_spec(REPO_ROOT / "exports.yaml"))


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with fresh_instance() as instance:
        add_customers(instance, ["1", "2", "3"])
        yield instance


def _tick(instance: dg.DagsterInstance, dsn: str, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"state": ExportStateResource(dsn=dsn)}
    )
    result = export_requests_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _run(
    instance: dg.DagsterInstance,
    spec: ExportSpec,
    source_dsn: str,
    storage_dir: Path,
    request: dg.RunRequest,
) -> dg.DagsterRun:
    """The run a request asks for: its partition, datasets and tags (no retries)."""
    resources = export_resources(source_dsn, local_storage(storage_dir))
    defs = export_definitions(spec, resources, retry_policy=None)
    return materialize(
        instance,
        defs,
        request.partition_key or "",
        selection=request.asset_selection,
        tags=request.tags,
    ).dagster_run


def _keys(result: dg.SensorResult) -> list[str]:
    return [r.run_key or "" for r in result.run_requests or []]


def test_requests_become_runs_exactly_once_across_restarts(
    instance: dg.DagsterInstance, scratch_dsn: str
) -> None:
    ids = [submit_request(scratch_dsn, c, "2025-03", None, "app") for c in ("1", "2", "3")]
    ids.append(submit_request(scratch_dsn, "2", "2025-04", ["orders", "events"], "ops"))
    first = _tick(instance, scratch_dsn, None)
    assert _keys(first) == [f"export-request-{i}" for i in ids]
    last = first.run_requests[-1]  # type: ignore[index]
    assert last.partition_key == "2|2025-04-01"
    assert last.asset_selection == [
        dg.AssetKey(["exports", "orders"]),
        dg.AssetKey(["exports", "events"]),
    ]
    assert last.tags == {"export/request_id": str(ids[3]), "export/requester": "ops"}
    everything = first.run_requests[0].asset_selection  # type: ignore[index]
    assert {k.path[1] for k in everything or []} == {"events", "orders", "invoices"}
    assert json.loads(first.cursor or "") == {"last_id": ids[3]}

    # a restarted sensor with the stored cursor asks for nothing again
    again = _tick(instance, scratch_dsn, first.cursor)
    assert _keys(again) == [] and json.loads(again.cursor or "") == {"last_id": ids[3]}
    # new requests, and the cursor lost: only the new ones; `queued` rows are never reclaimed
    new = [submit_request(scratch_dsn, "1", "2025-05"), submit_request(scratch_dsn, "3", "2025-05")]
    lost = _tick(instance, scratch_dsn, None)
    assert _keys(lost) == [f"export-request-{i}" for i in new]
    assert _keys(_tick(instance, scratch_dsn, None)) == []
    for request_id in ids + new:
        request = get_request(scratch_dsn, request_id)
        assert request is not None
        assert (request.status, request.run_key) == ("queued", f"export-request-{request_id}")


def test_a_tick_whose_result_was_lost_is_asked_again_under_the_same_run_keys(
    instance: dg.DagsterInstance, scratch_dsn: str
) -> None:
    recorded = _tick(instance, scratch_dsn, None).cursor  # nothing pending: last_id 0
    ids = [submit_request(scratch_dsn, "1", "2025-03"), submit_request(scratch_dsn, "2", "2025-03")]
    dropped = _tick(instance, scratch_dsn, recorded)  # claimed, but its result never recorded
    retried = _tick(instance, scratch_dsn, recorded)
    assert _keys(retried) == _keys(dropped) == [f"export-request-{i}" for i in ids]
    assert _keys(_tick(instance, scratch_dsn, retried.cursor)) == []


def test_requests_that_cannot_run_fail_with_the_reason(
    instance: dg.DagsterInstance, scratch_dsn: str
) -> None:
    submit_request(scratch_dsn, "1", "2025-03")  # creates the table
    rows = [
        ("1", "2025-03", ["events", "payroll"], "unknown dataset(s) payroll"),
        ("99", "2025-03", None, "customer '99' is not a partition yet"),
        ("1", "2024-12", None, "month 2024-12 is not an export partition"),
        ("1", "2999-01", None, "month 2999-01 is not an export partition"),
        ("../x", "2025-03", None, "customer key '../x' is not allowed"),
        ("1", "03/2025", None, "is not a month"),
    ]
    with psycopg.connect(scratch_dsn) as conn:  # applications may INSERT directly
        ids = [
            conn.execute(
                "INSERT INTO export_requests (customer, month, datasets) VALUES (%s, %s, %s) "
                "RETURNING id",
                (customer, month, datasets),
            ).fetchone()[0]  # type: ignore[index]
            for customer, month, datasets, _ in rows
        ]
    result = _tick(instance, scratch_dsn, None)
    assert len(result.run_requests or []) == 1
    for request_id, (*_, reason) in zip(ids, rows, strict=True):
        request = get_request(scratch_dsn, request_id)
        assert request is not None and request.status == "failed"
        assert reason in (request.error or "")


def test_sensor_fails_visibly_without_a_state_database(instance: dg.DagsterInstance) -> None:
    with pytest.raises(StateDatabaseError, match="cannot connect to the state database") as info:
        _tick(instance, "postgresql://u:pw-state-1@127.0.0.1:1/x", None)
    assert "pw-state-1" not in str(info.value)
    with pytest.raises(StateDatabaseError, match="EXPORT_STATE_DSN is not set"):
        export_requests_sensor(
            dg.build_sensor_context(instance=instance, resources={"state": ExportStateResource()})
        )


def _queued_run(instance: dg.DagsterInstance, dsn: str, datasets: list[str]) -> dg.RunRequest:
    request_id = submit_request(dsn, "2", "2025-03", datasets, "billing-app")
    [run_request] = _tick(instance, dsn, None).run_requests or []
    assert run_request.tags["export/request_id"] == str(request_id)
    return run_request


def test_a_successful_run_records_the_file_uris(
    instance: dg.DagsterInstance,
    scratch_dsn: str,
    demo_dsn: str,
    demo_spec: ExportSpec,
    tmp_path: Path,
) -> None:
    rr = _queued_run(instance, scratch_dsn, ["invoices", "orders"])
    run = _run(instance, demo_spec, demo_dsn, tmp_path, rr)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    request_id = int(rr.tags["export/request_id"])
    resources = {"state": ExportStateResource(dsn=scratch_dsn)}
    export_request_started_sensor(
        status_context(instance, run, dg.DagsterEventType.RUN_START, "started", resources)
    )
    running = get_request(scratch_dsn, request_id)
    assert running is not None and (running.status, running.run_id) == ("running", run.run_id)
    export_request_succeeded_sensor(
        status_context(instance, run, dg.DagsterEventType.RUN_SUCCESS, "succeeded", resources)
    )
    done = get_request(scratch_dsn, request_id)
    assert done is not None and done.status == "succeeded" and done.error is None
    assert sorted(done.uris or []) == [
        str(tmp_path / "exports/2/2025-03/invoices.csv.gz"),
        str(tmp_path / "exports/2/2025-03/orders.jsonl"),
    ]
    assert all(Path(uri).is_file() for uri in done.uris or [])


def test_a_failed_run_records_the_error_and_other_runs_are_ignored(
    instance: dg.DagsterInstance, scratch_dsn: str, demo_spec: ExportSpec, tmp_path: Path
) -> None:
    rr = _queued_run(instance, scratch_dsn, ["invoices"])
    run = _run(instance, demo_spec, UNREACHABLE_SOURCE, tmp_path, rr)
    assert run.status == dg.DagsterRunStatus.FAILURE
    resources = {"state": ExportStateResource(dsn=scratch_dsn)}
    export_request_failed_sensor(failure_context(instance, run, "failed", resources))
    request = get_request(scratch_dsn, int(rr.tags["export/request_id"]))
    assert request is not None and (request.status, request.run_id) == ("failed", run.run_id)
    assert "cannot connect to the source database" in (request.error or "")
    assert "pw-source-123" not in (request.error or "")

    other = _run(
        instance,
        demo_spec,
        UNREACHABLE_SOURCE,
        tmp_path,
        dg.RunRequest(partition_key=rr.partition_key, asset_selection=rr.asset_selection),
    )
    skipped = export_request_failed_sensor(failure_context(instance, other, "failed", resources))
    assert isinstance(skipped, dg.SkipReason)
    unchanged = get_request(scratch_dsn, request.id)
    assert unchanged is not None and unchanged.run_id == run.run_id
