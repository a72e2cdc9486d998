from __future__ import annotations

import psycopg

from export_pipeline.demo.seed import is_seeded, seed_demo


def test_seed_generates_the_requested_rows(scratch_dsn: str) -> None:
    assert not is_seeded(scratch_dsn)
    seed_demo(scratch_dsn, rows=1000, customers=3, year=2024)
    assert is_seeded(scratch_dsn)
    with psycopg.connect(scratch_dsn) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("customers", "events", "orders", "invoices")
        }
        span = conn.execute(
            "SELECT min(occurred_at) >= '2024-01-01Z', max(occurred_at) < '2025-01-01Z',"
            " count(DISTINCT customer_id), count(DISTINCT date_trunc('month', occurred_at))"
            " FROM events"
        ).fetchone()
    assert counts == {"customers": 3, "events": 1000, "orders": 100, "invoices": 3 * 52}
    assert span == (True, True, 3, 12)
