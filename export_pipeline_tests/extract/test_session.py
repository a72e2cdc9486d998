"""One worker's source session (extract/session.py) on a real PostgreSQL: one backend for a
whole batch of exports (two with Parquet), a fresh snapshot per export, session settings
verified once per connection, a backend that died replaced by the next export, and the
partition locks that keep two runs off the same customer-month.

The server's own view is the witness: `pg_stat_database.sessions` (every backend ever started
for the database), `pg_stat_activity` (the backends alive) and `pg_locks` (who holds which
advisory lock); on the client, libpq's protocol trace of the reused connection.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from export_pipeline.batch import Retries, claim_deliveries
from export_pipeline.extract.connection import SourceConfig, SourceConnectionError
from export_pipeline.extract.session import PartitionBusyError, SourceSession
from export_pipeline.partitions import Month
from export_pipeline.retryable import is_transient
from export_pipeline.spec import Compression, DatasetSpec, Format, Relation
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline_tests.harness import export_many, export_one
from export_pipeline_tests.services import scratch_database

# The server's version matters here (sessions, snapshots and locks): CI runs these again on a second
# PostgreSQL (.ci/run).
pytestmark = pytest.mark.server_version

MARCH = Month(2025, 3)
CUSTOMERS = ["1", "2", "3", "4"]
ROWS_PER_CUSTOMER = 50
DATASET = DatasetSpec(
    "t",
    "customer_id",
    Format.CSV,
    Compression.NONE,
    table=Relation(("public", "t")),
    time_column="at",
)
FORMATS = [Format.CSV, Format.PARQUET]
# Backends a session starts on the server: psycopg's; with Parquet also ADBC's, whose driver
# opens one more at connect, for its type lookup, and ends it at once.
SERVER_SESSIONS = {Format.CSV: 1, Format.PARQUET: 3}


@pytest.fixture(scope="module")
def source_dsn(pg_server: str) -> Iterator[str]:
    """A database of this module's: ROWS_PER_CUSTOMER rows in March 2025 for each customer
    (tests that add rows use customers of their own)."""
    with scratch_database(pg_server, "session") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (customer_id int, at timestamptz, v text)")
            conn.execute(
                "INSERT INTO t SELECT c, timestamptz '2025-03-01 00:00+00' + g * interval '1 h',"
                " md5(g::text) FROM generate_series(1, 4) AS c, generate_series(1, %s) AS g",
                (ROWS_PER_CUSTOMER,),
            )
        yield dsn


def _dataset(fmt: Format) -> DatasetSpec:
    return dataclasses.replace(DATASET, format=fmt)


def _dbname(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def _sessions_started(dsn: str) -> int:
    """Backends the server has started for the database so far, this one included."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (_dbname(dsn),)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _backends(dsn: str) -> set[int]:
    """The client backends connected to the database now, other than the one asking."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            (_dbname(dsn),),
        ).fetchall()
    return {int(row[0]) for row in rows}


def _advisory_locks(dsn: str, pid: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s",
            (pid,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition with a deadline


def _terminate(dsn: str, pid: int) -> None:
    """End a backend as an operator (or a failover) would, and wait until it is gone."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    assert row == (True,)
    _wait_for(lambda: pid not in _backends(dsn), f"backend {pid} to end")


