from __future__ import annotations

import importlib
from pathlib import Path

import dagster as dg
import pytest

from export_pipeline.defs.assets import EXPORT_BACKFILL_POLICY, MAX_PARTITIONS_PER_RUN
from export_pipeline.io_managers.exports import ExportIOManager
from export_pipeline.resources.storage import (
    LocalExportStorageResource,
    S3ExportStorageResource,
)
from export_pipeline.settings import build_resources
from export_pipeline.spec import SpecError
from export_pipeline.storage.keys import StorageConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
# The resource keys of the code location: a contract with deployments and other code.
RESOURCE_KEYS = {
    "source",
    "export_storage",
    "exports_io_manager",
    "delivery_webhook",
    "state",
    "alerts",
}
EXPORT_KEYS = {dg.AssetKey(["exports", d]) for d in ("events", "orders", "invoices")}
MANIFEST_KEY = dg.AssetKey(["exports_manifest"])


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> dg.Definitions:
    monkeypatch.setenv("EXPORT_SPEC", str(REPO_ROOT / "exports.yaml"))
    monkeypatch.delenv("EXPORT_S3_BUCKET", raising=False)
    monkeypatch.setenv("EXPORT_STORAGE_DIR", "/tmp/export-storage")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module("export_pipeline.definitions")
    return module.defs()


def test_definitions_load_one_partitioned_asset_per_dataset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defs = _load(monkeypatch)
    dg.Definitions.validate_loadable(defs)  # what `dagster dev` and the code server check
    keys = {a.key for a in defs.assets or []}  # type: ignore[union-attr]
    assert keys == {*EXPORT_KEYS, MANIFEST_KEY}
    repo = defs.get_repository_def()
    events = repo.assets_defs_by_key[dg.AssetKey(["exports", "events"])]
    pdef = events.partitions_def
    assert isinstance(pdef, dg.MultiPartitionsDefinition)
    dims = {d.name: d.partitions_def for d in pdef.partitions_defs}
    assert isinstance(dims["customer"], dg.DynamicPartitionsDefinition)
    assert dims["customer"].name == "customers"
    assert isinstance(dims["month"], dg.MonthlyPartitionsDefinition)
    assert dims["month"].start.strftime("%Y-%m") == "2025-01"
    # partition keys look like `customer|YYYY-MM-DD`
    assert str(dg.MultiPartitionKey({"customer": "42", "month": "2025-03-01"})) == "42|2025-03-01"
    for name in ("customers_sensor", "export_requests_sensor", "export_failure_sensor"):
        assert repo.get_sensor_def(name) is not None
    assert repo.get_schedule_def("monthly_exports_schedule").job_name == "exports_job"
    assert set(defs.resources or {}) == RESOURCE_KEYS
    storage = defs.resources["export_storage"]  # type: ignore[index]
    assert isinstance(storage, LocalExportStorageResource)
    manager = defs.resources["exports_io_manager"]  # type: ignore[index]
    assert isinstance(manager, ExportIOManager) and manager.storage is storage


