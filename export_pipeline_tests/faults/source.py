"""A source table whose export can be held mid-stream, deterministically, for the fault tests.

`events` holds `rows` rows of customer 1 in March 2025 (plus a few of customer 2). The dataset's
SQL streams them in physical order and, at row `hold_row`, takes a shared advisory lock: while
the test holds that lock exclusively (`Hold`), the export sits mid-stream with every earlier row
already sent (and, with enough rows, parts already uploaded). The test waits for that state in
`pg_stat_activity` (the backend waits on an advisory lock), never for a time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from export_pipeline.extract.connection import APPLICATION_NAME
from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, DatasetSpec, Format, parse_spec

CUSTOMER = "1"
MONTH = Month(2025, 3)
PARTITION = f"{CUSTOMER}|{MONTH.start.isoformat()}"
PAD = "repeat(md5(g::text), 6)"  # 192 characters that compress poorly


def create_events(dsn: str, rows: int) -> None:
    """`events`: `rows` rows of customer 1 in March 2025, in id order on disk, and 10 others."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE events (id int PRIMARY KEY, customer_id int NOT NULL,"
            " at date NOT NULL, pad text NOT NULL)"
        )
        conn.execute(
            "INSERT INTO events SELECT g, 1, date '2025-03-01' + (g %% 28), "
            + PAD
            + " FROM generate_series(1, %s) AS g",
            (rows,),
        )
        conn.execute(
            "INSERT INTO events SELECT 10000000 + g, 2, date '2025-03-02', 'other'"
            " FROM generate_series(1, 10) AS g"
        )


def add_customer_events(dsn: str, customer: int, first_id: int, rows: int) -> None:
    """`rows` more rows of `customer` in March 2025, ids from `first_id` (small ones: a range
    of partitions to export after customer 1's)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events SELECT g, %s, date '2025-03-05', "
            + PAD
            + " FROM generate_series(%s::int, %s::int) AS g",
            (customer, first_id, first_id + rows - 1),
        )


def held_sql(hold_row: int, lock_key: int) -> str:
    """The dataset SQL: customer 1's March rows, holding at `hold_row` on advisory lock
    `lock_key` (a transaction-level shared lock, released when the export's transaction ends)."""
    return (
        "SELECT e.id, e.customer_id, e.at, e.pad || CASE WHEN e.id = "
        f"{int(hold_row)} THEN pg_advisory_xact_lock_shared({int(lock_key)})::text"
        " ELSE '' END AS pad FROM public.events AS e WHERE e.customer_id = %(customer)s"
        " AND e.at >= %(month_start)s AND e.at < %(month_end)s"
    )


def held_first_rows_sql(lock_key: int) -> str:
    """The dataset SQL: the customer's March rows, holding at each customer's first row
    (`mod(id, 10000000) = 1`, see add_customer_events) on advisory lock `lock_key + customer`: a
    range's exports can be let through one by one, whatever order they run in."""
    return (
        "SELECT e.id, e.customer_id, e.at, e.pad || CASE WHEN mod(e.id, 10000000) = 1 THEN"
        f" pg_advisory_xact_lock_shared({int(lock_key)}::bigint + e.customer_id)::text ELSE '' END"
        " AS pad FROM public.events AS e WHERE e.customer_id = %(customer)s"
        " AND e.at >= %(month_start)s AND e.at < %(month_end)s"
    )


def waiting_lock_keys(conn: psycopg.Connection) -> list[int]:
    """The advisory lock keys (below 2**32) that backends wait for."""
    rows = conn.execute(
        "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchall()
    return sorted(int(r[0]) for r in rows)


def spec_yaml(
    formats: dict[str, Format],
    hold_row: int,
    lock_key: int,
    sql: str | None = None,
    row_group_rows: int | None = None,
) -> str:
    """An export spec with one held dataset per name -> format, all uncompressed (the SQL
    holds at row `hold_row` on `lock_key`, unless `sql` is given); Parquet datasets with
    `row_group_rows` when given."""
    sql = sql or held_sql(hold_row, lock_key)
    datasets = "".join(
        f'  {name}:\n    sql: "{sql}"\n    customer_column: customer_id\n'
        f"    format: {fmt.value}\n    compression: none\n"
        + (
            f"    row_group_rows: {row_group_rows}\n"
            if row_group_rows and fmt is Format.PARQUET
            else ""
        )
        for name, fmt in formats.items()
    )
    return (
        "customers:\n  table: public.events\n  key_column: customer_id\n"
        f'months:\n  start: "2025-01"\ndatasets:\n{datasets}'
    )


def held_dataset(name: str, fmt: Format, hold_row: int, lock_key: int) -> DatasetSpec:
    spec = parse_spec(spec_yaml({name: fmt}, hold_row, lock_key))
    dataset = spec.datasets[name]
    assert dataset.compression is Compression.NONE
    return dataset


def new_lock_key() -> int:
    return random.randrange(1, 2**31)


@dataclass
class Hold:
    """The test's exclusive hold on the advisory lock the export waits on."""

    conn: psycopg.Connection
    lock_key: int

    def release(self) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key,))


@contextmanager
def hold(dsn: str, lock_key: int) -> Iterator[Hold]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        yield Hold(conn, lock_key)


def export_backends(conn: psycopg.Connection, dbname: str, *, waiting: bool = False) -> list[int]:
    """Our backends on `dbname` (all, or those waiting on the hold's advisory lock)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
        " AND (NOT %s OR (wait_event_type = 'Lock' AND wait_event = 'advisory'))",
        (dbname, APPLICATION_NAME, waiting),
    ).fetchall()
    return sorted(int(r[0]) for r in rows)


def wait_until(what: str, deadline_seconds: float, probe: object) -> object:
    """Poll `probe()` until it returns something truthy, or fail after the deadline."""
    assert callable(probe)
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_seconds}s waiting for {what}")
        time.sleep(0.05)  # poll interval; the condition is re-checked, not assumed
