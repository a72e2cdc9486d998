from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from export_pipeline.dagster_private import ranged_run_tags
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.defs.schedules import TRIGGER_TAG
from export_pipeline.defs.sensors import build_customers_sensor, history_requests
from export_pipeline.partitions import Month
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import ExportSpec, load_spec
from export_pipeline_tests.harness import fresh_instance

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SPEC = REPO_ROOT / "exports.yaml"


def _tick(
    instance: dg.DagsterInstance, dsn: str, cursor: str | None = None, spec: Path = SHIPPED_SPEC
) -> dg.SensorResult:
    """One evaluation of customers_sensor as the code location builds it from `spec`."""
    sensor = build_customers_sensor(load_spec(spec))
    resources = {"source": PostgresSourceResource(dsn=dsn)}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_customers_sensor_adds_new_customers_once(demo_dsn: str) -> None:
    with fresh_instance() as instance:
        first = _tick(instance, demo_dsn)
        assert first.run_requests == []  # the shipped spec asks for no history
        [request] = first.dynamic_partitions_requests or []
        assert request.partitions_def_name == "customers"
        assert list(request.partition_keys) == ["1", "2", "3", "4", "5"]
        assert json.loads(first.cursor or "{}")["customers"] == 5
        _apply(instance, first)
        second = _tick(instance, demo_dsn)
        assert not second.dynamic_partitions_requests
        assert instance.get_dynamic_partitions("customers") == ["1", "2", "3", "4", "5"]


def test_customers_sensor_skips_hostile_keys(scratch_dsn: str, tmp_path: Path) -> None:
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
    with fresh_instance() as instance:
        result = _tick(instance, scratch_dsn, spec=tmp_path / "exports.yaml")
        [request] = result.dynamic_partitions_requests or []
        assert list(request.partition_keys) == ["acme", "globex"]


def _spec_file(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    text = (REPO_ROOT / "exports.yaml").read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "exports.yaml"
    path.write_text(text)
    return path


def test_customers_sensor_reads_its_cursor(demo_dsn: str) -> None:
    with fresh_instance() as instance:
        first = _tick(instance, demo_dsn)
        # Unchanged list: skipped on the cursor alone, even though nothing was applied.
        again = _tick(instance, demo_dsn, first.cursor)
        assert not again.dynamic_partitions_requests
        assert again.skip_reason is not None
        assert "unchanged" in str(again.skip_reason.skip_message)
        assert again.cursor == first.cursor
        # A cursor of another list: compared against the instance again.
        other = _tick(instance, demo_dsn, json.dumps({"digest": "something-else"}))
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
    demo_dsn: str,
    tmp_path: Path,
    dsn: str | None,
    replace: tuple[str, str] | None,
    message: str,
) -> None:
    spec = _spec_file(tmp_path, replace)
    with fresh_instance() as instance, pytest.raises(Exception, match=message) as info:
        _tick(instance, dsn or demo_dsn, spec=spec)
    assert "pw-9" not in str(info.value)


def test_removed_customers_are_kept_and_reported(
    demo_dsn: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with fresh_instance() as instance:
        instance.add_dynamic_partitions("customers", ["1", "2", "3", "4", "5", "old-1"])
        result = _tick(instance, demo_dsn)
        assert not result.dynamic_partitions_requests
        assert json.loads(result.cursor or "{}")["gone"] == 1
        assert "old-1" in instance.get_dynamic_partitions("customers")
    logged = capfd.readouterr().err
    assert "no longer in the source, kept" in logged and "old-1" in logged


def test_new_customers_get_their_history_as_ranged_runs(demo_dsn: str, tmp_path: Path) -> None:
    spec = _spec_file(
        tmp_path, ("  key_column: id\n", "  key_column: id\n  export_history: true\n")
    )
    with fresh_instance() as instance:
        instance.add_dynamic_partitions("customers", ["1", "2", "3"])
        result = _tick(instance, demo_dsn, spec=spec)
        [add] = result.dynamic_partitions_requests or []
        assert list(add.partition_keys) == ["4", "5"]
        _apply(instance, result)
        # One ranged run: customers 4-5 x every month from months.start to last month.
        [request] = result.run_requests or []
        last = Month.parse(datetime.now(UTC).strftime("%Y-%m")).previous()
        assert request.partition_key_range == dg.PartitionKeyRange(
            "4|2025-01-01", f"5|{last.start.isoformat()}"
        )
        assert request.tags[TRIGGER_TAG] == "new-customers"
        assert request.run_key is not None and request.run_key.startswith("history-")
        pdef = build_export_partitions_def(load_spec(spec).months_start)
        covered = pdef.get_partition_keys_in_range(
            request.partition_key_range, dynamic_partitions_store=instance
        )
        months = pdef.get_partitions_def_for_dimension("month").get_partition_keys()
        assert sorted(covered) == sorted(f"{c}|{m}" for c in "45" for m in months)
        # Evaluated again (e.g. the result was lost): the same run key.
        instance.delete_dynamic_partition("customers", "4")
        instance.delete_dynamic_partition("customers", "5")
        again = _tick(instance, demo_dsn, spec=spec)
        assert [r.run_key for r in again.run_requests or []] == [request.run_key]


def test_history_requests_are_chunked_into_ranges(demo_spec: ExportSpec) -> None:
    spec = dataclasses.replace(
        demo_spec, customers=dataclasses.replace(demo_spec.customers, export_history=True)
    )
    customers = [str(n) for n in range(1, 401)]
    requests = history_requests(spec, customers, Month(2025, 3))  # 400 x 3 months
    # at most 500 partitions a run: 166 customers x 3 months, three times
    assert [r.partition_key_range for r in requests] == [
        dg.PartitionKeyRange("1|2025-01-01", "166|2025-03-01"),
        dg.PartitionKeyRange("167|2025-01-01", "332|2025-03-01"),
        dg.PartitionKeyRange("333|2025-01-01", "400|2025-03-01"),
    ]
    assert len({r.run_key for r in requests}) == 3
    assert requests[0].tags == {
        TRIGGER_TAG: "new-customers",
        **ranged_run_tags("1|2025-01-01", "166|2025-03-01"),
    }
    assert history_requests(demo_spec, ["7"], Month(2025, 3)) == []  # not opted in