def test_every_run_executes_in_process_and_every_export_asset_is_ranged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A UI backfill of N customers x M months is a few ranged runs (the backfill policy on
    every asset of the exports group), each one process (no process per step)."""
    defs = _load(monkeypatch)
    assert defs.executor is dg.in_process_executor
    repo = defs.get_repository_def()
    for job_name in ("exports_job", "export_checks_job", "__ASSET_JOB"):
        assert repo.get_job(job_name).executor_def is dg.in_process_executor, job_name
    assert EXPORT_BACKFILL_POLICY == dg.BackfillPolicy.multi_run(MAX_PARTITIONS_PER_RUN)
    for key in (*EXPORT_KEYS, MANIFEST_KEY):
        asset = repo.assets_defs_by_key[key]
        assert asset.backfill_policy == EXPORT_BACKFILL_POLICY, key
        assert asset.partitions_def == repo.assets_defs_by_key[MANIFEST_KEY].partitions_def
    job = repo.get_job("exports_job")
    assert set(job.asset_layer.asset_graph.get_all_asset_keys()) >= {*EXPORT_KEYS, MANIFEST_KEY}


def _causes(exc: BaseException | None) -> list[BaseException]:
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    return chain


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no export storage configured: set EXPORT_S3_BUCKET (S3) or EXPORT_STORAGE_DIR"),
        (
            {"EXPORT_S3_BUCKET": "b", "EXPORT_STORAGE_DIR": "/tmp/x"},
            "both EXPORT_S3_BUCKET and EXPORT_STORAGE_DIR are set",
        ),
    ],
)
def test_code_location_without_one_storage_fails_at_load(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("EXPORT_SPEC", str(REPO_ROOT / "exports.yaml"))
    for name in ("EXPORT_S3_BUCKET", "EXPORT_STORAGE_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module("export_pipeline.definitions")
    with pytest.raises(Exception) as info:
        module.defs()
    assert any(isinstance(e, StorageConfigError) and message in str(e) for e in _causes(info.value))


def test_importing_reads_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EXPORT_SPEC", str(tmp_path / "missing.yaml"))
    module = importlib.reload(importlib.import_module("export_pipeline.definitions"))
    with pytest.raises(Exception) as info:
        module.defs()
    # Dagster wraps the loader's error; ours is at the bottom, naming the file.
    assert any(isinstance(e, SpecError) and "missing.yaml" in str(e) for e in _causes(info.value))


def test_settings_use_env_vars_not_values() -> None:
    env = {
        "EXPORT_SOURCE_DSN": "postgresql://u:topsecret@db/x",
        "EXPORT_S3_BUCKET": "bkt",
        "EXPORT_LINK_TTL_SECONDS": "3600",
    }
    resources = build_resources(env)
    assert set(resources) == RESOURCE_KEYS
    source, storage = resources["source"], resources["export_storage"]
    assert "topsecret" not in repr(source)
    assert source.dsn == dg.EnvVar("EXPORT_SOURCE_DSN")
    assert isinstance(storage, S3ExportStorageResource)
    assert resources["exports_io_manager"].storage is storage  # one storage, shared
    assert storage.bucket == dg.EnvVar("EXPORT_S3_BUCKET")
    assert storage.link_ttl_seconds == dg.EnvVar.int("EXPORT_LINK_TTL_SECONDS")
    assert storage.s3.endpoint_url is None  # unset variables fall back to defaults
    assert storage.prefix == "exports"


def test_local_storage_comes_from_its_variable() -> None:
    storage = build_resources({"EXPORT_STORAGE_DIR": "/srv/exports"})["export_storage"]
    assert isinstance(storage, LocalExportStorageResource)
    assert storage.base_dir == dg.EnvVar("EXPORT_STORAGE_DIR")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-2"}, "AWS_REGION"),
        ({"AWS_DEFAULT_REGION": "us-east-2"}, "AWS_DEFAULT_REGION"),
        ({}, None),
    ],
)
def test_region_comes_from_the_standard_variables(env: dict, expected: str | None) -> None:
    storage = build_resources({**env, "EXPORT_S3_BUCKET": "b"})["export_storage"]
    assert storage.s3.region_name == (dg.EnvVar(expected) if expected else None)


def test_source_resource_repr_hides_the_password() -> None:
    from export_pipeline.resources.source import PostgresSourceResource

    resource = PostgresSourceResource(dsn="postgresql://u:hunter2@db/app")
    assert "hunter2" not in repr(resource) + str(resource)
    assert resource.source_config().dsn == "postgresql://u:hunter2@db/app"


def test_every_export_variable_reaches_its_resource_as_an_env_var(tmp_path: Path) -> None:
    env = {
        "EXPORT_SOURCE_DSN": "postgresql://u:pw@db/app",
        "EXPORT_S3_BUCKET": "bkt",
        "EXPORT_S3_PREFIX": "deliveries",
        "EXPORT_S3_ENDPOINT_URL": "http://minio:9000",
        "EXPORT_LINK_TTL_SECONDS": "600",
        "EXPORT_S3_MAX_BUFFER_BYTES": "104857600",
        "EXPORT_RECORD_DOWNLOAD_LINKS": "false",
        "EXPORT_STATE_DSN": "postgresql://u:pw@db/state",
        "EXPORT_ALERT_WEBHOOK_URL": "https://hooks.example/alert",
        "EXPORT_ALERT_WEBHOOK_SECRET": "a",
        "EXPORT_DELIVERY_WEBHOOK_URL": "https://hooks.example/done",
        "EXPORT_DELIVERY_WEBHOOK_SECRET": "d",
    }
    resources = build_resources(env)
    storage = resources["export_storage"]
    found = {
        "EXPORT_SOURCE_DSN": resources["source"].dsn,
        "EXPORT_S3_BUCKET": storage.bucket,
        "EXPORT_S3_PREFIX": storage.prefix,
        "EXPORT_S3_ENDPOINT_URL": storage.s3.endpoint_url,
        "EXPORT_LINK_TTL_SECONDS": storage.link_ttl_seconds,
        "EXPORT_S3_MAX_BUFFER_BYTES": storage.max_buffer_bytes,
        "EXPORT_STATE_DSN": resources["state"].dsn,
        "EXPORT_ALERT_WEBHOOK_URL": resources["alerts"].url,
        "EXPORT_ALERT_WEBHOOK_SECRET": resources["alerts"].secret,
        "EXPORT_DELIVERY_WEBHOOK_URL": resources["delivery_webhook"].url,
        "EXPORT_DELIVERY_WEBHOOK_SECRET": resources["delivery_webhook"].secret,
    }
    ints = {"EXPORT_LINK_TTL_SECONDS", "EXPORT_S3_MAX_BUFFER_BYTES"}
    assert found == {
        name: dg.EnvVar.int(name) if name in ints else dg.EnvVar(name) for name in found
    }
    assert storage.record_download_links is False  # a switch, read when the code loads
    local = build_resources({"EXPORT_STORAGE_DIR": str(tmp_path)})["export_storage"]
    assert local.base_dir == dg.EnvVar("EXPORT_STORAGE_DIR")
