from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from export_pipeline.dagster_private import ranged_run_tags
from export_pipeline.defs.alerts import export_failure_sensor
from export_pipeline.defs.runs import run_partitions
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.resources.alerts import AlertWebhookResource
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.spec import ExportSpec
from export_pipeline.state.db import StateDatabaseError
from export_pipeline.webhook import WebhookConfig, post
from export_pipeline_tests.defs.run_helpers import UNREACHABLE_SOURCE, failure_context
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
)

SECRET = "whsec-test-4711"
EXPORTS_INVOICES = [export_asset_key("invoices")]


@dataclass
class Receiver:
    url: str
    statuses: list[int]  # answered in order; 200 once exhausted
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@contextmanager
def receiver(statuses: list[int]) -> Iterator[Receiver]:
    state = Receiver("", list(statuses))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers.items()), body))
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/t0ken-in-path"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _failed_export_run(
    instance: dg.DagsterInstance,
    spec: ExportSpec,
    tmp_path: Path,
    partitions: str | tuple[str, str] = "2|2025-03-01",
    selection: list[dg.AssetKey] = EXPORTS_INVOICES,
) -> dg.DagsterRun:
    """A run of exports/invoices (or `selection`) that fails as a whole: the source is
    unreachable."""
    add_customers(instance, ["1", "2", "3"])
    resources = export_resources(UNREACHABLE_SOURCE, local_storage(tmp_path))
    # No RetryPolicy: the run fails at once (an unreachable source is transient).
    defs = export_definitions(spec, resources, retry_policy=None, checks=False, manifest=False)
    run = materialize(instance, defs, partitions, selection=selection).dagster_run
    assert run.status == dg.DagsterRunStatus.FAILURE
    return run


def _failures(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT run_id, job_name, partition_key, customer, month, datasets, error, "
            "alert_status FROM export_failures ORDER BY id"
        ).fetchall()


def _sense(
    instance: dg.DagsterInstance, run: dg.DagsterRun, state_dsn: str, alerts: AlertWebhookResource
) -> None:
    resources = {"state": ExportStateResource(dsn=state_dsn), "alerts": alerts}
    export_failure_sensor(failure_context(instance, run, "export_failure_sensor", resources))


