"""What an export pays besides its rows, part by part, in process (issue 16).

    .venv/bin/python bench/ratio_costs.py --dsn DSN [--repeat 20]
        [--psql-binary-s S --psql-csv-s S]

Whole-export variants (`bench/run.py --variant ...`) cannot resolve a few milliseconds in a
run of seconds on a shared machine, so this times the fixed costs of one export of
`SELECT * FROM events` where they run, each the median of `--repeat` tries:
- per new connection: a psycopg and an ADBC connect (a new backend), each followed by the
  session check (`SESSION_SETTINGS`, one round trip);
- per session (and dataset): the replica check (a step's exports only; once per connection on
  a primary), `describe` and the contract's type lookup;
- per export: rendering the query, the snapshot (text formats: BEGIN REPEATABLE READ and
  `now()` in one round trip; Parquet: SET TRANSACTION and `now()` on the ADBC connection), the
  planner estimate (with progress only);
- per batch (a step's range): the partition lock, the manifest withdrawal and the orphan
  listing, here on local storage (on S3 they are 2 DeleteObjects and 1 listing per batch, at
  S3's latency each: `bench/scale.py` measures those);
- end to end, one row of `events` exported (local storage), on a new session each time, on a
  reused session, and as a step (`export_batch`) on a reused session: the sum of the above;
- per process: the interpreter's start and the imports of an engine case (`case.py
  --no-export`), which every engine case's wall time in `bench/run.py` includes.
With `--psql-binary-s` / `--psql-csv-s` (`bench/run.py --ratio-costs` passes the medians of
the same run), each part is also given as a share of those baselines: what it adds to the
Parquet / COPY BINARY and CSV / COPY CSV ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from case import write_query  # noqa: E402

from export_pipeline.batch import BatchItem, claim_deliveries, export_batch  # noqa: E402
from export_pipeline.engine import ExportStream, begin_snapshot  # noqa: E402
from export_pipeline.extract.arrow import begin_arrow_snapshot  # noqa: E402
from export_pipeline.extract.connection import (  # noqa: E402
    SESSION_SETTINGS,
    SourceConfig,
    check_session_settings,
)
from export_pipeline.extract.contract import ContractOptions, plan_contract  # noqa: E402
from export_pipeline.extract.estimate import planner_estimate  # noqa: E402
from export_pipeline.extract.query import describe, render  # noqa: E402
from export_pipeline.extract.replica import REPLICA_STATE  # noqa: E402
from export_pipeline.extract.session import SourceSession, lock_key  # noqa: E402
from export_pipeline.formats.naming import extension  # noqa: E402
from export_pipeline.manifest import withdraw_manifests  # noqa: E402
from export_pipeline.partitions import Month, partition_key  # noqa: E402
from export_pipeline.spec import Compression, Format  # noqa: E402
from export_pipeline.storage.local import LocalObjectStore  # noqa: E402

QUERY = sql.Composed([sql.SQL("SELECT * FROM events")])
ONE_ROW = sql.Composed([sql.SQL("SELECT * FROM events LIMIT 1")])
FORMATS = ((Format.PARQUET, Compression.ZSTD), (Format.CSV, Compression.NONE))


@dataclass(frozen=True)
class Part:
    what: str
    paid: str
    ms: float
    spread: tuple[float, float]  # min, max ms


def timed(
    what: str, paid: str, repeat: int, run: Callable[[], object], setup: Callable[[], object]
) -> Part:
    """Median ms of `run` over `repeat` tries (after one untimed try), `setup` untimed."""
    setup()
    run()
    walls = []
    for _ in range(repeat):
        setup()
        started = time.perf_counter()
        run()
        walls.append((time.perf_counter() - started) * 1000)
    return Part(what, paid, statistics.median(walls), (min(walls), max(walls)))


def _nothing() -> None:
    return None


def connection_parts(config: SourceConfig, repeat: int) -> list[Part]:
    conninfo = config.conninfo()
    opened: list[psycopg.Connection | adbc.Connection] = []

    def close_all() -> None:
        while opened:
            opened.pop().close()

    def pg_connect() -> None:
        opened.append(psycopg.connect(conninfo, autocommit=True))

    def adbc_connect() -> None:
        opened.append(adbc.connect(conninfo))

    parts = [
        timed("psycopg connect (a new backend)", "per connection", repeat, pg_connect, close_all),
        timed("ADBC connect (a new backend)", "per connection", repeat, adbc_connect, close_all),
    ]
    close_all()
    with psycopg.connect(conninfo, autocommit=True) as conn:

        def pg_check() -> None:
            shown = conn.execute(SESSION_SETTINGS).fetchone()
            assert shown is not None
            check_session_settings(shown, "psycopg")

        parts.append(timed("session check, psycopg", "per connection", repeat, pg_check, _nothing))
        parts.append(
            timed(
                "replica check (a step's exports)",
                "per connection",
                repeat,
                lambda: conn.execute(REPLICA_STATE).fetchone(),
                _nothing,
            )
        )
    with closing(adbc.connect(conninfo)) as arrow:

        def adbc_check() -> None:
            with closing(arrow.cursor()) as cur:
                cur.execute(SESSION_SETTINGS)
                shown = cur.fetchone()
            assert shown is not None
            check_session_settings(shown, "ADBC")
            arrow.rollback()

        parts.append(timed("session check, ADBC", "per connection", repeat, adbc_check, _nothing))

        def arrow_snapshot() -> None:
            begin_arrow_snapshot(arrow)
            arrow.rollback()

        parts.append(
            timed(
                "snapshot, Parquet (ADBC: SET TRANSACTION, now())",
                "per export",
                repeat,
                arrow_snapshot,
                _nothing,
            )
        )
    return parts


def query_parts(config: SourceConfig, repeat: int) -> list[Part]:
    parts = []
    with SourceSession(config) as session:
        conn = session.connection()
        text = render(conn, QUERY, {})
        parts.append(
            timed(
                "render the query", "per export", repeat, lambda: render(conn, QUERY, {}), _nothing
            )
        )
        for fmt, _ in FORMATS:

            def shape(fmt: Format = fmt) -> None:
                columns = describe(conn, text, "bench")
                plan_contract(conn, columns, fmt, "bench", ContractOptions())

            parts.append(
                timed(
                    f"describe + contract, {fmt.value}",
                    "per session and dataset",
                    repeat,
                    shape,
                    _nothing,
                )
            )

        def text_snapshot() -> None:
            begin_snapshot(conn)
            conn.rollback()

        parts.append(
            timed(
                "snapshot, text formats (BEGIN ...; now())",
                "per export",
                repeat,
                text_snapshot,
                _nothing,
            )
        )
        parts.append(
            timed(
                "planner estimate (progress only)",
                "per export",
                repeat,
                lambda: planner_estimate(conn, text),
                _nothing,
            )
        )
    return parts


def batch_parts(config: SourceConfig, out: Path, repeat: int) -> list[Part]:
    """A step's preparation of a batch of one partition, on local storage."""
    store = LocalObjectStore(out, prefix="")
    month = Month(2025, 1)
    parts = []
    with SourceSession(config) as session:

        def claim() -> None:
            customer = uuid.uuid4().hex
            session.claim({lock_key(store.location, customer, str(month)): customer})

        parts.append(
            timed(
                "partition lock (claim a new customer-month)", "per batch", repeat, claim, _nothing
            )
        )
    parts.append(
        timed(
            "manifest withdrawal, local (2 batched removals)",
            "per batch",
            repeat,
            lambda: withdraw_manifests(store, [("bench", month)]),
            _nothing,
        )
    )
    key = f"bench/{month}/events.parquet"
    parts.append(
        timed(
            "orphan listing, local",
            "per batch",
            repeat,
            lambda: store.remove_orphans([key]),
            _nothing,
        )
    )
    with SourceSession(config) as session:
        parts.append(
            timed(
                "claim + withdrawal (claim_deliveries), local",
                "per batch",
                repeat,
                lambda: claim_deliveries(session, store, [(uuid.uuid4().hex, month)]),
                _nothing,
            )
        )
    return parts


