"""The ECS and Kubernetes deployment files: they load, and carry the same limits as
deploy/dagster.yaml.

- deploy/ecs/dagster.yaml loads as a Dagster instance on a scratch PostgreSQL database, with
  dagster-aws's real EcsRunLauncher (its constructor only creates boto3 clients; it calls AWS
  only for a task definition given by ARN, which this config does not use), the documented
  queue, tag and pool limits, and a pool the storage really enforces.
- deploy/helm/values.yaml (values for Dagster's official chart, which renders the instance
  config itself): the K8sRunLauncher, the queued run coordinator, the same limits and run
  monitoring (appended to the chart's dagster.yaml through additionalInstanceConfig, so they
  load as the tested deploy/dagster.yaml blocks), the code location's module the image serves, and
  secrets referenced by name only.
- The example ECS task definitions: secrets only as references (`valueFrom`), the container
  names the launcher expects.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from export_pipeline_tests.helpers import sqlalchemy_url
from export_pipeline_tests.test_instance_config import (
    assert_documented_limits,
    assert_pool_enforced,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
ECS_CONFIG = DEPLOY / "ecs" / "dagster.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
ENV_SECRET = "export-pipeline-env"
CODE_LOCATION_MODULE = "export_pipeline.definitions"
SECRET_NAMES = re.compile(r"DSN|PASSWORD|SECRET|TOKEN|PG_URL", re.IGNORECASE)


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_ecs_config_loads_with_the_ecs_run_launcher(
    tmp_path: Path, scratch_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.ecs.container_context import EcsContainerContext

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(ECS_CONFIG, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", sqlalchemy_url(scratch_dsn))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")  # boto3 clients need a region
    # What the daemon's task definition sets; the launcher copies its env_vars from here.
    daemon = json.loads((DEPLOY / "ecs" / "daemon.task-definition.json").read_text())
    (container,) = daemon["containerDefinitions"]
    for variable in container["environment"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert "Postgres" in type(instance.run_storage).__name__
        launcher = instance.run_launcher
        assert isinstance(launcher, EcsRunLauncher)
        assert launcher.use_current_ecs_task_config
        assert launcher.container_name == "run"
        assert launcher.secrets_tags == ["export-pipeline"]
        assert not any(SECRET_NAMES.search(v) for v in launcher.env_vars), launcher.env_vars
        # A run task's environment, as the launcher builds it for each launch (it raises for a
        # listed variable the daemon does not have).
        run_env = EcsContainerContext.create_for_run(
            dg.DagsterRun(job_name="exports_job", run_id="r1"), launcher
        ).get_environment_dict()
        assert run_env["EXPORT_S3_BUCKET"] == "acme-customer-exports"
        assert launcher.supports_check_run_worker_health
        assert_documented_limits(instance)
        assert_pool_enforced(instance)


def test_ecs_config_differs_from_deploy_only_in_the_run_launcher() -> None:
    ecs, deploy = load_yaml(ECS_CONFIG), load_yaml(DEPLOY / "dagster.yaml")
    assert ecs.pop("run_launcher")["class"] == "EcsRunLauncher"
    assert ecs == deploy


def test_helm_values_carry_the_instance_limits() -> None:
    values = load_yaml(HELM_VALUES)
    deploy = load_yaml(DEPLOY / "dagster.yaml")

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    # Dagster 1.13 rejects run limits in the coordinator's config once pools are set.
    assert not coordinator["config"]["queuedRunCoordinator"]

    # The chart renders storage, launcher and coordinator; these blocks are appended as they are.
    assert values["dagsterDaemon"]["runMonitoring"] == {"enabled": False}  # not rendered twice
    assert "concurrency" not in values  # the chart's own block stays off
    assert values["additionalInstanceConfig"] == {
        "concurrency": deploy["concurrency"],
        "run_monitoring": deploy["run_monitoring"],
    }
    assert values["telemetry"] == deploy["telemetry"]


def test_helm_values_serve_the_image_module_and_reference_secrets_by_name() -> None:
    values = load_yaml(HELM_VALUES)
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == CODE_LOCATION_MODULE
    assert deployment["envSecrets"] == [{"name": ENV_SECRET}]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["envSecrets"] == [{"name": ENV_SECRET}]

    postgres = values["postgresql"]
    assert postgres["enabled"] is False
    assert "postgresqlPassword" not in postgres
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]


def test_ecs_task_definitions_reference_secrets_only() -> None:
    definitions = {
        path.name: json.loads(path.read_text()) for path in (DEPLOY / "ecs").glob("*.json")
    }
    assert set(definitions) == {
        "code-location.task-definition.json",
        "daemon.task-definition.json",
    }
    for name, definition in definitions.items():
        for container in definition["containerDefinitions"]:
            plain = {e["name"] for e in container.get("environment", [])}
            assert not {n for n in plain if SECRET_NAMES.search(n)}, (name, plain)
            for secret in container.get("secrets", []):
                assert set(secret) == {"name", "valueFrom"}, (name, secret)
                assert secret["valueFrom"].startswith("arn:aws:"), (name, secret)

    (code_location,) = definitions["code-location.task-definition.json"]["containerDefinitions"]
    environment = {e["name"]: e["value"] for e in code_location["environment"]}
    # Runs use the code location's image: the launcher reads DAGSTER_CURRENT_IMAGE.
    assert environment["DAGSTER_CURRENT_IMAGE"] == code_location["image"]
    assert code_location["portMappings"] == [{"containerPort": 4000, "protocol": "tcp"}]
    (daemon,) = definitions["daemon.task-definition.json"]["containerDefinitions"]
    ecs = load_yaml(ECS_CONFIG)
    assert daemon["name"] == ecs["run_launcher"]["config"]["container_name"]
    assert daemon["command"][:2] == ["dagster-daemon", "run"]
    workspace = load_yaml(DEPLOY / "ecs" / "workspace.yaml")
    (server,) = workspace["load_from"]
    assert server["grpc_server"]["port"] == 4000
