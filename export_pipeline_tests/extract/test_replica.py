"""The replica-lag guard: decisions, and the query on a real (primary) server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from export_pipeline.extract.connection import SourceConfig, connect
from export_pipeline.extract.replica import ReplicaLagError, check_replica_caught_up, lag_problem
from export_pipeline.retryable import is_transient

# The server's version matters here (the replica functions): CI runs these again on a second
# PostgreSQL (.ci/run).
pytestmark = pytest.mark.server_version

END = datetime(2025, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("in_recovery", "replayed_at", "caught_up", "ok"),
    [
        (False, None, False, True),  # a primary
        (True, datetime(2025, 4, 1, 0, 0, 5, tzinfo=UTC), False, True),  # replayed past the end
        (True, datetime(2025, 3, 31, 23, 59, tzinfo=UTC), True, True),  # idle primary, caught up
        (True, datetime(2025, 3, 31, 23, 59, tzinfo=UTC), False, False),  # lagging
        (True, None, False, False),  # replayed nothing yet
    ],
)
def test_lag_decision(
    in_recovery: bool, replayed_at: datetime | None, caught_up: bool, ok: bool
) -> None:
    problem = lag_problem(in_recovery, replayed_at, caught_up, END)
    assert (problem is None) is ok
    if problem:
        assert "2025-04-01T00:00:00+00:00" in problem and "retry later" in problem


def test_a_primary_passes_and_lag_is_transient(demo_dsn: str) -> None:
    with connect(SourceConfig(demo_dsn)) as conn:
        check_replica_caught_up(conn, END, "events")  # not in recovery: no error
    error = ReplicaLagError("lagging", transient=True)
    assert is_transient(error)
