"""A partition backfill launched the way the UI launches it: GraphQL against dagster-webserver.

dagster-webserver and dagster-daemon run as subprocesses on a fresh instance that uses the
production instance config (deploy/dagster.yaml: queued runs, one run per customer-month,
the source pool limit, run monitoring) on a scratch database of the test PostgreSQL. The
backfill covers 3 customers x 3 months x every dataset; each of the 27 asset-partitions must
end up materialized with its file on disk.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from export_pipeline_tests.dagster_processes import (
    REPO_ROOT,
    dagster_home,
    dagster_services,
    tail,
    wait_for,
)

CUSTOMERS = ["1", "2", "3"]
MONTHS = ["2025-01-01", "2025-02-01", "2025-03-01"]
DATASETS = ["events", "invoices", "orders"]
BACKFILL_DEADLINE_SECONDS = 420
pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionKeysNotFoundError { message }
    ... on PartitionSetNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}
"""

BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions error { message } }
    ... on PythonError { message }
  }
}
"""

# Backfill states from which nothing more happens (BulkActionStatus).
FINAL_STATES = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def test_partition_backfill_through_graphql(
    tmp_path: Path, demo_dsn: str, scratch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance_yaml = (REPO_ROOT / "deploy" / "dagster.yaml").read_text()
    home = dagster_home(tmp_path, instance_yaml, instance_dsn=scratch_dsn, source_dsn=demo_dsn)
    # The test process talks to the same instance (Postgres) to set up and check.
    monkeypatch.setenv("DAGSTER_PG_URL", home.env["DAGSTER_PG_URL"])
    with dg.DagsterInstance.from_config(str(home.home)) as instance:
        instance.add_dynamic_partitions("customers", CUSTOMERS)

    started = time.monotonic()
    with dagster_services(home) as services:
        ready = time.monotonic()
        partitions = [f"{c}|{m}" for c in CUSTOMERS for m in MONTHS]
        params = {
            "assetSelection": [{"path": ["exports", d]} for d in DATASETS],
            "partitionNames": partitions,
            "title": "test backfill",
        }
        launched = services.graphql(LAUNCH_BACKFILL, {"params": params})
        launched = launched["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def final_status() -> dict[str, Any] | None:
            result = services.graphql(BACKFILL_STATUS, {"id": backfill_id})
            backfill: dict[str, Any] = result["partitionBackfillOrError"]
            assert backfill["__typename"] == "PartitionBackfill", backfill
            return backfill if backfill["status"] in FINAL_STATES else None

        backfill = wait_for("the backfill", BACKFILL_DEADLINE_SECONDS, final_status)
        drained = time.monotonic()
    logger.info(
        "startup %.1fs, backfill drain %.1fs, total %.1fs",
        ready - started,
        drained - ready,
        drained - started,
    )
    assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, tail(services.daemon_log))
    assert backfill["numPartitions"] == len(partitions)

    with dg.DagsterInstance.from_config(str(home.home)) as instance:
        check_runs(instance, backfill_id, partitions)
        check_materializations(instance, partitions)


def check_runs(instance: dg.DagsterInstance, backfill_id: str, partitions: list[str]) -> None:
    """One successful run per customer-month, tagged as the tag concurrency limit expects."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert sorted(run.tags["dagster/partition"] for run in runs) == sorted(partitions)
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}


def check_materializations(instance: dg.DagsterInstance, partitions: list[str]) -> None:
    for dataset in DATASETS:
        key = dg.AssetKey(["exports", dataset])
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=100
        ).records
        by_partition = {r.partition_key: r.asset_materialization for r in records}
        assert sorted(p for p in by_partition if p) == sorted(partitions), dataset
        for partition, materialization in by_partition.items():
            assert materialization is not None
            md = materialization.metadata
            assert {"uri", "sha256", "dagster/row_count"} <= md.keys(), (dataset, partition)
            path = Path(str(md["uri"].value))
            assert path.is_file(), (dataset, partition, path)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == md["sha256"].value
            assert isinstance(md["dagster/row_count"].value, int)
