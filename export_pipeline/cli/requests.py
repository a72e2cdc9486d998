"""`export-pipeline requests [--status S ...]`: on-demand export requests and their outcome,
from the export_requests table of the state database (EXPORT_STATE_DSN)."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict

from export_pipeline.cli.common import EXIT_OK, first_line
from export_pipeline.cli.output import print_json, print_table
from export_pipeline.state.db import STATE_DSN_VARIABLE
from export_pipeline.state.requests import list_requests


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
