"""The scale benchmark: Dagster draining months of exports, as users launch them, on this machine.

    python bench/scale.py [--customers 1000] [--months 36] [--quick]
                          [--s3-latency-ms 25] [--pg-latency-ms 2] [--server-dsn DSN]

A script with a printed report, not a timed test. It
1. seeds `scale_src` (or `scale_src_<n>`) with the demo seeder at the demo's density (5,000
   events a year per customer), unless already seeded so;
2. writes a spec whose months start `--months` months before last month (the data covers
   2025; other months export 0 rows) and a fresh Postgres-backed instance (deploy/dagster.yaml,
   database `scale_dagster`, dropped and recreated);
3. starts moto's S3 server behind a SigV4-checking proxy that counts every request by
   operation and holds each `--s3-latency-ms` first, and, with `--pg-latency-ms`, a TCP proxy
   in front of PostgreSQL that holds every client message that long (a round trip to a server
   on another machine); the code location talks to both;
4. times, in fresh processes, loading the definitions (`defs()`) and `dg check defs`, a
   `customers_sensor` tick (every customer new, then steady) and a `monthly_exports_schedule`
   tick;
5. starts dagster-webserver + dagster-daemon on the instance and drains, through GraphQL:
   - `month`: one month for every customer as a UI backfill of the `exports` group
     (`launchPartitionBackfill`: the assets' backfill policy makes it a few ranged runs);
   - `schedule`: the next month as the schedule asks for it (its tick's ranged run requests,
     each launched with the tick's tags through `launchRun`);
   - `small`: 200 customers x 1 month as a UI backfill (the daemon's fixed latency spread);
   - `backfill`: 12 months x 100 customers as a UI backfill;
   each with wall time (launch -> backfill completed, or last run ended), runs, CPU of every
   process the webserver and daemon started, S3 requests per exported partition (by
   operation), new source sessions per exported partition (`pg_stat_database.sessions`), the
   engine's `duration_seconds`, and checks that every asset partition has exactly one
   materialization with `uri`, `sha256`, `dagster/row_count` (30 files re-hashed from S3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import dagster as dg  # noqa: E402
from scale_cpu import MachineCpu, TreeCpu, loadavg  # noqa: E402

from export_pipeline_tests.dagster_processes import (  # noqa: E402
    free_port,
    graphql,
    location_loaded,
    service,
    tail,
    wait_for,
)
from export_pipeline_tests.pg_proxy import pg_proxy  # noqa: E402
from export_pipeline_tests.request_counts import S3Requests, counting_s3_endpoint  # noqa: E402
from export_pipeline_tests.services import s3_server  # noqa: E402

BIN = Path(sys.executable).parent
EVENTS_PER_CUSTOMER = 5_000  # the demo's density: 50,000 events a year for 10 customers
DATASETS = ["events", "orders", "invoices"]
GROUP_ASSETS = [["exports", d] for d in DATASETS] + [["exports_manifest"]]
LOCATION = "export_pipeline"
JOB = "exports_job"
REQUIRED_METADATA = {"uri", "sha256", "dagster/row_count"}
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
BACKFILL_FINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
AWS_KEY, AWS_SECRET = "testing-key-id", "testing-secret-key"
BUCKET = "scale-exports"

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}
"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
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


@dataclass
class Drain:
    name: str
    partitions: int  # export asset partitions (customer x month x dataset)
    customer_months: int
    runs: int = 0
    wall: float = 0.0  # launch request -> the last run ended (and, for a backfill, completed)
    run_walls: list[float] = field(default_factory=list)  # run started -> run ended
    cpu: float = 0.0  # CPU of the webserver/daemon process groups during the drain
    machine_busy: float = 0.0
    materialized: int = 0
    engine: list[float] = field(default_factory=list)  # duration_seconds of each export
    rows: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    load: str = ""

    @property
    def requests_per_partition(self) -> float:
        return sum(self.requests.values()) / max(self.partitions, 1)

    @property
    def in_run_overhead_per_partition(self) -> float:
        """Inside the runs (start -> end), minus the engine's own time, per partition."""
        return (sum(self.run_walls) - sum(self.engine)) / max(self.partitions, 1)


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
    subprocess.run(
        [
            *(sys.executable, "-m", "export_pipeline.demo.seed", "--dsn"),
            *(dsn_for(server_dsn, db), "--customers", str(customers), "--rows", str(rows)),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )


def fresh_database(server_dsn: str, db: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))


