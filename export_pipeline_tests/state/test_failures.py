"""`export_failures`: a row per failed partition and dataset of a run, written idempotently, on a
new table and on one created before ranged runs (one row per run)."""

from __future__ import annotations

import psycopg

from export_pipeline.state.failures import FailureRecord, record_failures, set_alert_status

RUN = "run-0001"


def _record(partition: str | None, dataset: str | None, error: str = "boom") -> FailureRecord:
    customer, _, month = (partition or "").partition("|")
    return FailureRecord(
        run_id=RUN,
        job_name="exports_job",
        error=error,
        partition_key=partition,
        customer=customer or None,
        month=month[:7] or None,
        datasets=[dataset] if dataset else [],
        dataset=dataset,
    )


def _rows(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT run_id, partition_key, customer, month, dataset, datasets, error, "
            "alert_status FROM export_failures ORDER BY id"
        ).fetchall()


def test_a_row_per_failed_partition_and_dataset_written_once(scratch_dsn: str) -> None:
    records = [
        _record("2|2025-03-01", "orders"),
        _record("2|2025-03-01", "events"),  # the same partition, another dataset
        _record("4|2025-03-01", "orders"),
        _record(None, None, "the run could not start"),  # a failure that names none
    ]
    assert record_failures(scratch_dsn, records) == 4
    assert record_failures(scratch_dsn, records) == 0  # a retried sensor tick: nothing new
    assert record_failures(scratch_dsn, [*records, _record("5|2025-03-01", "orders")]) == 1
    rows = _rows(scratch_dsn)
    assert [r[1:6] for r in rows] == [
        ("2|2025-03-01", "2", "2025-03", "orders", ["orders"]),
        ("2|2025-03-01", "2", "2025-03", "events", ["events"]),
        ("4|2025-03-01", "4", "2025-03", "orders", ["orders"]),
        (None, None, None, None, []),
        ("5|2025-03-01", "5", "2025-03", "orders", ["orders"]),
    ]
    set_alert_status(scratch_dsn, RUN, "sent")
    assert {r[7] for r in _rows(scratch_dsn)} == {"sent"}  # every row of the run


def test_a_table_from_before_ranged_runs_is_upgraded(scratch_dsn: str) -> None:
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE export_failures (
                id            bigserial PRIMARY KEY,
                run_id        text NOT NULL UNIQUE,
                job_name      text NOT NULL,
                partition_key text,
                customer      text,
                month         text,
                datasets      text[] NOT NULL DEFAULT '{}',
                error         text NOT NULL,
                alert_status  text NOT NULL DEFAULT 'not_configured',
                failed_at     timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        conn.execute(
            "INSERT INTO export_failures (run_id, job_name, partition_key, error) "
            "VALUES ('old-run', 'exports_job', '1|2025-01-01', 'old failure')"
        )
    records = [_record("2|2025-03-01", "orders"), _record("4|2025-03-01", "orders")]
    assert record_failures(scratch_dsn, records) == 2  # two rows of one run: no UNIQUE run_id
    rows = _rows(scratch_dsn)
    assert [(r[0], r[1], r[4]) for r in rows] == [
        ("old-run", "1|2025-01-01", None),  # kept
        (RUN, "2|2025-03-01", "orders"),
        (RUN, "4|2025-03-01", "orders"),
    ]
