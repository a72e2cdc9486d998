"""`export-pipeline requests [--status S ...]`: on-demand export requests and their outcome,
from the export_requests table of the state database (EXPORT_STATE_DSN)."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from typing import Any

from export_pipeline.cli.common import EXIT_OK, first_line
from export_pipeline.cli.output import print_json, print_table
from export_pipeline.state.db import STATE_DSN_VARIABLE
from export_pipeline.state.requests import STATUSES, list_requests


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "requests",
        help="list on-demand export requests and their outcome",
        description="List the rows of export_requests (EXPORT_STATE_DSN), newest first: "
        "pending, queued, running, succeeded (with the files) or failed (with the error). "
        "Submit one with `python -m export_pipeline.state.requests submit` or an INSERT "
        "(docs/requests-and-alerts.md).",
        epilog="examples:\n"
        "  export-pipeline requests\n"
        "  export-pipeline requests --status failed --status pending\n"
        "  export-pipeline requests --customer 3 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--status", action="append", dest="statuses", choices=STATUSES, help="repeatable"
    )
    parser.add_argument("--customer", help="only this customer's requests")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--json", action="store_true", help="print a JSON list for scripts")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    found = list_requests(
        os.environ.get(STATE_DSN_VARIABLE, ""), args.statuses, args.customer, max(1, args.limit)
    )
    if args.json:
        print_json([asdict(r) for r in found])
        return EXIT_OK
    print_table(
        None,
        ["id", "customer", "month", "datasets", "status", "requester", "requested", "outcome"],
        [
            [
                r.id,
                r.customer,
                r.month,
                ", ".join(r.datasets) if r.datasets else "all",
                r.status,
                r.requester,
                r.requested_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if r.requested_at else "",
                first_line(r.error) or " ".join(r.uris or []) or (r.run_id or ""),
            ]
            for r in found
        ],
    )
    return EXIT_OK