def export_parts(config: SourceConfig, out: Path, repeat: int) -> list[Part]:
    """One row exported end to end: everything an export pays but its rows."""
    store = LocalObjectStore(out, prefix="")
    parts = []
    for fmt, comp in FORMATS:
        parts += _one_row_exports(config, store, fmt, comp, repeat)
    return parts


def _one_row_exports(
    config: SourceConfig, store: LocalObjectStore, fmt: Format, comp: Compression, repeat: int
) -> list[Part]:
    key = f"one{extension(fmt, comp)}"
    month = Month(2025, 1)

    def one(session: SourceSession | None) -> None:
        write_query(config, store, key, ONE_ROW, {}, fmt, comp, name="bench", session=session)

    parts = [
        timed(
            f"1-row export, {fmt.value}, new session",
            "per export",
            repeat,
            lambda: one(None),
            _nothing,
        )
    ]
    with SourceSession(config) as session:
        parts.append(
            timed(
                f"1-row export, {fmt.value}, reused session",
                "per export",
                repeat,
                lambda: one(session),
                _nothing,
            )
        )
    with SourceSession(config) as session:

        def step() -> None:
            customer = uuid.uuid4().hex  # a customer-month not claimed yet: a new lock
            stream = ExportStream(
                config,
                ONE_ROW,
                {},
                name="bench",
                format=fmt,
                compression=comp,
                replayed_past=datetime.now(UTC),
            )
            item = BatchItem(partition_key(customer, month), customer, month, stream)
            result = export_batch([item], store, "events", session=session, sign_links=False)
            assert not result.failed, result.failed

        parts.append(
            timed(
                f"1-row export, {fmt.value}, as a step, reused session",
                "per batch",
                repeat,
                step,
                _nothing,
            )
        )
    return parts


