"""Failed exports in `export_failures`: a row per failed partition and dataset of a run (one
row for the run when it failed without naming partitions). Pure: no Dagster here."""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import sql

from export_pipeline.state.db import connect


@dataclass(frozen=True)
class FailureRecord:
    """One failed partition of one dataset (or a whole run); customer/month are None when the
    failure is not about one of each."""

    run_id: str
    job_name: str
    error: str
    partition_key: str | None = None
    customer: str | None = None
    month: str | None = None
    datasets: list[str] = field(default_factory=list)
    dataset: str | None = None


def record_failures(dsn: str, records: list[FailureRecord]) -> int:
    """Insert the failures; rows already recorded (a sensor tick retried) are skipped. How
    many were new."""
    query = sql.SQL(
        "INSERT INTO export_failures "
        "(run_id, job_name, partition_key, customer, month, datasets, error, dataset) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (run_id, (coalesce(partition_key, '')), (coalesce(dataset, ''))) "
        "DO NOTHING"
    )
    new = 0
    with connect(dsn) as conn, conn.transaction():
        for r in records:
            params = (
                r.run_id,
                r.job_name,
                r.partition_key,
                r.customer,
                r.month,
                list(r.datasets),
                r.error,
                r.dataset,
            )
            new += conn.execute(query, params).rowcount
    return new


def set_alert_status(dsn: str, run_id: str, status: str) -> None:
    """How the webhook went: `sent`, `failed: <reason>` or `not_configured`."""
    query = sql.SQL("UPDATE export_failures SET alert_status = %s WHERE run_id = %s")
    with connect(dsn) as conn, conn.transaction():
        conn.execute(query, (status, run_id))
