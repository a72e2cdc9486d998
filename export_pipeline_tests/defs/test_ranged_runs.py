"""Ranged runs of `exports_job` (what a UI backfill, the schedule and the history requests
launch): every partition of the range is its own delivery, with its own materialization and
metadata, its own check results and its own manifest.

Real PostgreSQL (the demo database), S3 through the SigV4-checking proxy, in-process runs. The
runs of this module share one instance and bucket (each test reads one run's outcome).
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest

from export_pipeline.defs.checks import FILE_PRESENT, NOT_EMPTY, ROW_COUNT_CHECK, SCHEMA
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.io_managers.metadata import export_asset_key, latest_records
from export_pipeline.resources.storage import S3ExportStorageResource
from export_pipeline.spec import ExportSpec
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    fresh_instance,
    local_storage,
    materialize,
    s3_storage,
)
from export_pipeline_tests.helpers import FILE_METADATA_KEYS, sqlalchemy_url
from export_pipeline_tests.manifest_helpers import check_delivery

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("events", "orders", "invoices")
EXTENSIONS = {"events": "parquet", "orders": "jsonl", "invoices": "csv.gz"}
LINK_KEYS = {"download_url", "download_url_expires_at"}
MANIFEST_KEYS = {
    "uri",
    "sha256",
    "size_bytes",
    "success_uri",
    "datasets",
    "total_rows",
    "total_bytes",
}
ALL_CHECKS = {FILE_PRESENT, ROW_COUNT_CHECK, NOT_EMPTY, SCHEMA}


def _keys(customers: str, months: list[str]) -> list[str]:
    return [f"{c}|{m}" for c, m in itertools.product(customers, months)]


MARCH = _keys("12345", ["2025-03-01"])  # 5 customers x 1 month
MAY_JUNE = _keys("12", ["2025-05-01", "2025-06-01"])  # 2 customers x 2 months


class Shared:
    """The instance and S3 storage (one bucket) the runs of this module share."""

    def __init__(self, instance: dg.DagsterInstance, storage: S3ExportStorageResource) -> None:
        self.instance = instance
        self.storage = storage
        self.bucket = storage.bucket
        self.client = boto3.client("s3", endpoint_url=storage.s3.endpoint_url)


@pytest.fixture(scope="module")
def shared(s3_endpoint: str) -> Iterator[Shared]:
    bucket = f"ranged-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    with fresh_instance() as instance:
        add_customers(instance, ["1", "2", "3", "4", "5"])
        yield Shared(instance, s3_storage(s3_endpoint, bucket))


def _run(shared: Shared, spec: ExportSpec, dsn: str, keys: list[str]) -> dg.ExecuteInProcessResult:
    defs = export_definitions(spec, export_resources(dsn, shared.storage))
    result = materialize(shared.instance, defs, (keys[0], keys[-1]))
    assert result.success
    return result


@pytest.fixture(scope="module")
def march(shared: Shared, demo_spec: ExportSpec, demo_dsn: str) -> dg.ExecuteInProcessResult:
    return _run(shared, demo_spec, demo_dsn, MARCH)


@pytest.fixture(scope="module")
def may_june(shared: Shared, demo_spec: ExportSpec, demo_dsn: str) -> dg.ExecuteInProcessResult:
    return _run(shared, demo_spec, demo_dsn, MAY_JUNE)


def _materialized(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, run_id: str
) -> Counter[str]:
    """How many materializations each partition of `asset_key` has, all made by `run_id`."""
    records = instance.fetch_materializations(asset_key, limit=1000).records
    mine = [r for r in records if r.run_id == run_id]
    return Counter(r.partition_key or "" for r in mine)


@pytest.mark.parametrize("run", ["march", "may_june"])
def test_each_partition_has_exactly_one_materialization(
    shared: Shared, run: str, request: pytest.FixtureRequest
) -> None:
    result: dg.ExecuteInProcessResult = request.getfixturevalue(run)
    keys = MARCH if run == "march" else MAY_JUNE
    assert result.dagster_run.tags["dagster/asset_partition_range_start"] == keys[0]
    for asset_key in [*(export_asset_key(d) for d in DATASETS), MANIFEST_ASSET_KEY]:
        counts = _materialized(shared.instance, asset_key, result.run_id)
        assert counts == Counter(keys), asset_key  # no partition twice, none outside the range
    # Dagster's own view of the asset: exactly these partitions materialized so far
    assert shared.instance.get_materialized_partitions(export_asset_key("orders")) >= set(keys)


@pytest.mark.parametrize("run", ["march", "may_june"])
def test_each_partition_records_its_own_file(
    shared: Shared, run: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(run)
    keys = MARCH if run == "march" else MAY_JUNE
    for dataset in DATASETS:
        records = latest_records(shared.instance, export_asset_key(dataset), keys)
        assert set(records) == set(keys)
        digests = set()
        for key, record in records.items():
            md = record.metadata
            customer, month = key.split("|")
            csv = {"csv_formula_guard"} if dataset == "invoices" else set()
            assert set(md) == FILE_METADATA_KEYS | LINK_KEYS | csv, (dataset, key)
            object_key = f"exports/{customer}/{month[:7]}/{dataset}.{EXTENSIONS[dataset]}"
            assert md["uri"] == f"s3://{shared.bucket}/{object_key}"
            data = shared.client.get_object(Bucket=shared.bucket, Key=object_key)["Body"].read()
            assert md["sha256"] == hashlib.sha256(data).hexdigest()
            assert md["size_bytes"] == len(data) and md["dagster/row_count"] > 0
            assert (
                md["format"] == {"events": "parquet", "orders": "jsonl", "invoices": "csv"}[dataset]
            )
            with urllib.request.urlopen(md["download_url"]) as response:  # its own link
                assert response.read() == data
            digests.add(md["sha256"])
        assert len(digests) == len(keys)  # every partition its own file, not one shared


@pytest.mark.parametrize("run", ["march", "may_june"])
def test_checks_are_evaluated_per_partition(run: str, request: pytest.FixtureRequest) -> None:
    result: dg.ExecuteInProcessResult = request.getfixturevalue(run)
    keys = MARCH if run == "march" else MAY_JUNE
    evaluations = result.get_asset_check_evaluations()
    found = Counter((e.asset_key.path[-1], e.partition, e.check_name) for e in evaluations)
    expected = Counter(
        (dataset, key, check)
        for dataset in DATASETS
        for key in keys
        for check in ALL_CHECKS
        if check != ROW_COUNT_CHECK or dataset == "events"  # only Parquet carries a count
    )
    assert found == expected
    failed = [(e.asset_key, e.partition, e.check_name, e.description) for e in evaluations]
    assert not [f for f, e in zip(failed, evaluations, strict=True) if not e.passed]
    if run == "may_june":
        # June compares with May, exported in the same run: read from that run's records
        june = [e for e in evaluations if e.partition == "1|2025-06-01" and e.check_name == SCHEMA]
        assert {e.description for e in june} >= {"same 9 columns as 2025-05"}


@pytest.mark.parametrize("run", ["march", "may_june"])
def test_a_manifest_per_customer_month(
    shared: Shared, run: str, request: pytest.FixtureRequest
) -> None:
    result: dg.ExecuteInProcessResult = request.getfixturevalue(run)
    keys = MARCH if run == "march" else MAY_JUNE
    manifests = latest_records(shared.instance, MANIFEST_ASSET_KEY, keys)
    assert set(manifests) == set(keys)
    store = shared.storage.store()
    for key, record in manifests.items():
        assert record.run_id == result.run_id
        customer, month = key.split("|")
        folder = f"exports/{customer}/{month[:7]}"
        manifest = check_delivery(store, folder)  # every sha256 matches the stored bytes
        assert set(record.metadata) == MANIFEST_KEYS
        assert record.metadata["uri"] == f"s3://{shared.bucket}/{folder}/manifest.json"
        assert record.metadata["datasets"] == 3
        for dataset in DATASETS:
            file = latest_records(shared.instance, export_asset_key(dataset), [key])[key]
            assert manifest["datasets"][dataset]["sha256"] == file.metadata["sha256"]


def test_a_ranged_run_on_a_postgres_instance_records_every_event(
    demo_spec: ExportSpec,
    demo_dsn: str,
    scratch_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production instance (deploy/dagster.yaml on Postgres), whose connections a ranged
    step pools: every materialization and check result is still recorded, per partition."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(scratch_dsn))
    keys = ["1|2025-05-01", "2|2025-05-01"]
    resources = export_resources(demo_dsn, local_storage(tmp_path / "files"))
    defs = export_definitions(demo_spec, resources)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        add_customers(instance, ["1", "2"])
        result = materialize(instance, defs, (keys[0], keys[-1]))
        assert result.success
        for dataset in DATASETS:
            assert instance.get_materialized_partitions(export_asset_key(dataset)) == set(keys)
        assert instance.get_materialized_partitions(MANIFEST_ASSET_KEY) == set(keys)
        check = dg.AssetCheckKey(export_asset_key("orders"), FILE_PRESENT)
        history = instance.event_log_storage.get_asset_check_execution_history(check, limit=10)
        assert sorted(str(record.partition) for record in history) == keys
