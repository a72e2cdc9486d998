from __future__ import annotations

import importlib
from pathlib import Path

import dagster as dg
import pytest

from export_pipeline.settings import build_resources
from export_pipeline.spec import SpecError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load(monkeypatch: pytest.MonkeyPatch, **env: str) -> dg.Definitions:
    monkeypatch.setenv("EXPORT_SPEC", str(REPO_ROOT / "exports.yaml"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module("export_pipeline.definitions")
    return module.defs()


def test_definitions_load_one_partitioned_asset_per_dataset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defs = _load(monkeypatch)
    keys = {a.key for a in defs.assets or []}  # type: ignore[union-attr]
    assert keys == {dg.AssetKey(["exports", d]) for d in ("events", "orders", "invoices")}
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
    assert set(defs.resources or {}) >= {"source", "storage"}


def test_importing_reads_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EXPORT_SPEC", str(tmp_path / "missing.yaml"))
    module = importlib.reload(importlib.import_module("export_pipeline.definitions"))
    with pytest.raises(Exception) as info:
        module.defs()
    # Dagster wraps the loader's error; ours is at the bottom, naming the file.
    chain = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    assert any(isinstance(e, SpecError) and "missing.yaml" in str(e) for e in chain)


def test_settings_use_env_vars_not_values() -> None:
    env = {
        "EXPORT_SOURCE_DSN": "postgresql://u:topsecret@db/x",
        "EXPORT_S3_BUCKET": "bkt",
        "EXPORT_LINK_TTL_SECONDS": "3600",
    }
    resources = build_resources(env)
    source, storage = resources["source"], resources["storage"]
    assert "topsecret" not in repr(source)
    assert source.dsn == dg.EnvVar("EXPORT_SOURCE_DSN")
    assert storage.bucket == dg.EnvVar("EXPORT_S3_BUCKET")
    assert storage.link_ttl_seconds == dg.EnvVar.int("EXPORT_LINK_TTL_SECONDS")
    assert storage.endpoint_url is None  # unset variables fall back to defaults
    assert Path(storage.local_dir).is_absolute()  # anchored at the repo, not the cwd


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-east-2"}, "AWS_REGION"),
        ({"AWS_DEFAULT_REGION": "us-east-2"}, "AWS_DEFAULT_REGION"),
        ({}, None),
    ],
)
def test_region_comes_from_the_standard_variables(env: dict, expected: str | None) -> None:
    storage = build_resources(env)["storage"]
    assert storage.region_name == (dg.EnvVar(expected) if expected else None)


def test_source_resource_repr_hides_the_password() -> None:
    from export_pipeline.resources.source import PostgresSourceResource

    resource = PostgresSourceResource(dsn="postgresql://u:hunter2@db/app")
    assert "hunter2" not in repr(resource) + str(resource)
    assert resource.source_config().dsn == "postgresql://u:hunter2@db/app"
