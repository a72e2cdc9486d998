"""Does an OLTP workload on the same PostgreSQL keep its service while exports run? (issue 8)

    .venv/bin/python bench/load_held.py                       # about 4 minutes once seeded
    .venv/bin/python bench/load_held.py --exports 4,2 --seconds 40

1. Seeds (once, kept for reruns unless `--drop`) a pgbench database `load_held_pgbench`
   (scale 10) and an `events` table of 3M rows in `load_held_events` (bench/events.sql, 50
   customers).
2. Capacity: pgbench unthrottled (TPC-B, 4 clients) for `--capacity-seconds`.
3. For each entry of `--exports` (4 = the `export_source_db` pool limit; `N@M`: each export
   reads at most M MiB/s): a baseline, pgbench at half that capacity (`--rate`) for
   `--seconds`, alone; then the same throttled pgbench while N partition exports (one
   customer's rows each, the engine's `ExportStream` through `case.write_query`, into a local
   temporary folder) run back to back in N processes, each reading on one source session of
   its own (as a run does since one-path: connections opened once, a snapshot per export).
   Each loaded run is judged against the baseline just before it, so a shared machine's
   changing noise hits both sides alike.

Latency is what a client at a fixed arrival rate sees: pgbench's per-transaction time plus its
schedule lag (`--log`), so a server that falls behind shows up in p95 even when each
transaction is quick. Goal: throughput >= 95% of the baseline, p95 <= 2x, no failures.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO = Path(__file__).resolve().parents[1]
DB_PREFIX = "load_held"
GOAL_TPS_KEPT = 0.95
GOAL_P95_RATIO = 2.0


@dataclass(frozen=True)
class PgbenchRun:
    label: str
    tps: float
    p50_ms: float
    p95_ms: float
    failed: int
    transactions: int
    exports_done: int = 0
    export_mib: float = 0.0  # bytes of the finished exports, in MiB


def with_db(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def ensure_database(server_dsn: str, name: str) -> bool:
    """Create `name` if missing; True if it was created."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return not exists


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if found is None or found[0] is None:
            return 0
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        return int(row.fetchone()[0])  # type: ignore[index]


def _libpq_env(dsn: str) -> dict[str, str]:
    params = conninfo_to_dict(dsn)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    env = {**os.environ, "PGDATABASE": str(params["dbname"])}
    env.update({var: str(params[key]) for key, var in names.items() if key in params})
    return env


def seed(server_dsn: str, prefix: str, scale: int, rows: int) -> tuple[str, str]:
    pgbench_db, events_db = f"{prefix}_pgbench", f"{prefix}_events"
    pgbench_dsn, events_dsn = with_db(server_dsn, pgbench_db), with_db(server_dsn, events_db)
    ensure_database(server_dsn, pgbench_db)
    if _count(pgbench_dsn, "pgbench_branches") != scale:
        _log(f"seeding pgbench scale {scale}")
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(scale)],
            env=_libpq_env(pgbench_dsn),
            check=True,
            capture_output=True,
        )
    ensure_database(server_dsn, events_db)
    if _count(events_dsn, "events") != rows:
        _log(f"seeding events with {rows:,} rows")
        subprocess.run(
            ["psql", "-q", "-v", f"rows={rows}", "-f", str(REPO / "bench" / "events.sql")],
            env=_libpq_env(events_dsn),
            check=True,
            capture_output=True,
        )
    return pgbench_dsn, events_dsn


def pgbench(
    dsn: str, label: str, seconds: int, clients: int, rate: float | None, workdir: Path
) -> PgbenchRun:
    logdir = Path(tempfile.mkdtemp(prefix="pgbench-log-", dir=workdir))
    cmd = [
        "pgbench",
        "-n",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(seconds),
        "-l",
        "--log-prefix",
        str(logdir / "tx"),
    ]
    if rate is not None:
        cmd += ["-R", f"{rate:.0f}"]
    proc = subprocess.run(cmd, env=_libpq_env(dsn), capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 2):  # 2: some transactions failed; reported below
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {proc.stderr[-2000:]}")
    latencies: list[float] = []
    for path in glob.glob(str(logdir / "tx*")):
        for line in Path(path).read_text().splitlines():
            fields = line.split()
            if len(fields) < 6 or fields[2] in ("failed", "skipped"):
                continue
            lag = int(fields[6]) if rate is not None and len(fields) > 6 else 0
            latencies.append((int(fields[2]) + lag) / 1000)
    shutil.rmtree(logdir, ignore_errors=True)
    tps = float(_grab(r"tps = ([\d.]+)", proc.stdout))
    failed_text = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    done = int(_grab(r"number of transactions actually processed: (\d+)", proc.stdout))
    latencies.sort()
    return PgbenchRun(
        label,
        tps,
        statistics.median(latencies) if latencies else 0.0,
        latencies[int(0.95 * (len(latencies) - 1))] if latencies else 0.0,
        int(failed_text.group(1)) if failed_text else 0,
        done,
    )


