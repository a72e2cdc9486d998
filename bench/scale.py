"""The scale benchmark: Dagster at 1,000 customers x 36 months x 3 datasets, on this machine.

    python bench/scale.py [--customers 1000] [--months 36] [--quick] [--server-dsn DSN]

A script with a printed report, not a timed test. It
1. seeds `scale_src` (or `scale_src_<n>`) with the demo seeder at the demo's density (5,000
   events a year per customer, as 50,000 for the demo's 10), unless already seeded so;
2. writes a spec whose months start `--months` months before last month (the data covers
   2025; other months export 0 rows) and a fresh Postgres-backed instance (deploy/dagster.yaml,
   database `scale_dagster`, dropped and recreated);
3. times, in fresh processes, loading the definitions (`defs()`) and `dg check defs`;
4. times a `customers_sensor` tick against the source (first tick: every customer is new;
   then a steady-state tick) and a `monthly_exports_schedule` tick;
5. starts dagster-webserver + dagster-daemon on the instance and, through GraphQL as the UI
   does, drains (a) one month for every customer (`launchRun` of `monthly_exports_job`,
   partition 2025-06-01, tagged as the schedule's run), (b) a backfill of the job over 12
   months for the first 100 customers (`launchPartitionBackfill` with run config), and (c) for
   contrast, a small asset backfill (one run per customer-month, the path the job replaces);
   each with wall time, CPU of every process the webserver and daemon started, and checks that
   every partition has its own materialization with `uri`, `sha256`, `dagster/row_count`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import dagster as dg  # noqa: E402
from dagster._core.events import DagsterEventType  # noqa: E402
from scale_cpu import MachineCpu, TreeCpu, loadavg  # noqa: E402

from export_pipeline_tests.dagster_processes import (  # noqa: E402
    free_port,
    graphql,
    location_loaded,
    service,
    tail,
    wait_for,
)
from export_pipeline_tests.test_backfill_graphql import LAUNCH_BACKFILL  # noqa: E402

BIN = Path(sys.executable).parent
EVENTS_PER_CUSTOMER = 5_000  # the demo's density: 50,000 events a year for 10 customers
DATASETS = ["events", "orders", "invoices"]
LOCATION = "export_pipeline"
JOB = "monthly_exports_job"
DRAIN_MONTH = "2025-06-01"
REQUIRED_METADATA = {"uri", "sha256", "dagster/row_count"}
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_FINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}
"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions }
    ... on Error { message }
  }
}
"""
PARTITION_VIEW = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed }
      assetPartitionStatuses { __typename }
    }
  }
}
"""


@dataclass
class Drain:
    name: str
    partitions: int  # asset partitions expected (customer x month x dataset)
    runs: int = 0
    wall: float = 0.0  # launch request -> end of the last run
    queue_to_start: list[float] = field(default_factory=list)  # run created -> run started
    run_walls: list[float] = field(default_factory=list)  # run started -> run ended
    cpu: float = 0.0  # CPU of the webserver/daemon process groups during the drain
    machine_cpu: float = 0.0
    machine_busy: float = 0.0
    peak_procs: int = 0
    materialized: int = 0
    engine: list[float] = field(default_factory=list)  # duration_seconds of each export
    engine_by_dataset: dict[str, list[float]] = field(default_factory=dict)
    rows: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    load: str = ""

    def engine_medians(self) -> str:
        return ", ".join(
            f"{name} {statistics.median(values) * 1000:.1f}"
            for name, values in sorted(self.engine_by_dataset.items())
        )

    @property
    def engine_sum(self) -> float:
        return sum(self.engine)

    @property
    def overhead_per_partition(self) -> float:
        return (self.wall - self.engine_sum) / max(self.partitions, 1)

    @property
    def in_run_overhead_per_partition(self) -> float:
        """Inside the runs only (run start -> end): no queueing, launch or process start."""
        return (sum(self.run_walls) - self.engine_sum) / max(self.partitions, 1)


def months_start(months: int, today: date) -> date:
    """The first month so that `months` monthly partitions end with last month."""
    index = today.year * 12 + today.month - 1 - months  # last month is index + months - 1
    return date(index // 12, index % 12 + 1, 1)


def dsn_for(server_dsn: str, db: str) -> str:
    return psycopg.conninfo.make_conninfo(server_dsn, dbname=db)


def seed(server_dsn: str, db: str, customers: int) -> None:
    rows = customers * EVENTS_PER_CUSTOMER
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    with psycopg.connect(dsn_for(server_dsn, db)) as conn:
        seeded = conn.execute("SELECT to_regclass('public.invoices') IS NOT NULL").fetchone()
        if seeded and seeded[0]:
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM events)"
            ).fetchone()
            if counts == (customers, rows):
                log(f"{db} already holds {customers} customers, {rows} events")
                return
    log(f"seeding {db}: {customers} customers, {rows} events (2025) ...")
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "export_pipeline.demo.seed",
            "--dsn",
            dsn_for(server_dsn, db),
            "--customers",
            str(customers),
            "--rows",
            str(rows),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    log(f"seeded in {time.perf_counter() - started:.0f} s")


def fresh_database(server_dsn: str, db: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))


def log(message: str) -> None:
    sys.stderr.write(f"[{datetime.now():%H:%M:%S}] {message}\n")
    sys.stderr.flush()


# --- 3. definitions load -------------------------------------------------------------------------

DEFS_PROBE = r"""
import json, time
t0 = time.perf_counter()
import dagster
t1 = time.perf_counter()
from export_pipeline.definitions import defs
d = defs()
t2 = time.perf_counter()
repo = d.get_repository_def()
jobs = repo.get_all_jobs()
t3 = time.perf_counter()
print(json.dumps({"import_dagster": t1 - t0, "defs": t2 - t1, "repository": t3 - t2,
                  "jobs": len(jobs)}))
