"""One test per private framework API the project relies on (export_pipeline/dagster_private.py,
and botocore's `_expiry_time` in storage/s3.py): each fails loudly, naming what broke, when a
Dagster or botocore upgrade changes the behaviour the project depends on.

The only test module that may look inside `dagster._core`. (No `from __future__ import
annotations`: Dagster reads the `context` annotations of the toy assets at definition time.)
"""

import json
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.credentials
import dagster as dg
import psycopg
import pytest
from dagster._core.events import EngineEventData

from export_pipeline.dagster_private import (
    RunInterrupted,
    current_asset_context,
    pool_instance_connections,
    ranged_run_tags,
    report_progress_event,
    run_partition_range,
)
from export_pipeline.storage.s3 import S3Config, S3ObjectStore, credentials_expiry
from export_pipeline_tests.harness import fresh_instance
from export_pipeline_tests.helpers import sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[1]

# customer (dynamic) x month, as the export assets are partitioned
CUSTOMERS = dg.DynamicPartitionsDefinition(name="customers")
PARTITIONS = dg.MultiPartitionsDefinition(
    {
        "customer": CUSTOMERS,
        "month": dg.MonthlyPartitionsDefinition(start_date="2025-01-01", end_offset=0),
    }
)


# -- report_progress_event ------------------------------------------------------------------
def test_report_progress_event_writes_an_engine_event_with_the_metadata_at_once() -> None:
    """From another thread of a running step: an ENGINE_EVENT of the run and step, with the
    message and metadata, readable from the event log before the step ends."""
    seen: dict[str, Any] = {}

    @dg.op
    def probe(context: dg.OpExecutionContext) -> None:
        def report() -> None:
            report_progress_event(
                context.instance,
                context.run,
                "probe",
                "orders 3|2025-03-01: 120 rows",
                {"progress_rows": dg.MetadataValue.int(120), "progress_dataset": "orders"},
            )

        thread = threading.Thread(target=report)
        thread.start()
        thread.join()
        seen["during_step"] = context.instance.all_logs(
            context.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
        )

    @dg.job
    def progress_job() -> None:
        probe()

    with fresh_instance() as instance:
        result = progress_job.execute_in_process(instance=instance)
        assert result.success
    [entry] = [
        e
        for e in seen["during_step"]
        if e.dagster_event is not None
        and e.dagster_event.message == "orders 3|2025-03-01: 120 rows"
    ]
    event = entry.dagster_event
    assert event is not None and event.event_type == dg.DagsterEventType.ENGINE_EVENT
    assert entry.run_id == result.run_id and entry.step_key == "probe"
    assert isinstance(event.event_specific_data, EngineEventData)
    metadata = event.event_specific_data.metadata
    assert metadata["progress_rows"] == dg.MetadataValue.int(120)
    assert metadata["progress_dataset"] == dg.MetadataValue.text("orders")


# -- pool_instance_connections --------------------------------------------------------------
@pytest.fixture
def postgres_instance(
    tmp_path: Path, scratch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dg.DagsterInstance, str]]:
    """The production instance config (deploy/dagster.yaml) on a scratch database."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(scratch_dsn))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance, scratch_dsn


def _storage_connections(dsn: str) -> int:
    """Connections to the instance's database other than this one."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else -1


def _use(instance: dg.DagsterInstance) -> None:
    """Statements on the run, event log and schedule storages."""
    instance.get_runs(limit=1)
    instance.get_dynamic_partitions("customers")
    instance.fetch_materializations(dg.AssetKey(["exports", "orders"]), limit=1)
    instance.all_instigator_state()


