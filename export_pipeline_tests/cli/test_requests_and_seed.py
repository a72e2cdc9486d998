"""`requests` over a real export_requests table; `seed-demo` into a scratch database."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from export_pipeline.state.requests import mark_failed, mark_running, mark_succeeded, submit_request
from export_pipeline_tests.cli.conftest import make_cli, one_line

pytestmark = pytest.mark.slow


def test_requests_lists_the_rows_and_their_outcome(tmp_path: Path, scratch_dsn: str) -> None:
    first = submit_request(scratch_dsn, "3", "2025-03", ["orders"], "billing-app")
    second = submit_request(scratch_dsn, "4", "2025-04", None, "ops")
    third = submit_request(scratch_dsn, "5", "2025-05", ["events"], "ops")
    mark_running(scratch_dsn, first, "run-1")
    mark_succeeded(scratch_dsn, first, "run-1", ["s3://b/exports/3/2025-03/orders.jsonl"])
    mark_failed(scratch_dsn, third, "run-3", "exports/events 5|2025-05-01: boom\nmore detail")
    cli = make_cli(tmp_path, [], EXPORT_STATE_DSN=scratch_dsn)

    proc = cli.call("requests", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["id"], r["status"]) for r in rows] == [
        (third, "failed"),
        (second, "pending"),
        (first, "succeeded"),
    ]
    assert rows[2]["uris"] == ["s3://b/exports/3/2025-03/orders.jsonl"]
    assert rows[1]["datasets"] is None and rows[1]["requester"] == "ops"

    failed = cli.call("requests", "--status", "failed")
    assert failed.returncode == 0, failed.stderr
    [line] = [line for line in failed.stdout.splitlines() if "2025-05" in line]
    assert "failed" in line and "boom" in line and "more detail" not in failed.stdout
    assert "2025-03" not in failed.stdout and "2025-04" not in failed.stdout

    table = cli.call("requests", "--customer", "3")
    assert "orders.jsonl" in table.stdout and "2025-04" not in table.stdout

    bad = cli.call("requests", "--status", "done")
    assert bad.returncode == 2 and "invalid choice: 'done'" in one_line(bad.stderr)
    unset = cli.call("requests", env={"EXPORT_STATE_DSN": ""})
    assert unset.returncode == 1 and "EXPORT_STATE_DSN is not set" in one_line(unset.stderr)


def test_seed_demo_fills_the_source_and_registers_the_customers(
    tmp_path: Path, scratch_dsn: str
) -> None:
    cli = make_cli(tmp_path, [], EXPORT_SOURCE_DSN=scratch_dsn)
    proc = cli.call("seed-demo", "--rows", "2000", "--customers", "3")
    assert proc.returncode == 0, proc.stderr
    assert "3 customer partition(s) registered, 3 new" in proc.stdout
    with psycopg.connect(scratch_dsn) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM public.customers), (SELECT count(*) FROM public.events)"
        ).fetchone()
    assert counts == (3, 2000)
    with cli.instance() as instance:
        assert sorted(instance.get_dynamic_partitions("customers")) == ["1", "2", "3"]

    again = cli.call("seed-demo")
    assert again.returncode == 0, again.stderr
    assert "3 customer partition(s) registered, 0 new" in again.stdout
    assert "already there" in one_line(again.stderr)

    no_dsn = cli.call("seed-demo", env={"EXPORT_SOURCE_DSN": ""})
    assert no_dsn.returncode == 2 and "EXPORT_SOURCE_DSN" in one_line(no_dsn.stderr)
    no_home = cli.call("status", env={"DAGSTER_HOME": ""})
    assert no_home.returncode == 1 and "DAGSTER_HOME is not set" in one_line(no_home.stderr)
