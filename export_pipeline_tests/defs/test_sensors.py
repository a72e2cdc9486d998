from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from export_pipeline.defs.sensors import customers_sensor
from export_pipeline.resources.source import PostgresSourceResource

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tick(instance: dg.DagsterInstance, dsn: str) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, resources={"source": PostgresSourceResource(dsn=dsn)}
    )
    result = customers_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_customers_sensor_adds_new_customers_once(
    monkeypatch: pytest.MonkeyPatch, demo_dsn: str
) -> None:
    monkeypatch.setenv("EXPORT_SPEC", str(REPO_ROOT / "exports.yaml"))
    with dg.instance_for_test() as instance:
        first = _tick(instance, demo_dsn)
        [request] = first.dynamic_partitions_requests or []
        assert request.partitions_def_name == "customers"
        assert list(request.partition_keys) == ["1", "2", "3", "4", "5"]
        assert json.loads(first.cursor or "{}")["customers"] == 5
        _apply(instance, first)
        second = _tick(instance, demo_dsn)
        assert not second.dynamic_partitions_requests
        assert instance.get_dynamic_partitions("customers") == ["1", "2", "3", "4", "5"]


def test_customers_sensor_skips_hostile_keys(
    monkeypatch: pytest.MonkeyPatch, scratch_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(scratch_dsn) as conn:
        conn.execute("CREATE TABLE accounts (slug text)")
        conn.execute(
            "INSERT INTO accounts VALUES ('acme'), ('../../etc'), ('a/b'), ('globex'), (NULL)"
        )
    spec = (
        (REPO_ROOT / "exports.yaml")
        .read_text()
        .replace("table: public.customers\n  key_column: id", "table: accounts\n  key_column: slug")
    )
    (tmp_path / "exports.yaml").write_text(spec)
    monkeypatch.setenv("EXPORT_SPEC", str(tmp_path / "exports.yaml"))
    with dg.instance_for_test() as instance:
        [request] = _tick(instance, scratch_dsn).dynamic_partitions_requests or []
        assert list(request.partition_keys) == ["acme", "globex"]