def test_pool_instance_connections_keeps_postgres_connections_open_and_bounded(
    postgres_instance: tuple[dg.DagsterInstance, str],
) -> None:
    instance, dsn = postgres_instance
    _use(instance)
    assert _storage_connections(dsn) == 0  # Dagster's default: a connection per statement
    pool_instance_connections(instance)
    for _ in range(20):
        _use(instance)
    pooled = _storage_connections(dsn)
    # kept open, at most 1 + 2 overflow for each of the three storages, however many uses
    assert 1 <= pooled <= 9, pooled
    instance.add_dynamic_partitions("customers", ["1"])  # still a working instance
    assert instance.get_dynamic_partitions("customers") == ["1"]
    engine_pool = type(instance.run_storage._engine.pool).__name__  # type: ignore[attr-defined]
    assert engine_pool == "QueuePool"


def test_pool_instance_connections_is_harmless_on_sqlite() -> None:
    with fresh_instance() as instance:
        pool_instance_connections(instance)
        instance.add_dynamic_partitions("customers", ["1"])
        assert instance.get_dynamic_partitions("customers") == ["1"]


# -- current_asset_context ------------------------------------------------------------------
class _ContextRecorder(dg.ConfigurableIOManager):
    """Records what `current_asset_context()` returns inside handle_output and load_input, and
    adds each output partition's own metadata through it (as the export IO manager does)."""

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        asset_context = current_asset_context()
        _SEEN.append(("handle_output", asset_context))
        assert asset_context is not None
        for key in context.asset_partition_keys:
            asset_context.add_asset_metadata(
                {"who": key}, asset_key=context.asset_key, partition_key=key
            )

    def load_input(self, context: dg.InputContext) -> object:
        _SEEN.append(("load_input", current_asset_context()))
        return None


_SEEN: list[tuple[str, dg.AssetExecutionContext | None]] = []
LETTERS = dg.StaticPartitionsDefinition(["a", "b", "c"])


@dg.asset(partitions_def=LETTERS, io_manager_key="recorder")
def upstream() -> int:
    return 1


@dg.asset(partitions_def=LETTERS, io_manager_key="recorder")
def downstream(upstream: object) -> int:
    return 2


def test_current_asset_context_is_set_inside_an_io_managers_handle_output_and_load_input() -> None:
    _SEEN.clear()
    assert current_asset_context() is None  # outside a run
    with fresh_instance() as instance:
        result = dg.materialize(
            [upstream, downstream],
            instance=instance,
            resources={"recorder": _ContextRecorder()},
            tags=ranged_run_tags("a", "c"),
        )
        assert result.success
        where = [(name, ctx.asset_key if ctx else None) for name, ctx in _SEEN]
        assert where == [
            ("handle_output", upstream.key),
            ("load_input", downstream.key),
            ("handle_output", downstream.key),
        ]
        assert all(ctx is not None and ctx.run.run_id == result.run_id for _, ctx in _SEEN)
        # add_asset_metadata(partition_key=) from handle_output reached each partition's own
        # materialization
        for asset_key in (upstream.key, downstream.key):
            records = instance.fetch_materializations(asset_key, limit=10).records
            found = {
                r.partition_key: r.asset_materialization.metadata["who"].value
                for r in records
                if r.asset_materialization is not None
            }
            assert found == {"a": "a", "b": "b", "c": "c"}, asset_key
    assert current_asset_context() is None  # and cleared after it


# -- ranged_run_tags, run_partition_range ---------------------------------------------------
def test_ranged_run_tags_ask_for_the_product_of_the_dimension_ranges() -> None:
    first, last = "2|2025-03-01", "3|2025-04-01"
    request = dg.RunRequest(tags=ranged_run_tags(first, last))
    assert request.partition_key_range == dg.PartitionKeyRange(first, last)  # the public reader
    seen: dict[str, list[str]] = {}

    @dg.asset(partitions_def=PARTITIONS)
    def ranged(context: dg.AssetExecutionContext) -> None:
        seen["keys"] = list(context.partition_keys)

    with fresh_instance() as instance:
        instance.add_dynamic_partitions("customers", ["1", "2", "3", "4"])
        result = dg.materialize([ranged], instance=instance, tags=request.tags)
        assert result.success
    assert sorted(seen["keys"]) == sorted(
        f"{c}|{m}" for c in ("2", "3") for m in ("2025-03-01", "2025-04-01")
    )
    assert run_partition_range(result.dagster_run) == (first, last)


