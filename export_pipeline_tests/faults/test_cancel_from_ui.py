"""A run cancelled from the UI while it streams (issue 8, item 2), for every format.

dagster-webserver and dagster-daemon run on the production instance config (deploy/dagster.yaml)
with S3 (the local server over HTTP) as storage. One run materializes one customer-month of four
datasets, one per format (Parquet, CSV, JSON Lines, JSON). Every run of the code location
executes in process: one run process, no step subprocesses, the export steps one after the
other on one source session. The first export holds mid-stream (source.py: an advisory lock
the test holds) after more than one 16 MiB part is out, so its multipart upload is open and its
query is active on the source, the others wait their turn. Then the test presses "Terminate"
the way the UI does: the `terminateRun` GraphQL mutation, which makes the code server interrupt
the run process. The export assets carry the production RetryPolicy: the cancel must end the
run, not be taken for a failure and retried.

Asserted, from the moment of the terminate:
- every source query (and connection) is gone from pg_stat_activity within 5 s (the query is
  cancelled on the server; a process that merely exited would leave it running until the lock
  was released);
- the run is CANCELED and the one process that ran it has exited within 10 s, no step retried;
- no multipart upload is left open and nothing is under any final key;
- the step failure names the asset and the partition;
- a retry (the hold released) writes all four files, byte-identical to an export of the
  unchanged source made directly with the engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import yaml

from export_pipeline.engine import EngineTuning
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.spec import Format, parse_spec
from export_pipeline.storage.s3 import S3Config, S3ObjectStore
from export_pipeline_tests.dagster_processes import (
    LOCATION_NAME,
    REPO_ROOT,
    dagster_home,
    dagster_services,
    wait_for,
)
from export_pipeline_tests.faults.source import (
    CUSTOMER,
    MONTH,
    PARTITION,
    create_events,
    export_backends,
    hold,
    new_lock_key,
    spec_yaml,
)
from export_pipeline_tests.harness import export_one
from export_pipeline_tests.helpers import list_keys, pending_uploads
from export_pipeline_tests.services import scratch_database

# Parquet closes its first 131,072-row row group (about 26 MB) before the hold, so a 16 MiB
# part is out whichever format runs first.
ROWS = 150_000
HOLD_ROW = 145_000
DATASETS = {
    "as_parquet": Format.PARQUET,
    "as_csv": Format.CSV,
    "as_jsonl": Format.JSONL,
    "as_json": Format.JSON,
}
logger = logging.getLogger(__name__)
QUERY_GONE_SECONDS = 5
RUN_ENDED_SECONDS = 10

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
TERMINATE_RUN = """
mutation($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""


def _launch_params() -> dict[str, Any]:
    return {
        "selector": {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": ["exports", name]} for name in DATASETS],
        },
        "executionMetadata": {
            "tags": [
                {"key": "dagster/partition", "value": PARTITION},
                {"key": "dagster/partition/customer", "value": CUSTOMER},
                {"key": "dagster/partition/month", "value": MONTH.start.isoformat()},
            ]
        },
    }


def _events(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(
        f"{e.dagster_event.event_type_value if e.dagster_event else ''} {e.message[:300]}"
        for e in instance.all_logs(run_id)
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _uploads_with_parts(s3_client: Any, bucket: str) -> int:
    uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sum(
        1
        for u in uploads
        if s3_client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
    )


@pytest.mark.slow
def test_terminate_from_the_ui_cancels_queries_and_uploads(
    tmp_path: Path,
    pg_server: str,
    scratch_dsn: str,
    s3_endpoint: str,
    bucket: str,
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock_key = new_lock_key()
    spec_text = spec_yaml(DATASETS, HOLD_ROW, lock_key)
    spec_path = tmp_path / "held_exports.yaml"
    spec_path.write_text(spec_text)
    instance_yaml = yaml.safe_dump(
        yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    )
    with scratch_database(pg_server, "source") as source_dsn:
        create_events(source_dsn, ROWS)
        dbname = str(psycopg.conninfo.conninfo_to_dict(source_dsn)["dbname"])
        home = dagster_home(
            tmp_path, instance_yaml, instance_dsn=scratch_dsn, source_dsn=source_dsn, spec=spec_path
        )
        del home.env["EXPORT_STORAGE_DIR"]
        home.env.update(EXPORT_S3_BUCKET=bucket, EXPORT_S3_ENDPOINT_URL=s3_endpoint)
        monkeypatch.setenv("DAGSTER_PG_URL", home.env["DAGSTER_PG_URL"])
        with (
            dg.DagsterInstance.from_config(str(home.home)) as instance,
            hold(source_dsn, lock_key) as held,
            psycopg.connect(source_dsn, autocommit=True) as admin,
        ):
            instance.add_dynamic_partitions("customers", [CUSTOMER])
            with dagster_services(home) as services:
                launched = services.graphql(LAUNCH_RUN, {"params": _launch_params()})["launchRun"]
                assert launched["__typename"] == "LaunchRunSuccess", launched
                run_id = launched["run"]["runId"]

                def streaming_and_held() -> bool | None:
                    run = instance.get_run_by_id(run_id)
                    assert run is not None and not run.is_finished, _events(instance, run_id)
                    held_now = len(export_backends(admin, dbname, waiting=True))
                    uploading = _uploads_with_parts(s3_client, bucket)
                    return True if held_now == uploading == 1 else None

                wait_for("an export held mid-stream with parts out", 240, streaming_and_held)
                pids = {
                    e.dagster_event.pid
                    for e in instance.all_logs(run_id)
                    if e.dagster_event and e.dagster_event.pid
                }
                assert len(pids) == 1, pids  # one run process, no step processes
                terminated = time.monotonic()
                result = services.graphql(TERMINATE_RUN, {"runId": run_id})["terminateRun"]
                assert result["__typename"] == "TerminateRunSuccess", result

                wait_for(
                    "the source queries to be cancelled",
                    QUERY_GONE_SECONDS,
                    lambda: not export_backends(admin, dbname) or None,
                )
                queries_gone = time.monotonic() - terminated

                def ended() -> bool | None:
                    run = instance.get_run_by_id(run_id)
                    assert run is not None
                    done = run.status is dg.DagsterRunStatus.CANCELED
                    return True if done and not any(_alive(p) for p in pids) else None

                wait_for("the run to end", RUN_ENDED_SECONDS, ended)
                run_ended = time.monotonic() - terminated
                retries = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
                assert retries == [], "the cancel was taken for a failure and retried"
                assert export_backends(admin, dbname) == []
                assert pending_uploads(s3_client, bucket) == []
                assert list_keys(s3_client, bucket) == []
                failures = [
                    e.dagster_event.step_failure_data.error
                    for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
                    if e.dagster_event is not None
                ]
                assert failures, _events(instance, run_id)
                for failure in failures:
                    assert failure is not None and PARTITION in failure.message, failure
                    assert "exports/as_" in failure.message, failure

                held.release()
                retry = services.graphql(LAUNCH_RUN, {"params": _launch_params()})["launchRun"]
                assert retry["__typename"] == "LaunchRunSuccess", retry

                def retried() -> dg.DagsterRunStatus | None:
                    run = instance.get_run_by_id(retry["run"]["runId"])
                    return run.status if run is not None and run.is_finished else None

                status = wait_for("the retry to finish", 240, retried)
                assert status is dg.DagsterRunStatus.SUCCESS
        logger.info("queries gone %.2fs, run ended %.2fs after terminate", queries_gone, run_ended)

        # The same exports made directly by the engine, on the unchanged source.
        spec = parse_spec(spec_text)
        direct = S3ObjectStore(S3Config(bucket=bucket, prefix="direct", endpoint_url=s3_endpoint))
        for name in DATASETS:
            result = export_one(
                SourceConfig(source_dsn),
                direct,
                spec.datasets[name],
                CUSTOMER,
                MONTH,
                EngineTuning(),
            )
            ours = s3_client.get_object(Bucket=bucket, Key=result.stored.key)["Body"].read()
            key = result.stored.key.replace("direct/", "exports/", 1)
            theirs = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(theirs).hexdigest() == result.stored.sha256, name
            assert len(ours) == result.stored.size_bytes
