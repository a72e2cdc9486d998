"""Failed export runs, one row per run in `export_failures`. Pure: no Dagster here."""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from export_pipeline.state.db import connect


@dataclass(frozen=True)
class FailureRecord:
    """What is known about a failed run; customer/month are None for unpartitioned runs."""

    run_id: str
    job_name: str
    error: str
    partition_key: str | None = None
    customer: str | None = None
    month: str | None = None
    datasets: list[str] = field(default_factory=list)


def record_failure(dsn: str, record: FailureRecord) -> bool:
    """Insert the failure; False if this run was already recorded (a sensor tick retried)."""
    query = sql.SQL(
        "INSERT INTO export_failures "
        "(run_id, job_name, partition_key, customer, month, datasets, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING"
    )
    params = (
        record.run_id,
        record.job_name,
        record.partition_key,
        record.customer,
        record.month,
        list(record.datasets),
        record.error,
    )
    with connect(dsn) as conn, conn.transaction():
        return conn.execute(query, params).rowcount == 1


def set_alert_status(dsn: str, run_id: str, status: str) -> None:
    """How the webhook went: `sent`, `failed: <reason>` or `not_configured`."""
    query = sql.SQL("UPDATE export_failures SET alert_status = %s WHERE run_id = %s")
    with connect(dsn) as conn, conn.transaction():
        conn.execute(query, (status, run_id))