def _verify(headers: dict[str, str], body: bytes) -> None:
    timestamp = headers["X-Export-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(headers["X-Export-Signature"], f"sha256={expected.hexdigest()}")


def test_failed_run_is_recorded_and_posted_signed_after_a_503(
    scratch_dsn: str, demo_spec: ExportSpec, tmp_path: Path
) -> None:
    with fresh_instance() as instance, receiver([503]) as hook:
        run = _failed_export_run(instance, demo_spec, tmp_path)
        alerts = AlertWebhookResource(url=hook.url, secret=SECRET, backoff_seconds=0.01)
        _sense(instance, run, scratch_dsn, alerts)
        _sense(instance, run, scratch_dsn, alerts)  # a retried tick: no second row or post
    [row] = _failures(scratch_dsn)
    run_id, job, pkey, customer, month, datasets, error, alert_status = row
    assert (run_id, job, pkey) == (run.run_id, "exports_job", "2|2025-03-01")
    assert (customer, month, datasets, alert_status) == ("2", "2025-03", ["invoices"], "sent")
    assert "cannot connect to the source database" in error and "pw-source-123" not in error
    assert len(hook.received) == 2  # the 503, then the retry that got a 200
    for headers, body in hook.received:
        _verify(headers, body)
    payload = json.loads(hook.received[1][1])
    assert payload["event"] == "export.run_failed" and payload["run_id"] == run.run_id
    assert (payload["customer"], payload["month"], payload["datasets"]) == (
        "2",
        "2025-03",
        ["invoices"],
    )
    assert [(f["partition_key"], f["dataset"]) for f in payload["failures"]] == [
        ("2|2025-03-01", "invoices")  # the step failed before any partition: one row
    ]
    assert SECRET not in hook.received[1][1].decode()


def test_a_ranged_run_that_fails_as_a_whole_is_one_row_naming_its_range(
    scratch_dsn: str, demo_spec: ExportSpec, tmp_path: Path
) -> None:
    with fresh_instance() as instance:
        run = _failed_export_run(instance, demo_spec, tmp_path, ("1|2025-03-01", "3|2025-03-01"))
        _sense(instance, run, scratch_dsn, AlertWebhookResource())
    [row] = _failures(scratch_dsn)
    assert row[:6] == (
        run.run_id,
        "exports_job",
        "1|2025-03-01...3|2025-03-01",
        None,  # several customers
        "2025-03",  # one month
        ["invoices"],
    )
    assert "exports/invoices 1|2025-03-01...3|2025-03-01" in row[6]
    assert "cannot connect to the source database" in row[6] and row[7] == "not_configured"


def test_every_export_step_failing_as_a_whole_is_a_row_of_its_own(
    scratch_dsn: str, demo_spec: ExportSpec, tmp_path: Path
) -> None:
    """Three steps of one range fail before any partition: three rows, one per dataset, each
    with its own step's error (none is lost to another's row)."""
    datasets = sorted(demo_spec.datasets)
    selection = [export_asset_key(d) for d in datasets]
    with fresh_instance() as instance:
        run = _failed_export_run(
            instance, demo_spec, tmp_path, ("1|2025-03-01", "3|2025-03-01"), selection
        )
        _sense(instance, run, scratch_dsn, AlertWebhookResource())
    rows = _failures(scratch_dsn)
    assert [(r[2], r[5]) for r in rows] == [("1|2025-03-01...3|2025-03-01", [d]) for d in datasets]
    for row, dataset in zip(rows, datasets, strict=True):
        assert f"exports__{dataset}: exports/{dataset} 1|2025-03-01...3|2025-03-01" in row[6]


def test_a_400_is_not_retried(scratch_dsn: str, demo_spec: ExportSpec, tmp_path: Path) -> None:
    with fresh_instance() as instance, receiver([400, 200]) as hook:
        run = _failed_export_run(instance, demo_spec, tmp_path)
        alerts = AlertWebhookResource(url=hook.url, secret=SECRET, backoff_seconds=0.01)
        _sense(instance, run, scratch_dsn, alerts)
    assert len(hook.received) == 1
    assert _failures(scratch_dsn)[0][-1] == "failed: HTTP 400"


def test_a_run_without_partition_is_recorded_without_one(scratch_dsn: str) -> None:
    @dg.op
    def boom() -> None:
        raise RuntimeError("boom: ad-hoc failure")

    @dg.job
    def adhoc() -> None:
        boom()

    with fresh_instance() as instance:
        result = adhoc.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        _sense(instance, result.dagster_run, scratch_dsn, AlertWebhookResource())
    [row] = _failures(scratch_dsn)
    assert row[1:6] == ("adhoc", None, None, None, [])
    assert "boom: ad-hoc failure" in row[6] and row[7] == "not_configured"


def test_failure_sensor_fails_visibly_when_the_state_database_is_unreachable(
    demo_spec: ExportSpec, tmp_path: Path
) -> None:
    with fresh_instance() as instance:
        run = _failed_export_run(instance, demo_spec, tmp_path)
        with pytest.raises(StateDatabaseError, match="cannot connect to the state database"):
            _sense(instance, run, "postgresql://u:pw@127.0.0.1:1/x", AlertWebhookResource())


def test_connection_errors_are_retried_with_bounded_backoff() -> None:
    delays: list[float] = []
    config = WebhookConfig(
        "http://127.0.0.1:1/x", SECRET, max_attempts=5, backoff_seconds=1, max_backoff_seconds=3
    )
    delivery = post(config, {"a": 1}, sleep=delays.append)
    assert not delivery.ok and delivery.attempts == 5
    assert delivery.detail.startswith("connection error")
    assert delays == [1, 2, 3, 3]
    assert SECRET not in repr(config) and "/x" not in repr(config)


def test_settings_wire_state_and_alerts_as_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_pipeline.settings import build_resources

    env = {
        "EXPORT_STATE_DSN": "postgresql://u:topsecret@db/state",
        "EXPORT_ALERT_WEBHOOK_URL": "https://hooks.example/x",
        "EXPORT_ALERT_WEBHOOK_SECRET": "s",
        "EXPORT_STORAGE_DIR": "/tmp/exports",
    }
    resources = build_resources(env)
    assert resources["state"].dsn == dg.EnvVar("EXPORT_STATE_DSN")
    assert resources["alerts"].secret == dg.EnvVar("EXPORT_ALERT_WEBHOOK_SECRET")
    # without the variable the sensors fail, naming it
    assert build_resources({"EXPORT_STORAGE_DIR": "/x"})["state"].dsn is None
    assert "topsecret" not in repr(ExportStateResource(dsn=env["EXPORT_STATE_DSN"]))
    monkeypatch.setenv("EXPORT_SPEC", str(Path(__file__).resolve().parents[2] / "exports.yaml"))
    monkeypatch.setenv("EXPORT_STORAGE_DIR", "/tmp/exports")
    monkeypatch.delenv("EXPORT_S3_BUCKET", raising=False)
    from export_pipeline.definitions import defs

    repo = defs().get_repository_def()
    assert repo.get_sensor_def("export_requests_sensor").job_name == "exports_job"
    assert repo.get_sensor_def("export_failure_sensor") is not None


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (
            {
                "dagster/partition": "3|2025-03-01",
                "dagster/partition/customer": "3",
                "dagster/partition/month": "2025-03-01",
            },
            ("3|2025-03-01", "3", "2025-03"),
        ),
        (
            ranged_run_tags("1|2025-03-01", "20|2025-03-01"),  # a month of customers
            ("1|2025-03-01...20|2025-03-01", None, "2025-03"),
        ),
        (
            ranged_run_tags("3|2025-01-01", "3|2025-06-01"),  # a customer's history
            ("3|2025-01-01...3|2025-06-01", "3", None),
        ),
        ({}, (None, None, None)),
    ],
)
def test_run_partitions_from_tags(tags: dict[str, str], expected: tuple) -> None:
    found = run_partitions(dg.DagsterRun(job_name="any", tags=tags))
    assert (found.partition_key, found.customer, found.month) == expected