def source_sessions(server_dsn: str, db: str) -> int:
    """New backends started for `db` so far (PostgreSQL 14+); the probe connects to the
    server's own database, so it is not one of them."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (db,)
        ).fetchone()
    return int(row[0]) if row else 0


def log(message: str) -> None:
    sys.stderr.write(f"[{datetime.now():%H:%M:%S}] {message}\n")
    sys.stderr.flush()


DEFS_PROBE = r"""
import json, time
t0 = time.perf_counter()
import dagster
t1 = time.perf_counter()
from export_pipeline.definitions import defs
d = defs()
t2 = time.perf_counter()
print(json.dumps({"import_dagster": t1 - t0, "defs": t2 - t1}))
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


def time_ticks(
    instance: dg.DagsterInstance, rounds: int, month: date
) -> tuple[dict[str, float], list[dg.RunRequest]]:
    """The customers sensor (first tick: every customer new) and the schedule's tick for
    `month` (its run requests are returned, to launch them as the daemon would)."""
    from export_pipeline.definitions import defs

    repo = defs().get_repository_def()
    sensor = repo.get_sensor_def("customers_sensor")
    resources = {"source": repo.get_top_level_resources()["source"]}

    def sensor_tick() -> tuple[float, Any]:
        started = time.perf_counter()
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            data = sensor.evaluate_tick(context)
        return time.perf_counter() - started, data

    figures: dict[str, float] = {}
    figures["sensor_first"], first = sensor_tick()
    [request] = first.dynamic_partitions_requests or []
    started = time.perf_counter()
    instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    figures["add_partitions"] = time.perf_counter() - started
    figures["customers_added"] = len(list(request.partition_keys))
    figures["sensor_steady"] = statistics.median(sensor_tick()[0] for _ in range(rounds))

    schedule = repo.get_schedule_def("monthly_exports_schedule")
    walls, requests = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(
                month.year + month.month // 12, month.month % 12 + 1, 1, 2, tzinfo=UTC
            ),
            repository_def=repo,
        )
        data = schedule.evaluate_tick(context)
        walls.append(time.perf_counter() - started)
        requests = list(data.run_requests or [])
    figures["schedule"] = statistics.median(walls)
    figures["schedule_runs"] = len(requests)
    return figures, requests


def wait_runs(
    instance: dg.DagsterInstance,
    tags: dict[str, str],
    expected: int | None,
    deadline: float,
    what: str,
) -> list[dg.DagsterRun]:
    def done() -> list[dg.DagsterRun] | None:
        runs = list(instance.get_runs(filters=dg.RunsFilter(tags=tags)))
        if not runs or (expected is not None and len(runs) < expected):
            return None
        return runs if all(r.status.value in FINISHED for r in runs) else None

    return wait_for(what, deadline, done)


def drain(
    instance: dg.DagsterInstance,
    url: str,
    tree: TreeCpu,
    d: Drain,
    launch: Any,
    tags: dict[str, str],
    expected_runs: int | None,
    args: argparse.Namespace,
    counter: S3Requests,
    s3: Any,
    backfill: list[str],
) -> None:
    log(f"{d.name}: launching ({d.partitions} asset partitions)")
    cpu_before, machine_before = tree.snapshot(), MachineCpu.now()
    requests_before = counter.counts()
    sessions_before = source_sessions(args.server_dsn, args.source_db)
    started = time.time()
    launch()
    if backfill:  # the user waits for the backfill to say it is done (all its runs launched)

        def final() -> str | None:
            out = graphql(url, BACKFILL_STATUS, {"id": backfill[0]})
            status = str(out["partitionBackfillOrError"].get("status"))
            return status if status in BACKFILL_FINAL else None

        status = wait_for("the backfill's status", args.deadline, final)
        d.wall = time.time() - started
        d.statuses[f"backfill {status}"] = 1
    runs = wait_runs(instance, tags, expected_runs, args.deadline, d.name)
    ends = []
    for run in runs:
        d.statuses[run.status.value] = d.statuses.get(run.status.value, 0) + 1
        stats = instance.get_run_stats(run.run_id)
        if stats.start_time and stats.end_time:
            d.run_walls.append(stats.end_time - stats.start_time)
            ends.append(stats.end_time)
    if not backfill:
        d.wall = (max(ends) if ends else time.time()) - started
    d.runs = len(runs)
    d.cpu = tree.since(cpu_before)
    d.machine_busy = MachineCpu.now().since(machine_before)[1]
    d.load = loadavg()
    requests = counter.counts()
    requests.subtract(requests_before)
    d.requests = +requests
    # (the probes connect to the server's own database, not the source's; the customers
    # sensor's ticks during the drain are counted: they are the source's too)
    d.sessions = source_sessions(args.server_dsn, args.source_db) - sessions_before
    check_materializations(instance, runs, d, s3, verify=30)
    log(f"{d.name}: {d.runs} runs {d.statuses} in {d.wall:.1f} s")


