"""The export checks in Dagster: after a materialization in the same run, alone for a
partition, and against files changed behind the project's back."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import psycopg
import pytest

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.checks import (
    FILE_PRESENT,
    NOT_EMPTY,
    ROW_COUNT,
    SCHEMA,
    build_export_checks,
    export_checks_job,
)
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.io_managers.exports import (
    EXPORTS_IO_MANAGER_KEY,
    LocalExportIOManager,
    S3ExportIOManager,
)
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import Compression, DatasetSpec, ExportSpec, Format
from export_pipeline.storage.s3 import MIN_PART_SIZE

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "4|2025-05-01"
ALL_CHECKS = {FILE_PRESENT, ROW_COUNT, NOT_EMPTY, SCHEMA}


class Exports:
    """One dataset's asset and checks on a test instance, with real source and storage."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        spec: ExportSpec,
        dataset: DatasetSpec,
        dsn: str,
        storage: dg.ConfigurableIOManager,
    ) -> None:
        pdef = build_export_partitions_def(spec.months_start)
        self.instance = instance
        self.dataset = dataset.name
        self.defs = dg.Definitions(
            assets=[build_export_asset(dataset, pdef)],
            asset_checks=[build_export_checks(dataset, pdef)],
            jobs=[export_checks_job],
            resources={"source": PostgresSourceResource(dsn=dsn), EXPORTS_IO_MANAGER_KEY: storage},
        )

    def materialize(self, key: str) -> tuple[dict[str, Any], dict[str, dg.AssetCheckEvaluation]]:
        """Materialize (the asset and, as the UI does, its checks): metadata and check results."""
        job = self.defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=self.instance, partition_key=key)
        [mat] = result.asset_materializations_for_node(f"exports__{self.dataset}")
        return {k: v.value for k, v in mat.metadata.items()}, _by_name(result)

    def check(self, key: str) -> dict[str, dg.AssetCheckEvaluation]:
        """The checks alone for one partition, the way a check-only run is tagged."""
        result = self.defs.resolve_job_def(export_checks_job.name).execute_in_process(
            instance=self.instance, tags={"dagster/partition": key}
        )
        assert result.success  # failed checks never fail the run
        assert result.get_asset_materialization_events() == []
        return _by_name(result)


def _by_name(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["4", "7"])
        yield instance


def _assert_all_pass(checks: dict[str, dg.AssetCheckEvaluation], key: str) -> None:
    assert set(checks) == ALL_CHECKS
    for name, evaluation in checks.items():
        assert evaluation.passed, f"{name}: {evaluation.description}"
        assert evaluation.partition == key


def test_checks_pass_after_an_s3_export_and_fail_when_it_is_truncated(
    instance: dg.DagsterInstance,
    demo_spec: ExportSpec,
    demo_dsn: str,
    s3_endpoint: str,
    bucket: str,
) -> None:
    storage = S3ExportIOManager(
        s3=ExportS3Resource(endpoint_url=s3_endpoint), bucket=bucket, part_size_bytes=MIN_PART_SIZE
    )
    exports = Exports(instance, demo_spec, demo_spec.datasets["events"], demo_dsn, storage)
    recorded, checks = exports.materialize(KEY)
    _assert_all_pass(checks, KEY)
    uri = recorded["uri"]
    assert checks[FILE_PRESENT].metadata["size_bytes"].value == recorded["size_bytes"]
    footer = checks[ROW_COUNT].metadata
    assert footer["footer_rows"].value == recorded["dagster/row_count"] > 0
    # The result is recorded per partition: this one has a passing result, another none.
    check_key = dg.AssetCheckKey(dg.AssetKey(["exports", "events"]), FILE_PRESENT)
    infos = instance.event_log_storage.get_asset_check_partition_info(
        [check_key], partition_keys=[KEY, "7|2025-05-01"]
    )
    assert {(i.partition_key, i.latest_execution_status.value) for i in infos} == {
        (KEY, "SUCCEEDED")
    }

    key = uri.removeprefix(f"s3://{bucket}/")
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=bucket, Key=key, Body=b"PAR1 truncated"
    )
    later = exports.check(KEY)
    assert set(later) == ALL_CHECKS and later[FILE_PRESENT].partition == KEY
    assert not later[FILE_PRESENT].passed
    assert later[FILE_PRESENT].severity == dg.AssetCheckSeverity.ERROR
    assert later[FILE_PRESENT].description == (
        f"{uri}: recorded {recorded['size_bytes']} bytes, found 14 bytes; "
        "re-materialize the partition"
    )
    assert not later[ROW_COUNT].passed and uri in (later[ROW_COUNT].description or "")
    assert later[NOT_EMPTY].passed and later[SCHEMA].passed  # from the records, not the file
    [info] = instance.event_log_storage.get_asset_check_partition_info(
        [check_key], partition_keys=[KEY]
    )
    assert info.latest_execution_status.value == "FAILED"


