"""`run`, `status` and `link` against one instance: S3 behind the SigV4-checking proxy."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pytest

from export_pipeline_tests.cli.conftest import Cli, one_line, s3_object

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Runs:
    ok: subprocess.CompletedProcess[str]
    failed: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def runs(s3_cli: Cli) -> Runs:
    """Customer 3, March 2025: orders and invoices exported, then the broken dataset."""
    ok = s3_cli("run", "3", "2025-03", "--dataset", "orders", "--dataset", "invoices")
    failed = s3_cli("run", "3", "2025-03", "--dataset", "broken")
    return Runs(ok, failed)


def recorded(cli: Cli, dataset: str, partition: str = "3|2025-03-01") -> dict[str, Any]:
    with cli.instance() as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(["exports", dataset]), asset_partitions=[partition]
            ),
            limit=1,
        ).records
        assert records, f"no materialization of {dataset} {partition}"
        event = records[0].asset_materialization
        assert event is not None
        return {k: v.value for k, v in event.metadata.items()}


def test_run_records_materializations_whose_sha256_matches_the_object(
    runs: Runs, s3_cli: Cli, s3_client_module: Any, s3_bucket: str
) -> None:
    assert runs.ok.returncode == 0, runs.ok.stderr[-3000:]
    for dataset, key in (
        ("orders", "exports/3/2025-03/orders.jsonl"),
        ("invoices", "exports/3/2025-03/invoices.csv.gz"),
    ):
        md = recorded(s3_cli, dataset)
        data = s3_object(s3_client_module, s3_bucket, key)
        assert md["sha256"] == hashlib.sha256(data).hexdigest()
        assert md["uri"] == f"s3://{s3_bucket}/{key}"
        assert md["size_bytes"] == len(data)
        # the summary table: dataset, rows, sha256 prefix, uri
        line = next(line for line in runs.ok.stdout.splitlines() if f" {dataset} " in line)
        assert md["sha256"][:12] in line and f"{md['dagster/row_count']:,}" in line
        assert key in runs.ok.stdout
    orders = s3_object(s3_client_module, s3_bucket, "exports/3/2025-03/orders.jsonl")
    assert recorded(s3_cli, "orders")["dagster/row_count"] == orders.count(b"\n") > 0
    with s3_cli.instance() as instance:  # one run, as `dagster asset materialize` records it
        [run] = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "3|2025-03-01"}))[1:]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert set(run.asset_selection or ()) == {
            dg.AssetKey(["exports", "orders"]),
            dg.AssetKey(["exports", "invoices"]),
        }


def test_a_failed_export_exits_1_with_one_line(runs: Runs) -> None:
    assert runs.failed.returncode == 1, runs.failed.stderr[-3000:]
    line = one_line(runs.failed.stderr)
    assert line.startswith("export-pipeline run: 3|2025-03-01: run ")
    assert "FAILURE" in line and "broken:" in line and "no_such_table" in line
    assert "Traceback" not in runs.failed.stderr


def test_status_says_never_run_done_and_failed(runs: Runs, s3_cli: Cli) -> None:
    proc = s3_cli.call("status", "3", "--month", "2025-03", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["dataset"]: r for r in json.loads(proc.stdout)}
    assert {name: r["state"] for name, r in rows.items()} == {
        "events": "never run",
        "orders": "done",
        "invoices": "done",
        "broken": "failed",
    }
    orders = recorded(s3_cli, "orders")
    assert rows["orders"]["rows"] == orders["dagster/row_count"]
    assert rows["orders"]["size_bytes"] == orders["size_bytes"]
    assert rows["orders"]["sha256"] == orders["sha256"]
    assert rows["orders"]["link_expires_at"] == orders["download_url_expires_at"]
    assert "no_such_table" in rows["broken"]["error"] and "\n" not in rows["broken"]["error"]

    table = s3_cli.call("status", "3", "--month", "2025-03")
    assert table.returncode == 0, table.stderr
    lines = {name: line for line in table.stdout.splitlines() for name in rows if name in line}
    assert "never run" in lines["events"] and "failed" in lines["broken"]
    assert "done" in lines["orders"] and f"{orders['dagster/row_count']:,}" in lines["orders"]


def test_status_without_month_lists_what_ran(runs: Runs, s3_cli: Cli) -> None:
    proc = s3_cli.call("status", "--json")
    assert proc.returncode == 0, proc.stderr
    states = {
        (r["customer"], r["month"], r["dataset"]): r["state"] for r in json.loads(proc.stdout)
    }
    assert states == {
        ("3", "2025-03", "orders"): "done",
        ("3", "2025-03", "invoices"): "done",
        ("3", "2025-03", "broken"): "failed",
    }
    assert "never run, not listed" in proc.stderr


def test_link_signs_a_url_that_gets_the_exact_bytes(
    runs: Runs, s3_cli: Cli, s3_client_module: Any, s3_bucket: str
) -> None:
    proc = s3_cli.call("link", "3", "2025-03", "invoices", "--ttl", "600")
    assert proc.returncode == 0, proc.stderr
    url = one_line(proc.stdout)
    assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=30) as response:  # through the SigV4 proxy
        body = response.read()
    assert body == s3_object(s3_client_module, s3_bucket, "exports/3/2025-03/invoices.csv.gz")
    assert hashlib.sha256(body).hexdigest() == recorded(s3_cli, "invoices")["sha256"]
    tampered = url.replace("X-Amz-Expires=600", "X-Amz-Expires=601")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(tampered, timeout=30)
    assert denied.value.code == 403


def test_link_json_and_default_ttl(runs: Runs, s3_cli: Cli) -> None:
    proc = s3_cli.call("link", "3", "2025-03", "orders", "--json")
    assert proc.returncode == 0, proc.stderr
    link = json.loads(proc.stdout)
    assert link["uri"] == recorded(s3_cli, "orders")["uri"]
    assert "X-Amz-Expires=3600" in link["url"]  # EXPORT_LINK_TTL_SECONDS


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["link", "3", "2025-03", "events"], 3, "no finished export of events for 3 2025-03"),
        (["link", "3", "2025-03", "nope"], 3, "no dataset 'nope'"),
        (["link", "9", "2025-03", "orders"], 3, "customer '9' is not a 'customers' partition"),
        (["link", "3", "2025-03", "orders", "--ttl", "0"], 2, "--ttl must be between 1"),
        (["run", "9", "2025-03"], 3, "customer '9' is not a 'customers' partition"),
        (["run", "3", "2024-12"], 3, "month 2024-12 is not a partition"),
        (["run", "3", "2025-13"], 2, "month '2025-13' is not a month"),
        (["run", "3", "2025-03", "--dataset", "nope"], 3, "no dataset 'nope'"),
        (["run", "3/..", "2025-03"], 2, "customer key '3/..' is not allowed"),
        (["status", "9"], 3, "customer '9' is not a 'customers' partition"),
        (["status", "--month", "March"], 2, "month 'March' is not a month"),
    ],
)
def test_errors_are_one_line_with_their_exit_code(
    s3_cli: Cli, args: list[str], code: int, text: str
) -> None:
    proc = s3_cli.call(*args)
    assert proc.returncode == code, proc.stderr
    assert text in one_line(proc.stderr)
    assert proc.stdout == ""


def test_the_console_script_exits_with_the_code_and_one_line(s3_cli: Cli) -> None:
    """The same in a process of its own: the exit status and stderr the shell sees."""
    proc = s3_cli("run", "9", "2025-03")
    assert proc.returncode == 3, proc.stderr
    assert "customer '9' is not a 'customers' partition" in one_line(proc.stderr)
    assert proc.stdout == ""


def test_verbose_keeps_the_cause(s3_cli: Cli) -> None:
    proc = s3_cli.call("link", "3", "2025-03", "orders", "--ttl", "0", "-v")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "CliError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("export-pipeline link: --ttl must be")


def test_run_without_storage_fails_before_starting_anything(s3_cli: Cli) -> None:
    proc = s3_cli.call("run", "3", "2025-04", env={"EXPORT_S3_BUCKET": ""})
    assert proc.returncode == 1
    assert "no export storage configured" in one_line(proc.stderr)
    with s3_cli.instance() as instance:
        assert not instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "3|2025-04-01"}))