def check_materializations(
    instance: dg.DagsterInstance, runs: list[dg.DagsterRun], d: Drain, s3: Any, verify: int
) -> None:
    """Every export partition once, with the required metadata; `verify` files re-hashed."""
    seen: set[tuple[str, str]] = set()
    checked = 0
    for run in runs:
        for entry in instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ):
            mat = entry.asset_materialization
            if mat is None or mat.asset_key.path[0] != "exports":
                continue
            key = (mat.asset_key.to_user_string(), str(mat.partition))
            if key in seen:
                d.problems.append(f"two materializations of {key}")
            seen.add(key)
            md = mat.metadata
            missing = REQUIRED_METADATA - md.keys()
            if missing:
                d.problems.append(f"{key}: no {sorted(missing)}")
                continue
            d.rows += int(md["dagster/row_count"].value)
            d.engine.append(float(md["duration_seconds"].value))
            if checked < verify:
                bucket, _, object_key = str(md["uri"].value).removeprefix("s3://").partition("/")
                body = s3.get_object(Bucket=bucket, Key=object_key)["Body"].read()
                if hashlib.sha256(body).hexdigest() != md["sha256"].value:
                    d.problems.append(f"{key}: sha256 differs from the object")
                checked += 1
    d.materialized = len(seen)
    if d.materialized != d.partitions:
        d.problems.append(f"{d.materialized} materialized, {d.partitions} expected")