def _grab(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"pgbench output has no {pattern!r}:\n{text[-2000:]}")
    return found.group(1)


def start_exports(
    events_dsn: str, count: int, fmt: str, limit_mib: float, workdir: Path
) -> list[subprocess.Popen]:
    """`count` processes, each exporting one customer's rows again and again until stopped,
    each reading at most `limit_mib` MiB/s (0: unlimited)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")])}
    procs = []
    for n in range(count):
        out = workdir / f"export-{n}"
        out.mkdir(exist_ok=True)
        args = ["--worker", str(n + 1), "--dsn", events_dsn, "--format", fmt, "--out", str(out)]
        args += ["--limit-mib", str(limit_mib)]
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True
            )
        )
    return procs


def stop_exports(procs: list[subprocess.Popen]) -> tuple[int, float]:
    """Stop the workers (SIGTERM, as a cancelled run); exports finished and their MiB."""
    finished = []
    for proc in procs:
        proc.terminate()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        finished += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        # 0: stopped by its handler; -SIGTERM: stopped before it was installed (importing)
        if proc.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(f"an export worker failed (exit code {proc.returncode})")
    return len(finished), sum(f["bytes"] for f in finished) / 1024 / 1024


def throttled_store(out: str, limit_mib: float) -> Any:
    """A local store whose writers accept at most `limit_mib` MiB/s. The engine writes each
    COPY chunk before reading the next, so this paces the read from PostgreSQL: a rate limit
    on the COPY by back-pressure (what a `max_read_bytes_per_second` setting would do)."""
    from export_pipeline.storage.local import LocalObjectStore
    from export_pipeline.storage.writer import ObjectHeaders, ObjectWriter

    class Paced(ObjectWriter):
        def __init__(self, inner: ObjectWriter) -> None:
            super().__init__(inner.key)
            self._inner = inner
            self._started = time.monotonic()

        def _write(self, data: bytes | bytearray | memoryview) -> None:
            self._inner.write(data)
            ahead = self.tell() / (limit_mib * 1024 * 1024) - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)  # pacing, not synchronisation

        def _commit(self) -> str:
            return self._inner.commit().uri

        def _abort(self) -> None:
            self._inner.abort()

    class PacedStore(LocalObjectStore):
        def open_writer(self, key: str, headers: ObjectHeaders) -> ObjectWriter:
            writer = super().open_writer(key, headers)
            return Paced(writer) if limit_mib > 0 else writer

    return PacedStore(out, prefix="")


def worker(customer: int, dsn: str, fmt: str, out: str, limit_mib: float) -> None:
    """Export customer `customer`'s rows repeatedly; one JSON line per finished export."""
    from case import write_query

    from export_pipeline.extract.connection import SourceConfig
    from export_pipeline.extract.session import SourceSession
    from export_pipeline.spec import Compression, Format

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    store = throttled_store(out, limit_mib)
    query = sql.Composed([sql.SQL("SELECT * FROM events WHERE customer_id = %(customer)s")])
    compression = Compression.ZSTD if fmt == "parquet" else Compression.NONE
    source = SourceConfig(dsn, statement_timeout_seconds=0)
    # One session for all of the worker's exports, as a run reads its partitions.
    with SourceSession(source) as session:
        while True:
            started = time.perf_counter()
            stored, rows = write_query(
                source,
                store,
                f"c{customer}.{fmt}",
                query,
                {"customer": customer},
                Format(fmt),
                compression,
                name="load_held",
                session=session,
            )
            line = {
                "rows": rows,
                "bytes": stored.size_bytes,
                "seconds": round(time.perf_counter() - started, 2),
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


def _log(message: str) -> None:
    sys.stderr.write(f"[load_held {time.strftime('%H:%M:%S')}] {message}\n")


def report(capacity: PgbenchRun, pairs: list[tuple[PgbenchRun, PgbenchRun]], seconds: int) -> str:
    """One row per loaded run, judged against the baseline measured just before it."""
    lines = [
        f"capacity (unthrottled): {capacity.tps:.0f} tps; target rate {capacity.tps / 2:.0f} tps",
        "",
        "| run | baseline tps / p95 ms | tps | kept | p50 ms | p95 ms | p95 vs baseline "
        "| failed | exports done | export MiB/s | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for baseline, run in pairs:
        kept = run.tps / baseline.tps if baseline.tps else 0.0
        ratio = run.p95_ms / baseline.p95_ms if baseline.p95_ms else 0.0
        met = kept >= GOAL_TPS_KEPT and ratio <= GOAL_P95_RATIO and run.failed == 0
        lines.append(
            f"| {run.label} | {baseline.tps:.0f} / {baseline.p95_ms:.1f} | {run.tps:.0f} | "
            f"{kept:.1%} | {run.p50_ms:.1f} | {run.p95_ms:.1f} | {ratio:.2f}x | "
            f"{run.failed + baseline.failed} | {run.exports_done} | "
            f"{run.export_mib / seconds:.1f} | {'met' if met else 'MISSED'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--capacity-seconds", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=25)
    parser.add_argument(
        "--exports",
        default="4,2,4@4,4@2",
        help="loaded runs: export processes each, optionally @MiB/s read limit per export",
    )
    parser.add_argument("--format", default="csv", choices=["csv", "jsonl", "parquet"])
    parser.add_argument(
        "--db-prefix", default=DB_PREFIX, help="databases <prefix>_pgbench, <prefix>_events"
    )
    parser.add_argument("--drop", action="store_true", help="drop both databases afterwards")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--limit-mib", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.dsn, args.format, args.out, args.limit_mib)
        return
    pgbench_dsn, events_dsn = seed(args.dsn, args.db_prefix, args.scale, args.rows)
    workdir = Path(tempfile.mkdtemp(prefix="load-held-"))
    try:
        _log("measuring capacity")
        capacity = pgbench(
            pgbench_dsn, "capacity", args.capacity_seconds, args.clients, None, workdir
        )
        rate = capacity.tps / 2
        _log(f"capacity {capacity.tps:.0f} tps")
        pairs = []
        for spec in [n.strip() for n in args.exports.split(",") if n.strip()]:
            count_text, _, limit_text = spec.partition("@")
            count, limit = int(count_text), float(limit_text or 0)
            label = f"{count} exports" + (f", {limit:g} MiB/s each" if limit else "")
            # A baseline right before each loaded run: on a shared machine the noise changes
            # by the minute, so each run is judged against the conditions it ran in.
            _log(f"baseline at {rate:.0f} tps")
            baseline = pgbench(pgbench_dsn, "baseline", args.seconds, args.clients, rate, workdir)
            _log(f"with {label}")
            procs = start_exports(events_dsn, count, args.format, limit, workdir)
            try:
                run = pgbench(pgbench_dsn, label, args.seconds, args.clients, rate, workdir)
            finally:
                done, mib = stop_exports(procs)
            pairs.append((baseline, dataclasses.replace(run, exports_done=done, export_mib=mib)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if args.drop:
            with psycopg.connect(args.dsn, autocommit=True) as conn:
                for suffix in ("pgbench", "events"):
                    name = sql.Identifier(f"{args.db_prefix}_{suffix}")
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
    load = os.getloadavg()
    sys.stdout.write(
        f"load held: pgbench scale {args.scale}, {args.clients} clients, {args.seconds}s runs; "
        f"exports of {args.rows:,} events rows as {args.format}; {os.cpu_count()} cores, "
        f"load average {load[0]:.1f}\n\n"
    )
    sys.stdout.write(report(capacity, pairs, args.seconds) + "\n")


if __name__ == "__main__":
    main()