def _backend_pid(session: SourceSession) -> int:
    return session.connection().info.backend_pid


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_batch_of_exports_opens_one_backend_and_checks_its_settings_once(
    source_dsn: str, tmp_path: Path, fmt: Format
) -> None:
    store = LocalObjectStore(tmp_path)
    dataset = _dataset(fmt)
    started = _sessions_started(source_dsn)
    trace = tmp_path / "libpq.trace"
    with SourceSession(SourceConfig(source_dsn)) as session:
        first = export_many(session, store, dataset, [("1", MARCH)])
        pid = _backend_pid(session)
        # libpq's protocol trace of the reused connection: what it sends from now on
        with open(trace, "w") as out:
            session.connection().pgconn.trace(out.fileno())
            try:
                rest = export_many(session, store, dataset, [(c, MARCH) for c in CUSTOMERS[1:]])
            finally:
                session.connection().pgconn.untrace()
        expected = 2 if fmt is Format.PARQUET else 1
        assert session.connects == expected
        assert _backend_pid(session) == pid
        backends = _backends(source_dsn)
        assert pid in backends and len(backends) == expected  # the server's view
    delivered = {**first.delivered, **rest.delivered}
    assert sorted(delivered) == [f"{c}|2025-03-01" for c in CUSTOMERS]
    assert {r.rows for r in delivered.values()} == {ROWS_PER_CUSTOMER}
    assert not first.failed and not rest.failed
    # the session's backends, one `_backends` and this observer: nothing else
    assert _sessions_started(source_dsn) - started == SERVER_SESSIONS[fmt] + 2
    assert _backends(source_dsn) == set()  # closed with the session
    sent = trace.read_bytes()
    # Text formats read on this connection: one message opens each later export's snapshot.
    # Parquet reads on the ADBC connection: nothing more goes over this one.
    snapshots = len(CUSTOMERS) - 1 if fmt is not Format.PARQUET else 0
    assert sent.count(b"REPEATABLE READ READ ONLY; SELECT now()") == snapshots
    assert b"_export_probe" not in sent  # the query was described once, for the first export
    assert b"current_setting" not in sent  # settings verified once, when the backend opened
    assert b"pg_is_in_recovery" not in sent  # the replica check too: a primary stays one


@pytest.mark.parametrize(("fmt", "customer"), [(Format.CSV, "5"), (Format.PARQUET, "6")])
def test_each_export_on_a_session_reads_a_fresh_snapshot(
    source_dsn: str, tmp_path: Path, fmt: Format, customer: str
) -> None:
    store = LocalObjectStore(tmp_path)
    dataset = _dataset(fmt)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (%s, '2025-03-02', 'first')", (int(customer),))
    with SourceSession(SourceConfig(source_dsn)) as session:
        before = export_one(session, store, dataset, customer, MARCH)
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO t VALUES (%s, '2025-03-03', 'second')", (int(customer),))
        after = export_one(session, store, dataset, customer, MARCH)
        assert session.connects == (2 if fmt is Format.PARQUET else 1)
    assert (before.rows, after.rows) == (1, 2)
    assert before.snapshot_at is not None and after.snapshot_at is not None
    assert before.snapshot_at < after.snapshot_at


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_backend_terminated_between_exports_is_replaced_by_the_next_export(
    source_dsn: str, tmp_path: Path, fmt: Format
) -> None:
    store = LocalObjectStore(tmp_path)
    dataset = _dataset(fmt)
    with SourceSession(SourceConfig(source_dsn)) as session:
        export_one(session, store, dataset, "1", MARCH)
        old = _backend_pid(session)
        connects = session.connects
        _terminate(source_dsn, old)
        # no retry: the next export sees the dead backend before using it
        result = export_one(session, store, dataset, "2", MARCH)
        assert result.rows == ROWS_PER_CUSTOMER
        assert session.connects == connects + 1
        assert _backend_pid(session) != old
        assert old not in _backends(source_dsn)


def test_a_terminated_parquet_reader_fails_one_try_and_the_retry_reconnects(
    source_dsn: str, tmp_path: Path
) -> None:
    """The ADBC backend's death cannot be seen without a round trip: the export that finds it
    fails transient, and its in-place retry opens a new one."""
    store = LocalObjectStore(tmp_path)
    dataset = _dataset(Format.PARQUET)
    with SourceSession(SourceConfig(source_dsn)) as session:
        export_one(session, store, dataset, "1", MARCH)
        [reader] = _backends(source_dsn) - {_backend_pid(session)}
        _terminate(source_dsn, reader)
        with pytest.raises(SourceConnectionError) as info:
            export_one(session, store, dataset, "2", MARCH)
        assert is_transient(info.value), info.value
        assert "could not take the export's snapshot" in str(info.value)
        retried = export_one(session, store, dataset, "2", MARCH, retries=Retries(1))
        assert retried.rows == ROWS_PER_CUSTOMER
        assert session.connects == 3