def report(
    args: argparse.Namespace,
    start: date,
    defs_t: dict[str, float],
    ticks: dict[str, float],
    drains: list[Drain],
    startup: float,
    version: str,
) -> str:
    lines = [
        f"\n{args.customers:,} customers x {args.months} months (from {start:%Y-%m}) x "
        f"{len(DATASETS)} datasets; {os.cpu_count()} cores, PostgreSQL {version}, dagster "
        f"{dg.__version__}; S3 latency {args.s3_latency_ms} ms a request, PostgreSQL latency "
        f"{args.pg_latency_ms} ms a round trip; load average now {loadavg()}",
        "",
        f"definitions load (fresh process, median of {args.rounds}): import dagster "
        f"{defs_t['import_dagster']:.2f} s + defs() {defs_t['defs']:.2f} s; process "
        f"{defs_t['process']:.2f} s; `dg check defs` {defs_t['dg_check_defs']:.2f} s",
        f"customers_sensor tick: first (all {ticks['customers_added']:.0f} new) "
        f"{ticks['sensor_first'] * 1000:.0f} ms + adding them {ticks['add_partitions'] * 1000:.0f}"
        f" ms; steady state {ticks['sensor_steady'] * 1000:.0f} ms",
        f"monthly_exports_schedule tick: {ticks['schedule'] * 1000:.1f} ms, "
        f"{ticks['schedule_runs']:.0f} ranged run requests",
        f"webserver + daemon up with the code location loaded: {startup:.1f} s",
        "",
        f"{'drain':<40} {'runs':>4} {'parts':>6} {'wall s':>7} {'s/cust-month':>12} "
        f"{'CPU s':>7} {'req/part':>8} {'sess/part':>9} {'eng med ms':>10} {'ovh/part ms':>11}",
        "-" * 124,
    ]
    for d in drains:
        med = statistics.median(d.engine) if d.engine else float("nan")
        lines.append(
            f"{d.name:<40} {d.runs:>4} {d.partitions:>6} {d.wall:>7.1f} "
            f"{d.wall / max(d.customer_months, 1):>12.3f} {d.cpu:>7.1f} "
            f"{d.requests_per_partition:>8.2f} {d.sessions / max(d.partitions, 1):>9.3f} "
            f"{med * 1000:>10.1f} {d.in_run_overhead_per_partition * 1000:>11.1f}"
        )
    lines.append("")
    for d in drains:
        per_op = ", ".join(
            f"{op} {n / max(d.partitions, 1):.3f}" for op, n in d.requests.most_common()
        )
        lines.append(
            f"{d.name}: {d.statuses}; {d.materialized:,} materializations, {d.rows:,} rows; "
            f"engine sum {sum(d.engine):.1f} s; run walls {[round(w, 1) for w in d.run_walls]}; "
            f"S3 requests per partition: {per_op}; {d.sessions} new source sessions; machine "
            f"busy {d.machine_busy:.0%}, load {d.load}"
            + (
                f"; PROBLEMS: {d.problems[:5]}"
                if d.problems
                else "; every partition has its "
                "own materialization with uri, sha256, dagster/row_count"
            )
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--months", type=int, default=36)
    parser.add_argument("--small-customers", type=int, default=200)
    parser.add_argument("--backfill-customers", type=int, default=100)
    parser.add_argument("--backfill-months", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3-latency-ms", type=float, default=0.0)
    parser.add_argument("--pg-latency-ms", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="50 customers; 20; 10 x 3")
    parser.add_argument("--only", default="month,schedule,small,backfill", help="drains to run")
    parser.add_argument("--deadline", type=float, default=1800, help="seconds per drain")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args()
    if args.quick:
        args.customers = min(args.customers, 50)
        args.small_customers, args.backfill_customers, args.backfill_months = 20, 10, 3
        args.rounds = 1
    args.small_customers = min(args.small_customers, args.customers)
    args.backfill_customers = min(args.backfill_customers, args.customers)
    args.backfill_months = min(args.backfill_months, 12)
    only = {w.strip() for w in args.only.split(",")}

    args.source_db = "scale_src" if args.customers == 1000 else f"scale_src_{args.customers}"
    dagster_db = "scale_dagster"
    seed(args.server_dsn, args.source_db, args.customers)
    fresh_database(args.server_dsn, dagster_db)
    with psycopg.connect(args.server_dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]) if row else "?"

    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    start = months_start(args.months, date.today())
    if start > date(2025, 1, 1):
        sys.exit(
            f"scale: --months {args.months} starts the partitions at {start:%Y-%m}; the drains "
            "export months of 2025 (the data's year): give at least "
            f"{args.months + (start.year - 2025) * 12 + start.month - 1}"
        )
    spec = (
        (REPO / "exports.yaml").read_text().replace('start: "2025-01"', f'start: "{start:%Y-%m}"')
    )
    (tmp / "exports.yaml").write_text(spec)
    workspace = tmp / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: export_pipeline.definitions\n"
        f"      location_name: {LOCATION}\n      working_directory: {json.dumps(str(REPO))}\n"
    )
    pg = psycopg.conninfo.conninfo_to_dict(args.server_dsn)
    with ExitStack() as stack:
        moto = stack.enter_context(s3_server())
        endpoint, counter = stack.enter_context(
            counting_s3_endpoint(moto, args.s3_latency_ms / 1000)
        )
        source_dsn = dsn_for(args.server_dsn, args.source_db)
        if args.pg_latency_ms:
            proxy = stack.enter_context(
                pg_proxy(source_dsn, latency_seconds=args.pg_latency_ms / 1000)
            )
            source_dsn = proxy.dsn()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "DAGSTER_"))},
            "PYTHONPATH": str(REPO),
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": f"postgresql+psycopg2://{pg.get('user', 'postgres')}@"
            f"{pg.get('host', '127.0.0.1')}:{pg.get('port', 5432)}/{dagster_db}",
            "EXPORT_SOURCE_DSN": source_dsn,
            "EXPORT_S3_BUCKET": BUCKET,
            "EXPORT_S3_ENDPOINT_URL": endpoint,
            "EXPORT_SPEC": str(tmp / "exports.yaml"),
            "AWS_ACCESS_KEY_ID": AWS_KEY,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            # As deploy/ sets it: a ranged run's materializations are written in batches.
            "DAGSTER_EVENT_BATCH_SIZE": os.environ.get("DAGSTER_EVENT_BATCH_SIZE", "100"),
        }
        os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
        s3 = boto3.client("s3", endpoint_url=moto)
        s3.create_bucket(Bucket=BUCKET)
        log(f"temp folder {tmp}; months from {start:%Y-%m}; load {loadavg()}")
        defs_t = time_defs(env, args.rounds)
        drains: list[Drain] = []
        with dg.DagsterInstance.from_config(str(home)) as instance:
            ticks, schedule_requests = time_ticks(instance, args.rounds, date(2025, 7, 1))
            customers = instance.get_dynamic_partitions("customers")
            assert len(customers) == args.customers, len(customers)
            port = free_port()
            url = f"http://127.0.0.1:{port}/graphql"
            web_args = [str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1"]
            web_args += ["-p", str(port)]
            daemon_args = [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)]
            started = time.monotonic()
            web_log = stack.enter_context(service("webserver", web_args, env, tmp))
            daemon_log = stack.enter_context(service("daemon", daemon_args, env, tmp))
            try:
                wait_for("the code location", 300, lambda: location_loaded(url))
                startup = time.monotonic() - started
                tree = TreeCpu(_service_groups(tmp)).start()
                repo = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}

                def backfill_drain(name: str, keys: list[str], months: int) -> None:
                    d = Drain(name, len(keys) * len(DATASETS), len(keys))
                    ids: list[str] = []
                    params = {
                        "assetSelection": [{"path": p} for p in GROUP_ASSETS],
                        "partitionNames": keys,
                        "title": f"scale benchmark: {name}",
                        "tags": [{"key": "bench", "value": name}],
                    }

                    def launch() -> None:
                        out = graphql(url, LAUNCH_BACKFILL, {"params": params})
                        out = out["launchPartitionBackfill"]
                        assert out["__typename"] == "LaunchBackfillSuccess", out
                        ids.append(out["backfillId"])

                    drain(
                        instance,
                        url,
                        tree,
                        d,
                        launch,
                        {"bench": name},
                        None,
                        args,
                        counter,
                        s3,
                        ids,
                    )
                    drains.append(d)

                if "month" in only:
                    backfill_drain(
                        f"month: 2025-06, {args.customers} customers",
                        [f"{c}|2025-06-01" for c in customers],
                        1,
                    )
                if "schedule" in only:
                    name = f"schedule: 2025-07, {args.customers} customers"
                    d = Drain(name, args.customers * len(DATASETS), args.customers)

                    def launch_schedule() -> None:
                        for request in schedule_requests:
                            tags = {**request.tags, "bench": name}
                            params = {
                                "selector": {**repo, "jobName": JOB},
                                "executionMetadata": {
                                    "tags": [{"key": k, "value": v} for k, v in tags.items()]
                                },
                            }
                            out = graphql(url, LAUNCH_RUN, {"params": params})["launchRun"]
                            assert out["__typename"] == "LaunchRunSuccess", out

                    drain(
                        instance,
                        url,
                        tree,
                        d,
                        launch_schedule,
                        {"bench": name},
                        len(schedule_requests),
                        args,
                        counter,
                        s3,
                        [],
                    )
                    drains.append(d)
                if "small" in only:
                    backfill_drain(
                        f"small: 2025-05, {args.small_customers} customers",
                        [f"{c}|2025-05-01" for c in customers[: args.small_customers]],
                        1,
                    )
                if "backfill" in only:
                    months = [f"2025-{m:02d}-01" for m in range(1, args.backfill_months + 1)]
                    first = customers[: args.backfill_customers]
                    backfill_drain(
                        f"backfill: {len(months)} months x {len(first)} customers",
                        [f"{c}|{m}" for m in months for c in first],
                        len(months),
                    )
                tree.stop()
            except BaseException:
                log(f"webserver log:\n{tail(web_log)}\ndaemon log:\n{tail(daemon_log)}")
                raise
    sys.stdout.write(report(args, start, defs_t, ticks, drains, startup, version) + "\n")
    if args.keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def _service_groups(tmp: Path) -> list[int]:
    """Process-group ids of the webserver and daemon (each leads its own session)."""
    import psutil

    groups = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if ("dagster-webserver" in cmd or "dagster-daemon" in cmd) and str(tmp) in cmd:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    groups.append(proc.pid)
            except ProcessLookupError:
                continue
    return groups


if __name__ == "__main__":
    main()