"""


def time_defs(env: dict[str, str], rounds: int) -> dict[str, float]:
    results: list[dict[str, float]] = []
    for _ in range(rounds):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", DEFS_PROBE],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        figures["process"] = time.perf_counter() - started
        results.append(figures)
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    started = time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "dg"), "check", "defs"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    medians["dg_check_defs"] = time.perf_counter() - started
    if proc.returncode != 0:
        log(f"dg check defs failed: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
        medians["dg_check_defs"] = float("nan")
    return medians


# --- 4. sensor and schedule ticks ----------------------------------------------------------------


def time_ticks(instance: dg.DagsterInstance, source_dsn: str, rounds: int) -> dict[str, float]:
    from export_pipeline.definitions import defs
    from export_pipeline.defs.sensors import customers_sensor
    from export_pipeline.resources.source import PostgresSourceResource

    def sensor_tick() -> tuple[float, dg.SensorResult]:
        started = time.perf_counter()
        context = dg.build_sensor_context(
            instance=instance, resources={"source": PostgresSourceResource(dsn=source_dsn)}
        )
        result = customers_sensor(context)
        assert isinstance(result, dg.SensorResult)
        return time.perf_counter() - started, result

    figures: dict[str, float] = {}
    figures["sensor_first"], first = sensor_tick()
    [request] = first.dynamic_partitions_requests or []
    assert isinstance(request, dg.AddDynamicPartitionsRequest)
    started = time.perf_counter()
    instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    figures["add_partitions"] = time.perf_counter() - started
    figures["customers_added"] = len(list(request.partition_keys))
    steady = []
    for _ in range(rounds):
        wall, result = sensor_tick()
        assert not result.dynamic_partitions_requests
        steady.append(wall)
    figures["sensor_steady"] = statistics.median(steady)

    repo = defs().get_repository_def()
    schedule = repo.get_schedule_def("monthly_exports_schedule")
    walls = []
    for _ in range(rounds):
        started = time.perf_counter()
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2025, 7, 1, 2, tzinfo=UTC),
            repository_def=repo,
        )
        data = schedule.evaluate_tick(context)
        walls.append(time.perf_counter() - started)
        [run_request] = data.run_requests or []
        assert run_request.partition_key == DRAIN_MONTH, run_request
    figures["schedule"] = statistics.median(walls)
    return figures


# --- 5. drains through webserver + daemon --------------------------------------------------------


def run_ids_for(instance: dg.DagsterInstance, tags: dict[str, str]) -> list[str]:
    return [r.run_id for r in instance.get_runs(filters=dg.RunsFilter(tags=tags))]


def wait_runs(
    instance: dg.DagsterInstance, find: Any, expected: int, deadline: float, what: str
) -> list[dg.DagsterRun]:
    def done() -> list[dg.DagsterRun] | None:
        runs = [instance.get_run_by_id(run_id) for run_id in find()]
        runs = [r for r in runs if r is not None]
        if len(runs) >= expected and all(r.status.value in FINISHED for r in runs):
            return runs
        return None

    return wait_for(what, deadline, done)


def measure(
    instance: dg.DagsterInstance,
    tree: TreeCpu,
    drain: Drain,
    launch: Any,
    find: Any,
    expected_runs: int,
    deadline: float,
) -> list[dg.DagsterRun]:
    log(f"{drain.name}: launching ({drain.partitions} asset partitions, {expected_runs} runs)")
    tree.peak_procs = 0
    cpu_before = tree.snapshot()
    machine_before = MachineCpu.now()
    started = time.time()
    launch()
    runs = wait_runs(instance, find, expected_runs, deadline, drain.name)
    drain.cpu = tree.since(cpu_before)
    drain.machine_cpu, drain.machine_busy = MachineCpu.now().since(machine_before)
    drain.peak_procs = tree.peak_procs
    drain.load = loadavg()
    drain.runs = len(runs)
    ends = []
    for run in runs:
        drain.statuses[run.status.value] = drain.statuses.get(run.status.value, 0) + 1
        record = instance.get_run_record_by_id(run.run_id)
        stats = instance.get_run_stats(run.run_id)
        if record and stats.start_time and stats.end_time:
            drain.queue_to_start.append(stats.start_time - record.create_timestamp.timestamp())
            drain.run_walls.append(stats.end_time - stats.start_time)
            ends.append(stats.end_time)
    drain.wall = (max(ends) if ends else time.time()) - started
    log(f"{drain.name}: {drain.runs} runs {drain.statuses} in {drain.wall:.1f} s")
    return runs


def check_materializations(
    instance: dg.DagsterInstance, runs: list[dg.DagsterRun], drain: Drain, verify: int
) -> None:
    """Every (asset, partition) once, with the required metadata; `verify` files re-hashed."""
    import hashlib

    seen: set[tuple[str, str]] = set()
    checked = 0
    for run in runs:
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
            event = entry.dagster_event
            assert event is not None
            mat = event.event_specific_data.materialization  # type: ignore[union-attr]
            key = (mat.asset_key.to_user_string(), str(mat.partition))
            if key in seen:
                drain.problems.append(f"two materializations of {key}")
            seen.add(key)
            md = mat.metadata
            missing = REQUIRED_METADATA - md.keys()
            if missing:
                drain.problems.append(f"{key}: no {sorted(missing)}")
                continue
            drain.rows += int(md["dagster/row_count"].value)
            if "duration_seconds" in md:
                drain.engine.append(float(md["duration_seconds"].value))
                drain.engine_by_dataset.setdefault(key[0], []).append(
                    float(md["duration_seconds"].value)
                )
            if checked < verify:
                path = Path(str(md["uri"].value))
                if hashlib.sha256(path.read_bytes()).hexdigest() != md["sha256"].value:
                    drain.problems.append(f"{key}: sha256 differs from {path}")
                checked += 1
    drain.materialized = len(seen)
    if drain.materialized != drain.partitions:
        drain.problems.append(f"{drain.materialized} materialized, {drain.partitions} expected")


def partition_view(url: str) -> tuple[float, str]:
    """Time the asset page's partition query for exports/events (what the UI asks for)."""
    started = time.perf_counter()
    try:
        data = graphql(url, PARTITION_VIEW, {"key": {"path": ["exports", "events"]}})
    except Exception as exc:
        return time.perf_counter() - started, f"error: {str(exc)[:200]}"
    wall = time.perf_counter() - started
    node = data["assetNodeOrError"]
    return wall, json.dumps(node.get("partitionStats"))