def test_run_partition_range_is_none_for_a_single_partition_run() -> None:
    @dg.asset(partitions_def=PARTITIONS)
    def single() -> None:
        return None

    with fresh_instance() as instance:
        instance.add_dynamic_partitions("customers", ["1"])
        result = dg.materialize([single], instance=instance, partition_key="1|2025-03-01")
    assert run_partition_range(result.dagster_run) is None
    assert run_partition_range(dg.DagsterRun(job_name="any", tags={})) is None


# -- RunInterrupted -------------------------------------------------------------------------
def _interrupted_run(error: type[BaseException]) -> tuple[dg.ExecuteInProcessResult, list[int]]:
    """A job whose op, under a RetryPolicy, is interrupted on its first attempt (as a cancel
    lands in user code) and raises `error`."""
    attempts: list[int] = []

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=2))
    def exporting(context: dg.OpExecutionContext) -> None:
        attempts.append(context.retry_number)
        if context.retry_number > 0:
            return
        try:
            raise dg.DagsterExecutionInterruptedError()
        except dg.DagsterExecutionInterruptedError as exc:
            if error is RunInterrupted:
                raise RunInterrupted("exports/x 1|2025-03-01: the run was cancelled") from exc
            raise

    @dg.job
    def cancelled_job() -> None:
        exporting()

    with fresh_instance() as instance:
        return cancelled_job.execute_in_process(instance=instance, raise_on_error=False), attempts


def test_an_interrupt_in_an_op_with_a_retry_policy_becomes_a_retry() -> None:
    """Why RunInterrupted exists: Dagster retries a step whose user code was interrupted."""
    result, attempts = _interrupted_run(dg.DagsterExecutionInterruptedError)
    assert attempts == [0, 1] and result.success
    assert [e.event_type_value for e in result.all_events].count("STEP_UP_FOR_RETRY") == 1


def test_run_interrupted_ends_the_step_without_a_retry() -> None:
    result, attempts = _interrupted_run(RunInterrupted)
    assert attempts == [0] and not result.success
    kinds = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None and error.cls_name == "RunInterrupted"
    assert "the run was cancelled" in error.message


# -- botocore: RefreshableCredentials._expiry_time (storage/s3.py credentials_expiry) ---------
def test_credentials_expiry_of_static_keys_is_none() -> None:
    session = boto3.session.Session(aws_access_key_id="AKIDSTATIC", aws_secret_access_key="x")
    assert credentials_expiry(session) is None


def test_credentials_expiry_of_temporary_credentials_and_the_links_they_sign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporary credentials (here from a `credential_process`, as SSO or a role would give
    them) carry an expiry, botocore's private `_expiry_time`; a link they sign dies with them."""
    expiry = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    process = tmp_path / "credentials.py"
    document = {
        "Version": 1,
        "AccessKeyId": "ASIATEMPORARY",
        "SecretAccessKey": "temporary-secret",
        "SessionToken": "temporary-token",
        "Expiration": expiry.isoformat().replace("+00:00", "Z"),
    }
    process.write_text(f"import json\nprint(json.dumps({json.dumps(document)}))\n")
    config = tmp_path / "config"
    config.write_text(
        f"[profile temporary]\ncredential_process = {sys.executable} {process}\n"
        "region = us-east-1\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    session = boto3.session.Session(profile_name="temporary")
    credentials = session.get_credentials()
    assert isinstance(credentials, botocore.credentials.RefreshableCredentials)
    assert credentials.get_frozen_credentials().access_key == "ASIATEMPORARY"
    assert credentials_expiry(session) == expiry

    store = S3ObjectStore(
        S3Config(bucket=f"b-{uuid.uuid4().hex[:8]}", endpoint_url="http://127.0.0.1:9"),
        session=session,
    )
    link = store.download_link("exports/1/2025-03/orders.jsonl")  # a 7-day TTL asked for
    assert link.expires_at == expiry and "ASIATEMPORARY" in link.url
