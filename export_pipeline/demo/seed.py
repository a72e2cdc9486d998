"""Seed the demo source database, generating rows server-side (so 10M rows take no client RAM).

    python -m export_pipeline.demo.seed --dsn postgresql://... --rows 50000 --customers 10

`--rows` is the number of events; orders are a tenth of that and invoices one per customer per
week. Timestamps spread evenly over `--year` (UTC), like shared/reference/events.sql.
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources

import psycopg

logger = logging.getLogger(__name__)

_CUSTOMERS = """
INSERT INTO public.customers (id, name, created_at)
SELECT i, (ARRAY['Acme','Globex','Initech','Umbrella','Hooli','Stark','Wayne','Tyrell',
                 'Cyberdyne','Soylent'])[1 + (i - 1) %% 10]
         || CASE WHEN i > 10 THEN ' ' || i ELSE '' END,
       make_timestamptz(%(year)s - 1, 1 + (i %% 12), 1, 0, 0, 0, 'UTC')
FROM generate_series(1, %(customers)s) AS i
"""
_EVENTS = """
INSERT INTO public.events (customer_id, occurred_at, event_type, amount, payload, tags, session_id,
                           is_test)
SELECT 1 + (hashint4(i::int) & 2147483647) %% %(customers)s,
       make_timestamptz(%(year)s, 1, 1, 0, 0, 0, 'UTC') + (i * (interval '365 days' / %(rows)s)),
       (ARRAY['page_view','click','add_to_cart','purchase','signup','login','logout','search'])
         [1 + (i %% 8)],
       CASE WHEN i %% 5 = 0 THEN NULL
            ELSE round(((hashint4(i::int + 7) & 1048575) / 104.8575)::numeric, 2) END,
       jsonb_build_object('path', '/p/' || (i %% 5000),
                          'ua', 'Mozilla/5.0 (X11; Linux x86_64) Chrome/' || (100 + i %% 30),
                          'ref', CASE WHEN i %% 3 = 0 THEN 'google' ELSE 'direct' END,
                          'n', i %% 1000, 'ok', (i %% 2 = 0)),
       ARRAY['tag' || (i %% 7), 'grp' || (i %% 13)],
       md5(i::text)::uuid,
       (i %% 97 = 0)
FROM generate_series(1, %(rows)s) AS i
"""
_ORDERS = """
INSERT INTO public.orders (customer_id, ordered_at, order_number, status, total, currency, items,
                           shipped_on)
SELECT 1 + (hashint4(i::int + 3) & 2147483647) %% %(customers)s,
       make_timestamptz(%(year)s, 1, 1, 0, 0, 0, 'UTC') + (i * (interval '365 days' / %(orders)s)),
       md5('order' || i)::uuid,
       (ARRAY['placed','paid','shipped','cancelled']::public.order_status[])[1 + i %% 4],
       round((5 + (i %% 9973) / 3.7)::numeric, 2),
       (ARRAY['EUR','USD','GBP'])[1 + i %% 3],
       jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (i %% 301), 'qty', 1 + i %% 4,
                                            'price', round((1 + (i %% 997) / 9.0)::numeric, 2))),
       CASE WHEN i %% 4 = 2 THEN (make_date(%(year)s, 1, 1) + (i * 365 / %(orders)s) + 2) END
FROM generate_series(1, %(orders)s) AS i
"""
_INVOICES = """
INSERT INTO public.invoices (customer_id, issued_on, due_on, amount, tax_rate, paid, notes,
                             line_items)
SELECT c, make_date(%(year)s, 1, 1) + w * 7, make_date(%(year)s, 1, 1) + w * 7 + 30,
       round((100 + ((c * 31 + w * 17) %% 5000) * 1.37)::numeric, 2),
       CASE WHEN c %% 3 = 0 THEN NULL ELSE 0.19 + c / 1000.0 END,
       w %% 5 <> 0,
       CASE WHEN w %% 6 = 0 THEN 'Net 30, "priority", see line 2' || chr(10) || 'thanks' END,
       ARRAY['service', 'support ' || w]
FROM generate_series(1, %(customers)s) AS c, generate_series(0, 51) AS w
"""
_INDEXES = """
CREATE INDEX events_customer_occurred_idx ON public.events (customer_id, occurred_at);
CREATE INDEX orders_customer_ordered_idx ON public.orders (customer_id, ordered_at);
CREATE INDEX invoices_customer_issued_idx ON public.invoices (customer_id, issued_on);
"""


def is_seeded(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('public.invoices') IS NOT NULL").fetchone()
        return bool(row and row[0])


def seed_demo(dsn: str, rows: int = 50_000, customers: int = 10, year: int = 2025) -> None:
    """(Re)create the demo tables and fill them. Runs in one transaction."""
    if rows < 1 or customers < 1:
        raise ValueError("--rows and --customers must be at least 1")
    params = {"rows": rows, "customers": customers, "year": year, "orders": max(1, rows // 10)}
    schema = resources.files("export_pipeline.demo").joinpath("schema.sql").read_text()
    with psycopg.connect(dsn) as conn:
        conn.execute(schema)
        for statement in (_CUSTOMERS, _EVENTS, _ORDERS, _INVOICES):
            conn.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement})
        conn.execute(_INDEXES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "VACUUM (ANALYZE) public.customers, public.events, public.orders, public.invoices"
        )
    logger.info("seeded %s events for %s customers in %s", rows, customers, year)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="libpq URI of the database to seed")
    parser.add_argument("--rows", type=int, default=50_000, help="number of events")
    parser.add_argument("--customers", type=int, default=10)
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--if-empty", action="store_true", help="do nothing if already seeded")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.if_empty and is_seeded(args.dsn):
        logger.info("demo database already seeded; leaving it as it is")
        return
    seed_demo(args.dsn, args.rows, args.customers, args.year)


if __name__ == "__main__":
    main()