def test_checks_pass_after_a_local_export_and_fail_when_it_is_truncated_or_deleted(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    storage = LocalExportIOManager(base_dir=str(tmp_path))
    exports = Exports(instance, demo_spec, demo_spec.datasets["invoices"], demo_dsn, storage)
    recorded, checks = exports.materialize(KEY)
    _assert_all_pass(checks, KEY)
    rows = checks[ROW_COUNT]
    assert rows.metadata["checked"].value is False  # csv.gz: not downloaded to count
    assert "not verified for csv" in (rows.description or "")

    path = Path(recorded["uri"])
    assert path == tmp_path / "exports/4/2025-05/invoices.csv.gz"
    with path.open("r+b") as f:
        f.truncate(recorded["size_bytes"] - 1)
    truncated = exports.check(KEY)[FILE_PRESENT]
    assert not truncated.passed
    assert truncated.description == (
        f"{path}: recorded {recorded['size_bytes']} bytes, found {recorded['size_bytes'] - 1} "
        "bytes; re-materialize the partition"
    )
    path.unlink()
    deleted = exports.check(KEY)
    assert not deleted[FILE_PRESENT].passed
    assert f"{path}: recorded" in (deleted[FILE_PRESENT].description or "")
    assert "found missing" in (deleted[FILE_PRESENT].description or "")
    assert not deleted[ROW_COUNT].passed


def test_checks_of_an_unmaterialized_partition_fail_clearly(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, demo_dsn: str, tmp_path: Path
) -> None:
    storage = LocalExportIOManager(base_dir=str(tmp_path))
    exports = Exports(instance, demo_spec, demo_spec.datasets["orders"], demo_dsn, storage)
    checks = exports.check("7|2025-02-01")
    assert set(checks) == ALL_CHECKS
    for evaluation in checks.values():
        assert not evaluation.passed
        assert evaluation.partition == "7|2025-02-01"
        assert evaluation.description == (
            "exports/orders 7|2025-02-01 has not been materialized: nothing to check"
        )


@pytest.fixture
def tiny_dsn(scratch_dsn: str) -> str:
    """A table with rows for customer 7 in January 2025 only."""
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id int, customer_id int, at date, amount int);"
            "INSERT INTO items VALUES (1, 7, '2025-01-05', 10), (2, 7, '2025-01-20', 20),"
            " (3, 8, '2025-02-03', 30)"
        )
    return scratch_dsn


TINY = DatasetSpec(
    name="items",
    customer_column="customer_id",
    format=Format.PARQUET,
    compression=Compression.ZSTD,
    sql="SELECT * FROM items WHERE at >= %(month_start)s AND at < %(month_end)s",
)


def test_an_empty_month_after_rows_warns(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, tiny_dsn: str, tmp_path: Path
) -> None:
    storage = LocalExportIOManager(base_dir=str(tmp_path))
    exports = Exports(instance, demo_spec, TINY, tiny_dsn, storage)
    _, january = exports.materialize("7|2025-01-01")
    _assert_all_pass(january, "7|2025-01-01")
    assert "2024-12 was not exported" in (january[NOT_EMPTY].description or "")
    recorded, february = exports.materialize("7|2025-02-01")
    assert recorded["dagster/row_count"] == 0
    empty = february[NOT_EMPTY]
    assert not empty.passed
    assert empty.severity == dg.AssetCheckSeverity.WARN
    assert empty.description == "no rows this month, 2 in 2025-01"
    assert empty.metadata["previous_rows"].value == 2
    assert february[FILE_PRESENT].passed and february[ROW_COUNT].passed
    assert february[SCHEMA].passed


def test_a_schema_change_from_the_previous_month_warns(
    instance: dg.DagsterInstance, demo_spec: ExportSpec, tiny_dsn: str, tmp_path: Path
) -> None:
    storage = LocalExportIOManager(base_dir=str(tmp_path))
    exports = Exports(instance, demo_spec, TINY, tiny_dsn, storage)
    exports.materialize("7|2025-01-01")
    with psycopg.connect(tiny_dsn, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE items ALTER COLUMN amount TYPE text, ADD COLUMN note text;"
            "INSERT INTO items VALUES (4, 7, '2025-02-10', '40', 'x')"
        )
    _, february = exports.materialize("7|2025-02-01")
    schema = february[SCHEMA]
    assert not schema.passed
    assert schema.severity == dg.AssetCheckSeverity.WARN
    assert schema.metadata["added"].value == ["note text"]
    assert schema.metadata["removed"].value == []
    [changed] = schema.metadata["changed"].value
    assert changed.startswith("amount: int") and changed.endswith("-> text")
    assert "columns differ from 2025-01: added note text; changed amount" in (
        schema.description or ""
    )
    assert february[NOT_EMPTY].passed


def test_code_location_runs_the_checks_with_the_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    """exports_job (sensors' runs) and the UI's Materialize include the checks."""
    monkeypatch.setenv("EXPORT_SPEC", str(REPO_ROOT / "exports.yaml"))
    monkeypatch.delenv("EXPORT_S3_BUCKET", raising=False)
    monkeypatch.setenv("EXPORT_STORAGE_DIR", "/tmp/export-storage")
    defs = importlib.import_module("export_pipeline.definitions").defs()
    expected = {
        dg.AssetCheckKey(dg.AssetKey(["exports", d]), name)
        for d in ("events", "orders", "invoices")
        for name in ALL_CHECKS
    }
    assert set(defs.resolve_asset_graph().asset_check_keys) == expected
    for job_name in ("exports_job", export_checks_job.name):
        job = defs.resolve_job_def(job_name)
        assert set(job.asset_layer.asset_graph.asset_check_keys) >= expected, job_name
    # A run request naming datasets only (the requests sensor) gets their checks too.
    events = dg.AssetKey(["exports", "events"])
    subset = defs.resolve_job_def("exports_job").get_subset(asset_selection={events})
    assert set(subset.asset_layer.asset_graph.asset_check_keys) == {
        k for k in expected if k.asset_key == events
    }
    nodes = {n.name for n in subset.graph.node_defs}
    assert nodes == {"exports__events", "exports__events__checks"}
