"""Read replicas: do not export a month the replica has not replayed to its end yet.

On a primary (`pg_is_in_recovery()` false) nothing is checked. On a replica, a month is
exported once the last replayed transaction committed at or after the month's end, or once the
replica has replayed all the WAL it received (an idle primary sends nothing newer, so the
replay timestamp can stay old while the replica is up to date). Otherwise the export fails as
transient, so the RetryPolicy tries again later. Cost: one one-row query per export on a
replica; on a primary, one per connection (a primary stays one while the connection lives).
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from export_pipeline.errors import ExportError

REPLICA_STATE = (
    "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp(),"
    " pg_last_wal_receive_lsn() IS NOT NULL"
    " AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()"
)


class ReplicaLagError(ExportError):
    """The replica has not replayed the month to its end yet (transient)."""


def lag_problem(
    in_recovery: bool, replayed_at: datetime | None, caught_up: bool, month_end: datetime
) -> str | None:
    """Why the month cannot be exported from this server yet, or None if it can."""
    if not in_recovery or caught_up:
        return None
    if replayed_at is not None and replayed_at >= month_end:
        return None
    seen = replayed_at.isoformat() if replayed_at else "nothing yet"
    return (
        f"the read replica has replayed transactions up to {seen}, before the month's end "
        f"{month_end.isoformat()}: its data for the month may be incomplete; retry later"
    )


def check_replica_caught_up(conn: psycopg.Connection, month_end: datetime, dataset: str) -> bool:
    """Raise `ReplicaLagError` if the month cannot be exported from this server yet; return
    whether the server is a replica (in recovery)."""
    row = conn.execute(REPLICA_STATE).fetchone()
    assert row is not None
    problem = lag_problem(bool(row[0]), row[1], bool(row[2]), month_end)
    if problem:
        raise ReplicaLagError(f"dataset {dataset!r}: {problem}", transient=True)
    return bool(row[0])
