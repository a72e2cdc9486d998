"""One retry policy: the asset's RetryPolicy, applied in place to each partition of a ranged run
(transient failures wait `policy.calculate_delay(n)` and are tried again while the others go
on; nothing delivered is exported again), never to permanent failures.

S3 answers are broken through the SigV4-checking proxy, which also records when each upload
arrived. botocore's own retries are off (max_attempts=1), so each broken answer reaches the
export."""

from __future__ import annotations

import dataclasses
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest

from export_pipeline.defs.assets import EXPORT_BACKFILL_POLICY, EXPORT_RETRY_POLICY
from export_pipeline.io_managers.exports import FAILED_PARTITIONS
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.storage import S3ExportStorageResource
from export_pipeline.spec import ExportSpec, Relation
from export_pipeline_tests.conftest import AWS_TEST_KEY_ID, AWS_TEST_SECRET
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
)
from export_pipeline_tests.sigv4_proxy import Faults, sigv4_proxy

RANGE = ("1|2025-02-01", "3|2025-02-01")
KEYS = ["1|2025-02-01", "2|2025-02-01", "3|2025-02-01"]
ORDERS = export_asset_key("orders")
POLICY = dg.RetryPolicy(max_retries=2, delay=0.3)  # the production shape, in tenths of seconds


class UploadLog(Faults):
    """Injects what a test asks for, and records when each PUT of an object arrived."""

    def __init__(self) -> None:
        super().__init__()
        self._puts_lock = threading.Lock()
        self.puts: list[tuple[str, float]] = []

    def take(self, method: str, target: str) -> tuple[int, str] | None:
        if method == "PUT":
            with self._puts_lock:
                self.puts.append((urllib.parse.urlsplit(target).path, time.monotonic()))
        return super().take(method, target)

    def arrivals(self, path: str) -> list[float]:
        with self._puts_lock:
            return [at for p, at in self.puts if p == path]


@dataclass
class Broken:
    storage: S3ExportStorageResource
    faults: UploadLog

    def path(self, customer: str) -> str:
        return f"/{self.storage.bucket}/exports/{customer}/2025-02/orders.jsonl"


@pytest.fixture
def broken(moto_url: str) -> Iterator[Broken]:
    faults = UploadLog()
    with sigv4_proxy(moto_url, {AWS_TEST_KEY_ID: AWS_TEST_SECRET}, faults) as url:
        bucket = f"retries-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=bucket)
        s3 = ExportS3Resource(endpoint_url=url, region_name="us-east-1", max_attempts=1)
        try:
            yield Broken(S3ExportStorageResource(s3=s3, bucket=bucket), faults)
        finally:
            faults.release()


@dataclass
class Outcome:
    result: dg.ExecuteInProcessResult
    materializations: dict[str, int]  # per partition
    log: list[str]  # the run's log lines


def _run(spec: ExportSpec, dsn: str, broken: Broken) -> Outcome:
    """A ranged run of exports/orders for customers 1-3, February 2025."""
    defs = export_definitions(
        spec, export_resources(dsn, broken.storage), retry_policy=POLICY, manifest=False
    )
    with fresh_instance() as instance:
        add_customers(instance, ["1", "2", "3"])
        result = materialize(instance, defs, RANGE, selection=[ORDERS])
        records = instance.fetch_materializations(ORDERS, 100).records
        return Outcome(
            result,
            {key: sum(1 for r in records if r.partition_key == key) for key in KEYS},
            [e.user_message for e in instance.all_logs(result.run_id)],
        )


def _step_retries(result: dg.ExecuteInProcessResult) -> int:
    return sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")


def _failed_rows(result: dg.ExecuteInProcessResult) -> list[dict[str, Any]]:
    [failure] = result.get_step_failure_events()
    user = failure.step_failure_data.user_failure_data
    assert user is not None
    rows = user.metadata[FAILED_PARTITIONS].value
    assert isinstance(rows, list)
    return rows


