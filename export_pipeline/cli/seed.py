"""`export-pipeline seed-demo`: the demo source data, and its customers as partitions.

Reuses what `scripts/dev.sh` runs (export_pipeline.demo.seed and localdev.register_customers),
but against the database of EXPORT_SOURCE_DSN (or --dsn) and the instance of $DAGSTER_HOME.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import dagster as dg
import psycopg

from export_pipeline.cli.common import EXIT_OK, EXIT_USAGE, CliError, open_instance
from export_pipeline.demo.seed import is_seeded, seed_demo
from export_pipeline.errors import first_line
from export_pipeline.localdev import DEMO_YEAR, register_customers
from export_pipeline.settings import SOURCE_DSN


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "seed-demo",
        help="create the demo source data and register its customers as partitions",
        description="Create and fill the demo tables (customers, events, orders, invoices) in "
        "the database of EXPORT_SOURCE_DSN, unless they exist (--reseed recreates them), then "
        "add every customer as a 'customers' partition of the instance of $DAGSTER_HOME. "
        "The source must be writable for this; use a scratch database, never a replica.",
        epilog="examples:\n"
        "  export-pipeline seed-demo\n"
        "  export-pipeline seed-demo --dsn postgresql://postgres@127.0.0.1/demo --rows 1000000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dsn", help="database to seed (default: EXPORT_SOURCE_DSN)")
    parser.add_argument("--rows", type=int, default=50_000, help="demo events (default 50000)")
    parser.add_argument("--customers", type=int, default=10, help="demo customers (default 10)")
    parser.add_argument("--year", type=int, default=DEMO_YEAR, help=f"default {DEMO_YEAR}")
    parser.add_argument("--reseed", action="store_true", help="drop and recreate the demo data")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    dsn = args.dsn or os.environ.get(SOURCE_DSN, "")
    if not dsn:
        raise CliError(f"no database to seed: set {SOURCE_DSN} or pass --dsn", EXIT_USAGE)
    if args.rows < 1 or args.customers < 1:
        raise CliError("--rows and --customers must be at least 1", EXIT_USAGE)
    with open_instance() as instance:
        try:
            valid, new = seed(dsn, args, instance)
        except psycopg.Error as exc:
            raise CliError(f"cannot seed the demo database: {first_line(str(exc))}") from exc
    sys.stdout.write(f"{len(valid)} customer partition(s) registered, {len(new)} new\n")
    return EXIT_OK


def seed(
    dsn: str, args: argparse.Namespace, instance: dg.DagsterInstance
) -> tuple[list[str], list[str]]:
    if is_seeded(dsn) and not args.reseed:
        sys.stderr.write("demo data already there; leaving it (--reseed recreates it)\n")
    else:
        seed_demo(dsn, rows=args.rows, customers=args.customers, year=args.year)
        sys.stdout.write(
            f"seeded {args.rows} events for {args.customers} customers in {args.year}\n"
        )
    return register_customers(dsn, instance)