def startup_part(dsn: str, out: Path, repeat: int) -> Part:
    argv = [sys.executable, str(REPO / "bench" / "case.py"), "--no-export"]
    argv += ["--dsn", dsn, "--format", "csv", "--out", str(out)]
    tries = max(3, repeat // 4)
    return timed(
        "python start + an engine case's imports",
        "per process",
        tries,
        lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=REPO),
        _nothing,
    )


def report(parts: list[Part], binary_s: float | None, csv_s: float | None) -> str:
    head = f"  {'part':<52} {'ms':>8} {'min-max ms':>15}  {'paid':<24}"
    if binary_s:
        head += f" {'% COPY BINARY':>13}"
    if csv_s:
        head += f" {'% COPY CSV':>10}"
    lines = [
        "fixed costs of an export, in process (median ms; % = share of the psql baseline's "
        "wall time of the same run, what the part adds to the ratio if paid once):",
        head,
    ]
    for p in parts:
        line = f"  {p.what:<52} {p.ms:>8.2f} {p.spread[0]:>7.2f}-{p.spread[1]:<7.2f}  {p.paid:<24}"
        if binary_s:
            line += f" {p.ms / 10 / binary_s:>12.2f}%"
        if csv_s:
            line += f" {p.ms / 10 / csv_s:>9.2f}%"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--psql-binary-s", type=float, default=None)
    parser.add_argument("--psql-csv-s", type=float, default=None)
    args = parser.parse_args()
    config = SourceConfig(args.dsn, statement_timeout_seconds=0)
    with tempfile.TemporaryDirectory(prefix="ratio-costs-", dir=REPO / "bench") as tmp:
        out = Path(tmp)
        parts = connection_parts(config, args.repeat)
        parts += query_parts(config, args.repeat)
        parts += batch_parts(config, out, args.repeat)
        parts += export_parts(config, out, args.repeat)
        parts.append(startup_part(args.dsn, out, args.repeat))
    sys.stdout.write(report(parts, args.psql_binary_s, args.psql_csv_s) + "\n")


if __name__ == "__main__":
    main()
