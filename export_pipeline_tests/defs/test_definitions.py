from __future__ import annotations

import importlib
from pathlib import Path

import dagster as dg
import pytest

from export_pipeline.io_managers.exports import LocalExportIOManager, S3ExportIOManager
from export_pipeline.settings import build_resources
from export_pipeline.spec import SpecError
from export_pipeline.storage.keys import StorageConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


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
    keys = {a.key for a in defs.assets or []}  # type: ignore[union-attr]
    assert keys == {
        *(dg.AssetKey(["exports", d]) for d in ("events", "orders", "invoices")),
        dg.AssetKey(["exports_manifest"]),
    }
    repo = defs.get_repository_def()
    events = repo.assets_defs_by_key[dg.AssetKey(["exports", "events"])]
    pdef = events.partitions_def
    assert isinstance(pdef, dg.MultiPartitionsDefinition)
    dims = {d.name: d.partitions_def for d in pdef.partitions_defs}
    assert isinstance(dims["customer"], dg.DynamicPartitionsDefinition)
    assert dims["customer"].name == "customers"
    assert isinstance(dims["month"], dg.MonthlyPartitionsDefinition)
    assert dims["month"].start.strftime("%Y-%m") == "2025-01"
    assert repo.get_sensor_def("customers_sensor") is not None
    assert set(defs.resources or {}) >= {"source", "exports_io_manager"}
    assert isinstance(defs.resources["exports_io_manager"], LocalExportIOManager)  # type: ignore[index]


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
    source, storage = resources["source"], resources["exports_io_manager"]
    assert "topsecret" not in repr(source)
    assert source.dsn == dg.EnvVar("EXPORT_SOURCE_DSN")
    assert isinstance(storage, S3ExportIOManager)
    assert storage.bucket == dg.EnvVar("EXPORT_S3_BUCKET")
    assert storage.link_ttl_seconds == dg.EnvVar.int("EXPORT_LINK_TTL_SECONDS")
    assert storage.s3.endpoint_url is None  # unset variables fall back to defaults
    assert storage.prefix == "exports"


def test_local_storage_comes_from_its_variable() -> None:
    storage = build_resources({"EXPORT_STORAGE_DIR": "/srv/exports"})["exports_io_manager"]
    assert isinstance(storage, LocalExportIOManager)
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
    storage = build_resources({**env, "EXPORT_S3_BUCKET": "b"})["exports_io_manager"]
    assert storage.s3.region_name == (dg.EnvVar(expected) if expected else None)


def test_source_resource_repr_hides_the_password() -> None:
    from export_pipeline.resources.source import PostgresSourceResource

    resource = PostgresSourceResource(dsn="postgresql://u:hunter2@db/app")
    assert "hunter2" not in repr(resource) + str(resource)
    assert resource.source_config().dsn == "postgresql://u:hunter2@db/app"
