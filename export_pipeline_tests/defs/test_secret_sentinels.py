"""A sentinel password and AWS secret never leave their settings (issue 8.11).

Failing runs whose underlying errors would carry the secret: a source DSN whose password holds
an unencoded `@` (libpq then reads the rest of the password as the host name and says so), and
an S3 secret the endpoint rejects. The sentinels (and every piece of the password) must be
absent from exceptions, Python logs and output, the event log, the instance's files, the
export_requests and export_failures rows, and the webhook body a real HTTP server receives.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest

from export_pipeline.defs.alerts import export_failure_sensor
from export_pipeline.defs.requests import REQUEST_ID_TAG, export_request_failed_sensor
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.resources.alerts import AlertWebhookResource
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.resources.storage import ExportStorageResource, S3ExportStorageResource
from export_pipeline.spec import ExportSpec
from export_pipeline.state.requests import get_request, submit_request
from export_pipeline_tests.defs.run_helpers import failure_context
from export_pipeline_tests.defs.test_alerts import SECRET as WEBHOOK_SECRET
from export_pipeline_tests.defs.test_alerts import receiver
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
)

PASSWORD = "sentinel-pw@7Qx9Lr"  # an unencoded "@": libpq splits the password there
PASSWORD_PIECES = ("sentinel-pw", "7Qx9Lr")
LEAKY_DSN = f"postgresql://exporter:{PASSWORD}@127.0.0.1:1/app"
AWS_SECRET = "sentinel-aws-secret-Zk3m8"
PARTITION = "2|2025-03-01"
SENTINELS = (PASSWORD, *PASSWORD_PIECES, AWS_SECRET)


def _assert_clean(where: str, text: str) -> None:
    for sentinel in SENTINELS:
        assert sentinel not in text, f"{sentinel!r} leaked into {where}"


def _run(
    instance: dg.DagsterInstance,
    spec: ExportSpec,
    source_dsn: str,
    storage: ExportStorageResource,
    request_id: int,
) -> dg.DagsterRun:
    defs = export_definitions(spec, export_resources(source_dsn, storage), retry_policy=None)
    result = materialize(
        instance,
        defs,
        PARTITION,
        selection=[export_asset_key("invoices")],
        tags={REQUEST_ID_TAG: str(request_id)},
    )
    assert result.dagster_run.status == dg.DagsterRunStatus.FAILURE
    return result.dagster_run


def _rows(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        requests = conn.execute("SELECT * FROM export_requests").fetchall()
        failures = conn.execute("SELECT * FROM export_failures").fetchall()
    assert requests and failures
    return repr(requests) + repr(failures)


def _instance_files(instance: dg.DagsterInstance) -> str:
    root = Path(instance.root_directory)
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()
    )


@pytest.mark.parametrize("case", ["source_password", "s3_secret"])
def test_sentinels_stay_out_of_every_record_of_a_failed_run(
    case: str,
    demo_spec: ExportSpec,
    demo_dsn: str,
    scratch_dsn: str,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    if case == "source_password":
        source: str = LEAKY_DSN
        storage: ExportStorageResource = local_storage(tmp_path)
        expected = "cannot connect to the source database"
    else:
        source = demo_dsn
        storage = S3ExportStorageResource(
            s3=ExportS3Resource(
                endpoint_url=s3_endpoint,
                aws_access_key_id="testing-key-id",
                aws_secret_access_key=AWS_SECRET,  # not the endpoint's: every request is refused
                max_attempts=1,
            ),
            bucket=bucket,
        )
        expected = "SignatureDoesNotMatch"
    request_id = submit_request(scratch_dsn, "2", "2025-03", ["invoices"], "sentinel test")
    state = ExportStateResource(dsn=scratch_dsn)
    with fresh_instance() as instance, receiver([]) as hook:
        add_customers(instance, ["2"])
        run = _run(instance, demo_spec, source, storage, request_id)
        alerts = AlertWebhookResource(url=hook.url, secret=WEBHOOK_SECRET)
        resources = {"state": state, "alerts": alerts}
        export_failure_sensor(failure_context(instance, run, "export_failure_sensor", resources))
        export_request_failed_sensor(failure_context(instance, run, "failed", {"state": state}))

        events = [dg.serialize_value(entry) for entry in instance.all_logs(run.run_id)]
        failure_events = [e for e in instance.all_logs(run.run_id) if e.is_dagster_event]
        assert any(expected in dg.serialize_value(e) for e in failure_events)
        _assert_clean("the event log", "\n".join(events))
        _assert_clean("the run", dg.serialize_value(instance.get_run_by_id(run.run_id)))
        _assert_clean("the instance's files", _instance_files(instance))

    [(_, body)] = hook.received
    assert expected in body.decode()  # the webhook says what failed...
    _assert_clean("the webhook body", body.decode())  # ...without the secret
    stored = get_request(scratch_dsn, request_id)
    assert stored is not None and stored.status == "failed" and expected in (stored.error or "")
    _assert_clean("export_requests / export_failures", _rows(scratch_dsn))
    _assert_clean("Python logs", caplog.text)
    out, err = capfd.readouterr()
    _assert_clean("stdout/stderr", out + err)


def test_a_split_password_is_scrubbed_from_reprs_and_state_errors() -> None:
    from export_pipeline.extract.connection import SourceConfig
    from export_pipeline.state.db import StateDatabaseError

    _assert_clean("SourceConfig's repr", repr(SourceConfig(LEAKY_DSN)))
    with pytest.raises(StateDatabaseError, match="cannot connect to the state database") as info:
        submit_request(LEAKY_DSN, "2", "2025-03")
    assert "***@127.0.0.1" in str(info.value)  # libpq's words, the password's piece scrubbed
    _assert_clean("the state database error", str(info.value))
