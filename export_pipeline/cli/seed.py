"""`export-pipeline seed-demo`: the demo source data, and its customers as partitions.

Reuses what `scripts/dev.sh` runs (export_pipeline.demo.seed and localdev.register_customers),
but against the database of EXPORT_SOURCE_DSN (or --dsn) and the instance of $DAGSTER_HOME.
"""

from __future__ import annotations

import argparse
import os
import sys

import dagster as dg
import psycopg

from export_pipeline.cli.common import EXIT_OK, EXIT_USAGE, CliError
from export_pipeline.cli.context import open_instance
from export_pipeline.demo.seed import is_seeded, seed_demo
from export_pipeline.errors import driver_message
from export_pipeline.localdev import DEMO_YEAR, register_customers
from export_pipeline.settings import SOURCE_DSN


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
            raise CliError(f"cannot seed the demo database: {driver_message(str(exc))}") from exc
    sys.stdout.write(f"{len(valid)} customer partition(s) registered, {len(new)} new\n")
    return EXIT_OK


def seed(
    dsn: str, args: argparse.Namespace, instance: dg.DagsterInstance
) -> tuple[list[str], list[str]]:
    year = args.year or DEMO_YEAR
    if is_seeded(dsn) and not args.reseed:
        sys.stderr.write("demo data already there; leaving it (--reseed recreates it)\n")
    else:
        seed_demo(dsn, rows=args.rows, customers=args.customers, year=year)
        sys.stdout.write(f"seeded {args.rows} events for {args.customers} customers in {year}\n")
    return register_customers(dsn, instance)