# --- report --------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    start: date,
    defs_t: dict[str, float],
    ticks: dict[str, float],
    drains: list[Drain],
    view: tuple[float, str] | None,
    startup: float,
    version: str,
) -> str:
    n = args.customers
    asset_partitions = n * args.months * len(DATASETS)
    lines = [
        f"\n{n:,} customers x {args.months} months (from {start:%Y-%m}) x {len(DATASETS)} "
        f"datasets = {asset_partitions:,} asset partitions; {os.cpu_count()} cores, "
        f"PostgreSQL {version}, dagster {dg.__version__}; load average now {loadavg()}",
        "",
        f"definitions load (fresh process, median of {args.rounds}): import dagster "
        f"{defs_t['import_dagster']:.2f} s + defs() {defs_t['defs']:.2f} s + repository "
        f"{defs_t['repository']:.2f} s; whole process {defs_t['process']:.2f} s; "
        f"`dg check defs` {defs_t['dg_check_defs']:.2f} s",
        f"customers_sensor tick: first (all {ticks['customers_added']:.0f} new) "
        f"{ticks['sensor_first'] * 1000:.0f} ms + adding them {ticks['add_partitions'] * 1000:.0f}"
        f" ms; steady state {ticks['sensor_steady'] * 1000:.0f} ms",
        f"monthly_exports_schedule tick: {ticks['schedule'] * 1000:.1f} ms",
        f"webserver + daemon up with the code location loaded: {startup:.1f} s",
        "",
        f"{'drain':<44} {'runs':>5} {'parts':>6} {'wall s':>8} {'CPU s':>8} {'mach CPU':>9} "
        f"{'engine s':>9} {'med eng ms':>10} {'ovh/part ms':>11}",
        "-" * 118,
    ]
    for d in drains:
        med = statistics.median(d.engine) if d.engine else float("nan")
        lines.append(
            f"{d.name:<44} {d.runs:>5} {d.partitions:>6} {d.wall:>8.1f} {d.cpu:>8.1f} "
            f"{d.machine_cpu:>6.0f}/{d.machine_busy:>2.0%} {d.engine_sum:>9.1f} {med * 1000:>10.1f}"
            + (
                f" {d.overhead_per_partition * 1000:>11.1f}"
                if d.runs == 1
                else f" {'n/a':>11}"  # runs overlap: wall minus summed engine time means nothing
            )
        )
    lines.append("")
    for d in drains:
        q = statistics.median(d.queue_to_start) if d.queue_to_start else float("nan")
        r = statistics.median(d.run_walls) if d.run_walls else float("nan")
        lines.append(
            f"{d.name}: statuses {d.statuses}; {d.materialized:,} materializations "
            f"(engine median ms by dataset: {d.engine_medians()}); "
            f"wall per partition {d.wall / max(d.partitions, 1) * 1000:.1f} ms, "
            f"CPU per partition {d.cpu / max(d.partitions, 1) * 1000:.1f} ms; "
            f"({d.rows:,} rows); run created->started median {q:.1f} s, run wall median "
            f"{r:.1f} s; in-run overhead per partition "
            f"{d.in_run_overhead_per_partition * 1000:.1f} ms; peak processes {d.peak_procs}; "
            f"load {d.load}"
            + (
                f"; PROBLEMS: {d.problems[:5]}"
                if d.problems
                else "; every partition has its "
                "own materialization with uri, sha256, dagster/row_count"
            )
        )
    if view:
        lines.append(
            f"UI partition query for exports/events (partitionStats + assetPartitionStatuses): "
            f"{view[0]:.2f} s -> {view[1]}"
        )
    by = {d.name.split(":")[0]: d for d in drains}
    month = by.get("month")
    lines += ["", "against the goals:"]
    if month:
        med = statistics.median(month.engine) if month.engine else float("nan")
        lines.append(
            f"  month for {n:,} customers drained in {month.wall:.0f} s "
            f"(goal <= 600 s at 1,000 customers): {'met' if month.wall <= 600 else 'NOT met'}"
        )
        lines.append(
            f"  Dagster overhead per partition {month.overhead_per_partition * 1000:.1f} ms vs "
            f"median engine time {med * 1000:.1f} ms: ratio "
            f"{month.overhead_per_partition / med:.2f} (goal <= 1.00): "
            f"{'met' if month.overhead_per_partition <= med else 'NOT met'}"
        )
        per_customer = month.wall / n
        lines.append(
            f"  extrapolated month at 10,000 customers (linear in customers): "
            f"{per_customer * 10_000 / 60:.0f} min in one run"
        )
    back = by.get("backfill")
    if back:
        med = statistics.median(back.engine) if back.engine else float("nan")
        lines.append(
            f"  backfill overhead per partition {back.overhead_per_partition * 1000:.1f} ms vs "
            f"median engine {med * 1000:.1f} ms"
        )
    assets = by.get("asset path")
    if assets and assets.runs:
        lines.append(
            f"  asset path: {assets.wall / assets.runs:.1f} s wall and "
            f"{assets.cpu / assets.runs:.1f} s CPU per customer-month run "
            f"(old baseline 16-33 s per customer-month through the UI)"
        )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--months", type=int, default=36)
    parser.add_argument("--backfill-customers", type=int, default=100)
    parser.add_argument("--backfill-months", type=int, default=12)
    parser.add_argument("--asset-sample", type=int, default=10, help="customer-months, asset path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="50 customers, 10x3 backfill, 3 assets"
    )
    parser.add_argument("--only", default="month,backfill,assets", help="drains to run")
    parser.add_argument("--deadline", type=float, default=1800, help="seconds per drain")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, files)")
    parser.add_argument(
        "--no-checks", action="store_true", help="month drain without the per-partition checks"
    )
    args = parser.parse_args()
    if args.quick:
        args.customers = min(args.customers, 50)
        args.backfill_customers, args.backfill_months = 10, 3
        args.asset_sample, args.rounds = 3, 1
    args.backfill_customers = min(args.backfill_customers, args.customers)
    args.backfill_months = min(args.backfill_months, 12)
    only = {w.strip() for w in args.only.split(",")}

    src_db = "scale_src" if args.customers == 1000 else f"scale_src_{args.customers}"
    dagster_db = "scale_dagster"
    source_dsn = dsn_for(args.server_dsn, src_db)
    seed(args.server_dsn, src_db, args.customers)
    fresh_database(args.server_dsn, dagster_db)
    with psycopg.connect(args.server_dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]) if row else "?"

    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    start = months_start(args.months, date.today())
    spec = (
        (REPO / "exports.yaml").read_text().replace('start: "2025-01"', f'start: "{start:%Y-%m}"')
    )
    assert f'start: "{start:%Y-%m}"' in spec
    (tmp / "exports.yaml").write_text(spec)
    workspace = tmp / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: export_pipeline.definitions\n"
        f"      location_name: {LOCATION}\n      working_directory: {json.dumps(str(REPO))}\n"
    )
    pg = psycopg.conninfo.conninfo_to_dict(args.server_dsn)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "DAGSTER_"))},
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": f"postgresql+psycopg2://{pg.get('user', 'postgres')}@"
        f"{pg.get('host', '127.0.0.1')}:{pg.get('port', 5432)}/{dagster_db}",
        "EXPORT_SOURCE_DSN": source_dsn,
        "EXPORT_STORAGE_DIR": str(tmp / "storage"),
        "EXPORT_SPEC": str(tmp / "exports.yaml"),
    }
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    log(f"temp folder {tmp}; months from {start:%Y-%m}; load {loadavg()}")

    log("definitions load ...")
    defs_t = time_defs(env, args.rounds)
    drains: list[Drain] = []
    view = None
    with dg.DagsterInstance.from_config(str(home)) as instance:
        log("sensor and schedule ticks ...")
        ticks = time_ticks(instance, source_dsn, args.rounds)
        customers = instance.get_dynamic_partitions("customers")
        assert len(customers) == args.customers, len(customers)

        port = free_port()
        url = f"http://127.0.0.1:{port}/graphql"
        web_args = [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1"]
        web_args += ["-p", str(port)]
        daemon_args = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
        started = time.monotonic()
        with ExitStack() as stack:
            web_log = stack.enter_context(service("webserver", web_args, env, tmp))
            daemon_log = stack.enter_context(service("daemon", daemon_args, env, tmp))
            try:
                wait_for("the code location", 300, lambda: location_loaded(url))
                startup = time.monotonic() - started
                groups = [int(line) for line in _service_pids(tmp)]
                tree = TreeCpu(groups).start()
                time.sleep(5)  # let the daemon's first ticks pass
                repo_selector = {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": "__repository__",
                }

                if "month" in only:
                    drain = Drain(
                        f"month: {DRAIN_MONTH[:7]}, {args.customers} customers, 1 run"
                        + (", no checks" if args.no_checks else ", with checks"),
                        args.customers * len(DATASETS),
                    )
                    tags = [
                        {"key": "dagster/partition", "value": DRAIN_MONTH},
                        {"key": "dagster/partition_set", "value": f"{JOB}_partition_set"},
                        {"key": "export/trigger", "value": "schedule"},
                        {"key": "bench", "value": "month"},
                    ]
                    month_config = {"run_checks": not args.no_checks}
                    params = {
                        "selector": {**repo_selector, "jobName": JOB},
                        "runConfigData": {"ops": {"export_month": {"config": month_config}}},
                        "executionMetadata": {"tags": tags},
                    }

                    def launch_month() -> None:
                        out = graphql(url, LAUNCH_RUN, {"params": params})["launchRun"]
                        assert out["__typename"] == "LaunchRunSuccess", out

                    runs = measure(
                        instance,
                        tree,
                        drain,
                        launch_month,
                        lambda: run_ids_for(instance, {"bench": "month"}),
                        1,
                        args.deadline,
                    )
                    check_materializations(instance, runs, drain, verify=30)
                    drains.append(drain)
                    view = partition_view(url)

                if "backfill" in only:
                    months = [f"2025-{m:02d}-01" for m in range(1, args.backfill_months + 1)]
                    first = customers[: args.backfill_customers]
                    drain = Drain(
                        f"backfill: {len(months)} months x {len(first)} customers",
                        len(months) * len(first) * len(DATASETS),
                    )
                    backfill_id: list[str] = []
                    bparams = {
                        "selector": {
                            "partitionSetName": f"{JOB}_partition_set",
                            "repositorySelector": repo_selector,
                        },
                        "partitionNames": months,
                        "runConfigData": {
                            "ops": {"export_month": {"config": {"customers": first}}}
                        },
                        "title": "scale benchmark",
                    }

                    def launch_backfill() -> None:
                        out = graphql(url, LAUNCH_BACKFILL, {"params": bparams})
                        out = out["launchPartitionBackfill"]
                        assert out["__typename"] == "LaunchBackfillSuccess", out
                        backfill_id.append(out["backfillId"])

                    runs = measure(
                        instance,
                        tree,
                        drain,
                        launch_backfill,
                        lambda: run_ids_for(instance, {"dagster/backfill": backfill_id[0]}),
                        len(months),
                        args.deadline,
                    )

                    def backfill_final() -> str | None:
                        out = graphql(url, BACKFILL_STATUS, {"id": backfill_id[0]})
                        status = str(out["partitionBackfillOrError"].get("status"))
                        return status if status in BACKFILL_FINAL else None

                    waited = time.time()
                    log(
                        f"backfill status {wait_for('the backfill status', 120, backfill_final)}"
                        f" {time.time() - waited:.1f} s after its last run ended"
                    )
                    check_materializations(instance, runs, drain, verify=30)
                    drains.append(drain)

                if "assets" in only and args.asset_sample:
                    keys = [f"{c}|2025-07-01" for c in customers[: args.asset_sample]]
                    drain = Drain(
                        f"asset path: {len(keys)} customer-months, a run each",
                        len(keys) * len(DATASETS),
                    )
                    asset_id: list[str] = []
                    aparams = {
                        "assetSelection": [{"path": ["exports", d]} for d in DATASETS],
                        "partitionNames": keys,
                        "title": "scale benchmark, asset path",
                    }

                    def launch_assets() -> None:
                        out = graphql(url, LAUNCH_BACKFILL, {"params": aparams})
                        out = out["launchPartitionBackfill"]
                        assert out["__typename"] == "LaunchBackfillSuccess", out
                        asset_id.append(out["backfillId"])

                    runs = measure(
                        instance,
                        tree,
                        drain,
                        launch_assets,
                        lambda: run_ids_for(instance, {"dagster/backfill": asset_id[0]}),
                        len(keys),
                        args.deadline,
                    )
                    check_materializations(instance, runs, drain, verify=30)
                    drains.append(drain)
                tree.stop()
            except BaseException:
                log(f"webserver log:\n{tail(web_log)}\ndaemon log:\n{tail(daemon_log)}")
                raise
    sys.stdout.write(report(args, start, defs_t, ticks, drains, view, startup, version) + "\n")
    if args.keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def _service_pids(tmp: Path) -> list[str]:
    """Process-group ids of the webserver and daemon: their sessions, found by log file."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if ("dagster-webserver" in cmd or "dagster-daemon" in cmd) and str(tmp) in cmd:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    pids.append(str(proc.pid))
            except ProcessLookupError:
                continue
    return pids


if __name__ == "__main__":
    main()
