from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _spec_file(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    text = (REPO_ROOT / "exports.yaml").read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "exports.yaml"
    path.write_text(text)
    return path


def _tick_with(
    instance: dg.DagsterInstance, dsn: str, cursor: str | None = None
) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"source": PostgresSourceResource(dsn=dsn)}
    )
    result = customers_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_customers_sensor_reads_its_cursor(monkeypatch: pytest.MonkeyPatch, demo_dsn: str) -> None:
    monkeypatch.setenv("EXPORT_SPEC", str(REPO_ROOT / "exports.yaml"))
    with dg.instance_for_test() as instance:
        first = _tick_with(instance, demo_dsn)
        # Unchanged list: skipped on the cursor alone, even though nothing was applied.
        again = _tick_with(instance, demo_dsn, first.cursor)
        assert not again.dynamic_partitions_requests
        assert again.skip_reason is not None
        assert "unchanged" in str(again.skip_reason.skip_message)
        assert again.cursor == first.cursor
        # A cursor of another list: compared against the instance again.
        other = _tick_with(instance, demo_dsn, json.dumps({"digest": "something-else"}))
        assert [list(r.partition_keys) for r in other.dynamic_partitions_requests or []] == [
            ["1", "2", "3", "4", "5"]
        ]


@pytest.mark.parametrize(
    ("dsn", "replace", "message"),
    [
        ("postgresql://u:pw-9@127.0.0.1:1/x", None, "cannot connect to the source database"),
        (None, ("table: public.customers", "table: public.no_customers"), "customers query"),
    ],
)
def test_customers_sensor_tick_fails_visibly(
    monkeypatch: pytest.MonkeyPatch,
    demo_dsn: str,
    tmp_path: Path,
    dsn: str | None,
    replace: tuple[str, str] | None,
    message: str,
) -> None:
    monkeypatch.setenv("EXPORT_SPEC", str(_spec_file(tmp_path, replace)))
    with dg.instance_for_test() as instance, pytest.raises(Exception, match=message) as info:
        _tick_with(instance, dsn or demo_dsn)
    assert "pw-9" not in str(info.value)


def test_removed_customers_are_kept_and_reported(
    monkeypatch: pytest.MonkeyPatch, demo_dsn: str, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXPORT_SPEC", str(REPO_ROOT / "exports.yaml"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["1", "2", "3", "4", "5", "old-1"])
        result = _tick_with(instance, demo_dsn)
        assert not result.dynamic_partitions_requests
        assert json.loads(result.cursor or "{}")["gone"] == 1
        assert "old-1" in instance.get_dynamic_partitions("customers")
    logged = capfd.readouterr().err
    assert "no longer in the source, kept" in logged and "old-1" in logged


def test_new_customers_get_their_history_when_the_spec_asks(
    monkeypatch: pytest.MonkeyPatch, demo_dsn: str, tmp_path: Path
) -> None:
    spec = _spec_file(
        tmp_path, ("  key_column: id\n", "  key_column: id\n  export_history: true\n")
    )
    monkeypatch.setenv("EXPORT_SPEC", str(spec))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("customers", ["1", "2", "3"])
        result = _tick_with(instance, demo_dsn)
        [add] = result.dynamic_partitions_requests or []
        assert list(add.partition_keys) == ["4", "5"]
        requests = result.run_requests or []
        months = [r.partition_key for r in requests]
        assert months[0] == "2025-01-01" and len(months) == len(set(months))
        assert all(
            r.run_config["ops"]["export_month"]["config"]["customers"] == ["4", "5"]
            for r in requests
        )
        assert len({r.run_key for r in requests}) == len(requests)
        # Evaluated again (e.g. the result was lost): the same run keys.
        again = _tick_with(instance, demo_dsn)
        assert [r.run_key for r in again.run_requests or []] == [r.run_key for r in requests]


def test_history_requests_cover_months_start_to_last_month(demo_spec: Any) -> None:
    import dataclasses

    from export_pipeline.defs.sensors import history_requests
    from export_pipeline.partitions import Month

    spec = dataclasses.replace(
        demo_spec, customers=dataclasses.replace(demo_spec.customers, export_history=True)
    )
    requests = history_requests(spec, ["7"], Month(2025, 3))
    assert [r.partition_key for r in requests] == ["2025-01-01", "2025-02-01", "2025-03-01"]
    assert history_requests(demo_spec, ["7"], Month(2025, 3)) == []  # not opted in
