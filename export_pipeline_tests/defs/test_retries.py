"""The export assets' RetryPolicy: transient failures are retried, permanent ones are not."""

from __future__ import annotations

import dataclasses

import dagster as dg

from export_pipeline.defs.assets import EXPORT_RETRY_POLICY, build_export_asset
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, S3ExportIOManager
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import ExportSpec, Relation
from export_pipeline_tests.helpers import list_keys, pending_uploads
from export_pipeline_tests.sigv4_proxy import Faults

KEY = dg.MultiPartitionKey({"customer": "5", "month": "2025-02-01"})
FAST_RETRY = dg.RetryPolicy(max_retries=2, delay=0)  # the production delays, minus the wait


def _run(
    spec: ExportSpec, dataset: str, dsn: str, endpoint: str, bucket: str
) -> dg.ExecuteInProcessResult:
    asset = build_export_asset(
        spec.datasets[dataset], build_export_partitions_def(spec.months_start), FAST_RETRY
    )
    manager = S3ExportIOManager(
        s3=ExportS3Resource(endpoint_url=endpoint, max_attempts=2), bucket=bucket
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["5"])
        return dg.materialize(
            [asset],
            partition_key=KEY,
            instance=instance,
            resources={"source": PostgresSourceResource(dsn=dsn), EXPORTS_IO_MANAGER_KEY: manager},
            raise_on_error=False,
        )


def _retries(result: dg.ExecuteInProcessResult) -> int:
    return sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")


def test_production_policy_backs_off() -> None:
    assert EXPORT_RETRY_POLICY.max_retries == 3
    assert EXPORT_RETRY_POLICY.backoff == dg.Backoff.EXPONENTIAL
    assert EXPORT_RETRY_POLICY.jitter == dg.Jitter.PLUS_MINUS


def test_transient_s3_failure_is_retried_and_succeeds(
    demo_spec: ExportSpec,
    demo_dsn: str,
    s3_faults: tuple[str, Faults],
    bucket: str,
    s3_client: object,
) -> None:
    endpoint, faults = s3_faults
    # botocore tries twice here (max_attempts=2): 2 SlowDowns fail the first Dagster attempt,
    # and the retry's upload goes through.
    faults.fail_next("PUT", f"/{bucket}/exports/5/2025-02/orders.jsonl", 2, 503, "SlowDown")
    result = _run(demo_spec, "orders", demo_dsn, endpoint, bucket)
    assert result.success
    assert _retries(result) == 1 and faults.injected == 2
    assert list_keys(s3_client, bucket) == ["exports/5/2025-02/orders.jsonl"]


def test_permanent_failure_is_not_retried(
    demo_spec: ExportSpec, demo_dsn: str, s3_endpoint: str, bucket: str, s3_client: object
) -> None:
    missing = dataclasses.replace(
        demo_spec.datasets["orders"], table=Relation(("public", "no_such_table"))
    )
    spec = dataclasses.replace(demo_spec, datasets={"orders": missing})
    result = _run(spec, "orders", demo_dsn, s3_endpoint, bucket)
    assert not result.success and _retries(result) == 0
    [failure] = result.get_step_failure_events()
    error = failure.step_failure_data.error
    assert error is not None
    text = error.to_string()
    assert "exports/orders 5|2025-02-01" in text and "no_such_table" in text
    assert "permanent, not retried" in text
    assert "UndefinedTable" in text  # the psycopg cause is chained, not hidden
    assert list_keys(s3_client, bucket) == [] and pending_uploads(s3_client, bucket) == []
