"""Source sessions: read-only, bounded in time, in UTC, over both drivers."""

from __future__ import annotations

from contextlib import closing

import psycopg
import pytest

from export_pipeline.extract.arrow import arrow_connection
from export_pipeline.extract.connection import SourceConfig, connect

# The server's version matters here (session settings): CI runs these again on a second
# PostgreSQL (.ci/run).
pytestmark = pytest.mark.server_version

SETTINGS = (
    "default_transaction_read_only",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "TimeZone",
)


def test_psycopg_session_settings(demo_dsn: str) -> None:
    config = SourceConfig(
        demo_dsn, statement_timeout_seconds=90, idle_in_transaction_timeout_seconds=45
    )
    with connect(config) as conn:
        shown = [conn.execute(f"SHOW {name}").fetchone()[0] for name in SETTINGS]  # type: ignore[index]
        assert shown == ["on", "90s", "45s", "UTC"]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE nope (i int)")


def test_adbc_session_gets_the_same_settings(demo_dsn: str) -> None:
    config = SourceConfig(demo_dsn, idle_in_transaction_timeout_seconds=45)
    query = (
        "SELECT current_setting('idle_in_transaction_session_timeout') AS idle, "
        "current_setting('default_transaction_read_only') AS ro"
    )
    with arrow_connection(config) as conn, closing(conn.cursor()) as cur:
        cur.execute(query)
        assert cur.fetch_arrow_table().to_pylist() == [{"idle": "45s", "ro": "on"}]