def test_production_policies() -> None:
    assert EXPORT_RETRY_POLICY.max_retries == 3
    assert EXPORT_RETRY_POLICY.delay == 30
    assert EXPORT_RETRY_POLICY.backoff == dg.Backoff.EXPONENTIAL
    assert EXPORT_RETRY_POLICY.jitter == dg.Jitter.PLUS_MINUS
    assert EXPORT_BACKFILL_POLICY.max_partitions_per_run == 500


def test_a_transient_failure_is_retried_in_place_after_the_policy_delay(
    demo_spec: ExportSpec, demo_dsn: str, broken: Broken
) -> None:
    broken.faults.fail_next("PUT", broken.path("2"), 1, 503, "SlowDown")
    outcome = _run(demo_spec, demo_dsn, broken)
    assert outcome.result.success
    assert broken.faults.injected == 1
    assert _step_retries(outcome.result) == 0  # retried inside the step, not by Dagster
    # The broken partition was uploaded twice, the policy's delay apart; the others once.
    first, second = broken.faults.arrivals(broken.path("2"))
    assert second - first >= POLICY.calculate_delay(1) == 0.3
    assert [len(broken.faults.arrivals(broken.path(c))) for c in "13"] == [1, 1]
    assert outcome.materializations == dict.fromkeys(KEYS, 1)
    [warning] = [line for line in outcome.log if "SlowDown" in line]
    assert warning.startswith("orders 2|2025-02-01: ") and "try 2 of 3" in warning


def test_a_transient_failure_that_persists_fails_after_the_policy_retries(
    demo_spec: ExportSpec, demo_dsn: str, broken: Broken
) -> None:
    broken.faults.fail_next("PUT", broken.path("2"), POLICY.max_retries + 1, 503, "SlowDown")
    outcome = _run(demo_spec, demo_dsn, broken)
    assert not outcome.result.success and _step_retries(outcome.result) == 0
    [row] = _failed_rows(outcome.result)
    assert (row["partition"], row["transient"], row["attempts"]) == ("2|2025-02-01", True, 3)
    assert "SlowDown" in row["error"]
    assert len(broken.faults.arrivals(broken.path("2"))) == 3
    assert outcome.materializations == {"1|2025-02-01": 1, "2|2025-02-01": 0, "3|2025-02-01": 1}


def test_a_permanent_failure_is_not_retried(
    demo_spec: ExportSpec, demo_dsn: str, broken: Broken
) -> None:
    broken.faults.fail_next("PUT", broken.path("2"), 1, 403, "AccessDenied")
    outcome = _run(demo_spec, demo_dsn, broken)
    assert not outcome.result.success and _step_retries(outcome.result) == 0
    [row] = _failed_rows(outcome.result)
    assert (row["partition"], row["transient"], row["attempts"]) == ("2|2025-02-01", False, 1)
    assert "AccessDenied" in row["error"]
    assert len(broken.faults.arrivals(broken.path("2"))) == 1
    assert outcome.materializations == {"1|2025-02-01": 1, "2|2025-02-01": 0, "3|2025-02-01": 1}


def test_a_permanent_source_error_is_one_clear_message_with_its_cause(
    demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    missing = dataclasses.replace(
        demo_spec.datasets["orders"], table=Relation(("public", "no_such_table"))
    )
    spec = dataclasses.replace(demo_spec, datasets={"orders": missing})
    resources = export_resources(demo_dsn, local_storage(tmp_path))
    defs = export_definitions(spec, resources, retry_policy=POLICY, manifest=False)
    with fresh_instance() as instance:
        add_customers(instance, ["5"])
        result = materialize(instance, defs, "5|2025-02-01")
    assert not result.success and _step_retries(result) == 0
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None
    text = error.to_string()
    assert "exports/orders 5|2025-02-01" in text and "no_such_table" in text
    assert "permanent, not retried" in text
    assert "UndefinedTable" in text  # the psycopg cause is chained, not hidden
    assert not any(tmp_path.rglob("*.jsonl"))