def test_overlapping_claims_wait_then_fail_busy_and_succeed_once_the_holder_closes(
    source_dsn: str, tmp_path: Path
) -> None:
    store = LocalObjectStore(tmp_path)
    config = SourceConfig(source_dsn)
    with SourceSession(config) as first, SourceSession(config, lock_wait_seconds=0.3) as second:
        claim_deliveries(first, store, [("1", MARCH), ("2", MARCH)])
        holder = _backend_pid(first)
        assert first.claimed == 2 and _advisory_locks(source_dsn, holder) == 2
        started = time.monotonic()
        with pytest.raises(PartitionBusyError) as info:
            claim_deliveries(second, store, [("2", MARCH), ("3", MARCH)])
        waited = time.monotonic() - started
        assert waited >= 0.3  # it waited for the holder, then gave up
        assert info.value.transient and is_transient(info.value)
        assert "2|2025-03" in str(info.value) and "another run" in str(info.value)
        # it holds nothing: the lock it could take (customer 3) was given back
        assert second.claimed == 0 and _advisory_locks(source_dsn, _backend_pid(second)) == 0
        claim_deliveries(second, store, [("3", MARCH)])  # not claimed by the first: at once
        assert second.claimed == 1
        # a claim of keys the session holds already is free, and waits for nobody
        claim_deliveries(first, store, [("1", MARCH), ("2", MARCH)])
        assert first.claimed == 2

        first.close()
        claim_deliveries(second, store, [("2", MARCH), ("3", MARCH)])
        assert second.claimed == 2 and _advisory_locks(source_dsn, _backend_pid(second)) == 2
    # another store's customer-months are other locks
    with SourceSession(config, lock_wait_seconds=0.1) as other:
        claim_deliveries(other, LocalObjectStore(tmp_path / "elsewhere"), [("2", MARCH)])
        assert other.claimed == 1


def test_claims_survive_a_reconnect(source_dsn: str, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    config = SourceConfig(source_dsn)
    with SourceSession(config) as session, SourceSession(config, lock_wait_seconds=0.2) as rival:
        claim_deliveries(session, store, [("1", MARCH), ("2", MARCH)])
        old = _backend_pid(session)
        _terminate(source_dsn, old)  # its locks end with it
        result = export_one(session, store, DATASET, "1", MARCH)  # reconnects, claims again
        assert result.rows == ROWS_PER_CUSTOMER
        new = _backend_pid(session)
        assert new != old and session.claimed == 2
        assert _advisory_locks(source_dsn, new) == 2  # the server's view
        with pytest.raises(PartitionBusyError):
            claim_deliveries(rival, store, [("2", MARCH)])


def test_a_claim_whose_backend_ends_while_it_waits_fails_transient_and_claims_all_again(
    source_dsn: str, tmp_path: Path
) -> None:
    """The backend dies under a claim (here while it waits for a lock): one clear transient
    error, and the next claim, on a new backend, takes again what the session held."""
    store = LocalObjectStore(tmp_path)
    config = SourceConfig(source_dsn)
    with SourceSession(config) as holder, SourceSession(config) as waiter:
        claim_deliveries(holder, store, [("2", MARCH)])
        claim_deliveries(waiter, store, [("1", MARCH)])
        old = _backend_pid(waiter)
        errors: list[BaseException] = []

        def claim() -> None:
            try:
                claim_deliveries(waiter, store, [("2", MARCH)])
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        thread = threading.Thread(target=claim)
        thread.start()
        _wait_for(lambda: _waits_for_a_lock(source_dsn, old), "the claim to wait for the lock")
        _terminate(source_dsn, old)
        thread.join(30)
        [error] = errors
        assert isinstance(error, SourceConnectionError) and is_transient(error)
        assert "lost the source connection while taking the partition locks" in str(error)
        holder.close()
        relocks = waiter.relocks
        claim_deliveries(waiter, store, [("2", MARCH)])  # a new backend: 1 again, then 2
        assert waiter.relocks == relocks + 1
        assert waiter.claimed == 2 and _advisory_locks(source_dsn, _backend_pid(waiter)) == 2


def _waits_for_a_lock(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return row == ("Lock",)
