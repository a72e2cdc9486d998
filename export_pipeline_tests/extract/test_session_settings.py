"""Session settings a pooler drops (issue 8, item 9).

How "did not take" is reproduced: PgBouncer (with `ignore_startup_parameters = options`, the
usual setting, since it refuses unknown startup parameters otherwise) forwards a connection
without the libpq `options` we send; the session then runs on the server's, database's and
role's defaults. `pg_proxy` does exactly that on a real socket: it strips `options` from the
StartupMessage. The database's default time zone is set to America/New_York (ALTER DATABASE
... SET), so the dropped `TimeZone=UTC` shows. An ALTER ROLE/DATABASE setting alone cannot
reproduce it: startup options take precedence over them, so with options the session is UTC.

Asserted: both drivers refuse the session with one clear, permanent error naming the setting
and the cause; through the same proxy without stripping, the settings take (so the proxy is
transparent and the refusal comes from the dropped options); an export through the stripping
proxy fails before writing anything, naming the dataset.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from export_pipeline.extract.arrow import arrow_connection
from export_pipeline.extract.connection import SessionSettingsError, SourceConfig, connect
from export_pipeline.partitions import Month
from export_pipeline.retryable import is_transient
from export_pipeline.spec import Format, parse_spec
from export_pipeline.storage.s3 import S3ObjectStore
from export_pipeline_tests.harness import export_one
from export_pipeline_tests.helpers import list_keys, pending_uploads
from export_pipeline_tests.pg_proxy import pg_proxy

# The server's version matters here (session settings): CI runs these again on a second
# PostgreSQL (.ci/run).
pytestmark = pytest.mark.server_version


@pytest.fixture
def new_york_dsn(scratch_dsn: str) -> str:
    """A database whose own default time zone is not UTC, with a small table."""
    dbname = psycopg.conninfo.conninfo_to_dict(scratch_dsn)["dbname"]
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET TimeZone = 'America/New_York'").format(
                sql.Identifier(str(dbname))
            )
        )
        conn.execute("CREATE TABLE t (customer_id int, at timestamptz, v text)")
        conn.execute("INSERT INTO t VALUES (1, '2025-03-01 00:30+00', 'first of March UTC')")
    return scratch_dsn


def test_options_taken_through_a_transparent_proxy(new_york_dsn: str) -> None:
    with pg_proxy(new_york_dsn, strip_options=False) as proxy:
        config = SourceConfig(proxy.dsn())
        with connect(config) as conn:
            assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
        with arrow_connection(config):
            pass
        assert all(b"options\x00" in startup for startup in proxy.startups)


@pytest.mark.parametrize("driver", ["psycopg", "ADBC"])
def test_dropped_options_are_refused(new_york_dsn: str, driver: str) -> None:
    with pg_proxy(new_york_dsn, strip_options=True) as proxy:
        config = SourceConfig(proxy.dsn())
        opener = connect if driver == "psycopg" else arrow_connection
        with pytest.raises(SessionSettingsError) as caught, opener(config):
            pass
        assert proxy.startups and not any(b"options\x00" in s for s in proxy.startups)
    message = str(caught.value)
    assert f"the source connection ({driver}) ignored the session settings" in message
    assert "TimeZone=America/New_York" in message
    assert "default_transaction_read_only=off" in message
    assert "PgBouncer drops startup options" in message
    assert not is_transient(caught.value)


def test_export_through_a_pooler_that_drops_options_writes_nothing(
    new_york_dsn: str, s3_store: S3ObjectStore, s3_client: Any, bucket: str
) -> None:
    spec = parse_spec(
        "customers:\n  table: public.t\n  key_column: customer_id\n"
        'months:\n  start: "2025-01"\n'
        "datasets:\n  t:\n    table: public.t\n    customer_column: customer_id\n"
        "    time_column: at\n    format: csv\n    compression: none\n"
    )
    with pg_proxy(new_york_dsn, strip_options=True) as proxy:
        with pytest.raises(SessionSettingsError, match="TimeZone=America/New_York"):
            export_one(SourceConfig(proxy.dsn()), s3_store, spec.datasets["t"], "1", Month(2025, 3))
    assert list_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == []
    # Directly, the same export sees the row in March (UTC), as it should.
    result = export_one(
        SourceConfig(new_york_dsn), s3_store, spec.datasets["t"], "1", Month(2025, 3)
    )
    assert result.rows == 1 and result.format is Format.CSV
