"""`status` over a ranged run (a backfill's, the monthly schedule's): one run exported customers
3-5 of March, and customer 4 failed inside it. The run carries the range's tags, not
`dagster/partition`, so only the partition status and the run's range find it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export_pipeline.dagster_private import run_partition_range
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.partitions import PARTITION_TAG
from export_pipeline.spec import load_spec
from export_pipeline_tests.cli.conftest import REPO_ROOT, make_cli
from export_pipeline_tests.harness import (
    export_definitions,
    export_resources,
    local_storage,
    materialize,
)

pytestmark = pytest.mark.slow
# Fails for customer 4 only (division by zero on the server); 3 and 5 export.
PICKY_DATASET = """
  picky:
    sql: |
      SELECT e.id, e.customer_id, e.occurred_at,
             1 / (CASE WHEN e.customer_id = 4 THEN 0 ELSE 1 END) AS one
      FROM public.events AS e
      WHERE e.customer_id = %(customer)s
        AND e.occurred_at >= %(month_start)s AND e.occurred_at < %(month_end)s
    customer_column: customer_id
    format: csv
    compression: none
"""


def test_status_reports_a_partition_failed_inside_a_ranged_run(
    tmp_path: Path, demo_dsn: str
) -> None:
    spec_path = tmp_path / "exports.yaml"
    spec_path.write_text((REPO_ROOT / "exports.yaml").read_text() + PICKY_DATASET)
    storage = tmp_path / "storage"
    cli = make_cli(
        tmp_path,
        ["3", "4", "5"],
        EXPORT_SOURCE_DSN=demo_dsn,
        EXPORT_STORAGE_DIR=str(storage),
        EXPORT_SPEC=str(spec_path),
    )
    defs = export_definitions(
        load_spec(spec_path),
        export_resources(demo_dsn, local_storage(storage)),
        checks=False,
        manifest=False,
    )
    with cli.instance() as instance:
        result = materialize(
            instance, defs, ("3|2025-03-01", "5|2025-03-01"), [export_asset_key("picky")]
        )
        assert not result.success
        run = result.dagster_run
        assert PARTITION_TAG not in run.tags
        assert run_partition_range(run) == ("3|2025-03-01", "5|2025-03-01")

    proc = cli.call("status", "--month", "2025-03", "--json")
    assert proc.returncode == 0, proc.stderr
    picky = {r["customer"]: r for r in json.loads(proc.stdout) if r["dataset"] == "picky"}
    assert {c: r["state"] for c, r in picky.items()} == {"3": "done", "4": "failed", "5": "done"}
    failed = picky["4"]
    assert failed["run_id"] == run.run_id
    assert "division by zero" in failed["error"] and "\n" not in failed["error"]
    # its own error: not the run's summary line, which names the other partitions' count
    assert "partitions failed" not in failed["error"]
    for customer in ("3", "5"):
        done = picky[customer]
        assert done["run_id"] == run.run_id and done["rows"] > 0
        exported = storage / "exports" / customer / "2025-03" / "picky.csv"
        assert done["uri"].endswith(str(exported)) and exported.is_file()

    # without --month: the ranged run's cells are found too (none has a run of its own)
    everything = cli.call("status", "--json")
    assert everything.returncode == 0, everything.stderr
    states = {
        (r["customer"], r["month"]): r["state"]
        for r in json.loads(everything.stdout)
        if r["dataset"] == "picky"
    }
    assert states == {
        ("3", "2025-03"): "done",
        ("4", "2025-03"): "failed",
        ("5", "2025-03"): "done",
    }

    # a single customer's table says the same, in one line per dataset
    table = cli.call("status", "4", "--month", "2025-03")
    assert table.returncode == 0, table.stderr
    [line] = [line for line in table.stdout.splitlines() if " picky " in line]
    assert "failed" in line and "division by zero" in line
