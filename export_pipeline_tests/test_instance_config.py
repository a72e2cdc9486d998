"""The instance configs load as they are committed, and carry the limits docs/operations.md states.

deploy/dagster.yaml (production, scripts/dev.sh) runs on a scratch database of the test
PostgreSQL; the root dagster.yaml (plain `dagster dev` / `dg dev`) on default storage.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from export_pipeline_tests.helpers import sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_CONFIG = REPO_ROOT / "deploy" / "dagster.yaml"
ROOT_CONFIG = REPO_ROOT / "dagster.yaml"
SOURCE_POOL = "export_source_db"

# What docs/operations.md promises.
MAX_CONCURRENT_RUNS = 4
POOL_DEFAULT_LIMIT = 4
START_TIMEOUT_SECONDS = 300
MAX_RUNTIME_SECONDS = 43_200  # a ranged run of up to 500 partitions
FREE_SLOTS_AFTER_RUN_END_SECONDS = 300


def instance_home(tmp_path: Path, config: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(config, home / "dagster.yaml")
    return home


def assert_documented_limits(instance: dg.DagsterInstance) -> None:
    assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
    concurrency = instance.get_concurrency_config()
    run_queue = concurrency.run_queue_config
    assert run_queue is not None
    assert run_queue.max_concurrent_runs == MAX_CONCURRENT_RUNS
    # Customer-months are kept apart by partition locks, not by run tags (ranged runs have no
    # `dagster/partition` tag); and the pool admits every run, so a lock holder always finds a
    # slot for its next step.
    assert list(run_queue.tag_concurrency_limits or []) == []
    assert POOL_DEFAULT_LIMIT >= MAX_CONCURRENT_RUNS
    assert concurrency.pool_config.default_pool_limit == POOL_DEFAULT_LIMIT
    assert getattr(concurrency.pool_config.pool_granularity, "value", None) == "op"
    assert instance.global_op_concurrency_default_limit == POOL_DEFAULT_LIMIT

    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_start_timeout_seconds == START_TIMEOUT_SECONDS
    assert instance.run_monitoring_max_runtime_seconds == MAX_RUNTIME_SECONDS
    monitoring = instance.get_settings("run_monitoring")
    assert monitoring["free_slots_after_run_end_seconds"] == FREE_SLOTS_AFTER_RUN_END_SECONDS


def assert_pool_enforced(instance: dg.DagsterInstance) -> None:
    """The storage really hands out only POOL_DEFAULT_LIMIT slots of the source pool."""
    storage = instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    storage.initialize_concurrency_limit_to_default(SOURCE_POOL)
    assert storage.get_concurrency_info(SOURCE_POOL).slot_count == POOL_DEFAULT_LIMIT
    claims = [
        storage.claim_concurrency_slot(SOURCE_POOL, f"run-{i}", "exports__events")
        for i in range(POOL_DEFAULT_LIMIT + 1)
    ]
    assert [claim.is_claimed for claim in claims] == [True] * POOL_DEFAULT_LIMIT + [False]


def test_deploy_config_on_postgres(
    tmp_path: Path, scratch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = instance_home(tmp_path, DEPLOY_CONFIG)
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(scratch_dsn))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert_documented_limits(instance)
        assert_pool_enforced(instance)


def test_root_config_needs_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    home = instance_home(tmp_path, ROOT_CONFIG)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert "Sqlite" in type(instance.run_storage).__name__
        assert_documented_limits(instance)
        assert_pool_enforced(instance)


def test_root_and_deploy_configs_differ_only_in_storage() -> None:
    def load(path: Path) -> dict[str, Any]:
        loaded = yaml.safe_load(path.read_text())
        assert isinstance(loaded, dict)
        return loaded

    deploy, root = load(DEPLOY_CONFIG), load(ROOT_CONFIG)
    assert "storage" not in root
    assert deploy.pop("storage") == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert root == deploy


def test_export_assets_use_the_limited_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_pipeline.definitions import defs

    monkeypatch.setenv("EXPORT_STORAGE_DIR", "/tmp/exports")
    monkeypatch.delenv("EXPORT_S3_BUCKET", raising=False)

    # Loading and resolving read the current instance (Dagster keeps a process-wide handle
    # to the last one made; an earlier test's may be closed by now): give them a live one.
    with dg.instance_for_test():
        definitions = defs()
        assets = [
            a
            for a in definitions.resolve_asset_graph().assets_defs
            if len(a.keys) == 1 and a.key.path[0] == "exports"
        ]
        job = definitions.resolve_job_def("exports_job")
    assert len(assets) == 3
    for asset in assets:
        assert set(asset.node_def.pools) == {SOURCE_POOL}, asset.key
    # The one job that exports: its export steps take a slot of the pool, whatever the range.
    export_nodes = [
        n for n in job.nodes if n.name.startswith("exports__") and "checks" not in n.name
    ]
    assert {n.name for n in export_nodes} == {
        f"exports__{d}" for d in ("events", "orders", "invoices")
    }
    assert {p for n in export_nodes for p in n.definition.pools} == {SOURCE_POOL}
