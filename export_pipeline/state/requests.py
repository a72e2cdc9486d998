"""On-demand export requests: a row per request, and its way through the states.

    pending -> queued (a run was requested, run_key set) -> running -> succeeded | failed
    pending -> failed (the request cannot run: unknown dataset, customer, month)

Applications submit with `submit_request` or a plain SQL INSERT (docs/requests-and-alerts.md);
the Dagster sensor claims pending rows, and run-status sensors record the outcome. Pure: no
Dagster here. SQL is composed with psycopg.sql and bound parameters only.

    python -m export_pipeline.state.requests submit CUSTOMER YYYY-MM [--dataset X ...]
    python -m export_pipeline.state.requests show ID
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row

from export_pipeline.errors import ExportError
from export_pipeline.partitions import Month, validate_customer_key
from export_pipeline.state.db import STATE_DSN_VARIABLE, connect

_DATASET_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_REQUESTER_RE = re.compile(r"[^\x00-\x1f\x7f]{0,200}")
_COLUMNS = sql.SQL(", ").join(
    sql.Identifier(c)
    for c in (
        "id",
        "customer",
        "month",
        "datasets",
        "requester",
        "status",
        "run_key",
        "run_id",
        "uris",
        "error",
    )
)


class RequestError(ExportError, ValueError):
    """An export request cannot be accepted; the message says which field and why."""


@dataclass(frozen=True)
class ExportRequest:
    id: int
    customer: str
    month: str
    datasets: list[str] | None
    requester: str
    status: str
    run_key: str | None = None
    run_id: str | None = None
    uris: list[str] | None = None
    error: str | None = None


@dataclass(frozen=True)
class ListedRequest(ExportRequest):
    """A request with its times, as `list_requests` returns it."""

    requested_at: datetime | None = None
    updated_at: datetime | None = None


STATUSES = ("pending", "queued", "running", "succeeded", "failed")


def run_key_for(request_id: int) -> str:
    """The Dagster run key of a request: stable, so a request never runs twice."""
    return f"export-request-{request_id}"


def check_request(
    customer: str, month: str, datasets: Sequence[str] | None, requester: str
) -> tuple[str, Month, list[str] | None, str]:
    """The request's values, normalised, or a RequestError naming the bad one."""
    customer = validate_customer_key(customer)
    parsed = Month.parse(month)
    if datasets is not None:
        datasets = list(dict.fromkeys(datasets))  # de-duplicated, order kept
        if not datasets:
            raise RequestError("datasets must not be empty (omit it to export every dataset)")
        for name in datasets:
            if not isinstance(name, str) or not _DATASET_RE.fullmatch(name):
                raise RequestError(f"dataset name {name!r} is not a valid dataset name")
    if not isinstance(requester, str) or not _REQUESTER_RE.fullmatch(requester):
        raise RequestError("requester must be at most 200 characters, without control characters")
    return customer, parsed, datasets, requester


def submit_request(
    dsn: str,
    customer: str,
    month: str,
    datasets: Sequence[str] | None = None,
    requester: str = "",
) -> int:
    """Record a pending request and return its id. `datasets=None` means every dataset."""
    customer, parsed, names, requester = check_request(customer, month, datasets, requester)
    query = sql.SQL(
        "INSERT INTO export_requests (customer, month, datasets, requester) "
        "VALUES (%s, %s, %s, %s) RETURNING id"
    )
    with connect(dsn) as conn, conn.transaction():
        row = conn.execute(query, (customer, str(parsed), names, requester)).fetchone()
    assert row is not None
    return int(row[0])


def get_request(dsn: str, request_id: int) -> ExportRequest | None:
    query = sql.SQL("SELECT {} FROM export_requests WHERE id = %s").format(_COLUMNS)
    with connect(dsn) as conn:
        return (
            conn.cursor(row_factory=class_row(ExportRequest))
            .execute(query, (request_id,))
            .fetchone()
        )


def list_requests(
    dsn: str,
    statuses: Sequence[str] | None = None,
    customer: str | None = None,
    limit: int = 50,
) -> list[ListedRequest]:
    """The newest requests first, optionally only those in `statuses` or of `customer`."""
    for status in statuses or ():
        if status not in STATUSES:
            raise RequestError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    conditions = [sql.SQL("TRUE")]
    params: list[Any] = []
    if statuses:
        conditions.append(sql.SQL("status = ANY(%s)"))
        params.append(list(statuses))
    if customer is not None:
        conditions.append(sql.SQL("customer = %s"))
        params.append(customer)
    query = sql.SQL(
        "SELECT {}, requested_at, updated_at FROM export_requests WHERE {} "
        "ORDER BY id DESC LIMIT %s"
    ).format(_COLUMNS, sql.SQL(" AND ").join(conditions))
    with connect(dsn) as conn:
        cursor = conn.cursor(row_factory=class_row(ListedRequest))
        return cursor.execute(query, (*params, limit)).fetchall()


def claim_pending(
    dsn: str, rejection: Callable[[ExportRequest], str | None], limit: int = 100
) -> tuple[list[ExportRequest], list[ExportRequest]]:
    """Move up to `limit` pending requests to `queued` (with their run key), or to `failed`
    when `rejection` returns an error for them; returns (queued, failed), in id order.

    One transaction with row locks (SKIP LOCKED): two concurrent callers never claim the same
    request, and a caller that dies before committing leaves the requests pending.
    """
    select = sql.SQL(
        "SELECT {} FROM export_requests WHERE status = 'pending' "
        "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
    ).format(_COLUMNS)
    queue = sql.SQL(
        "UPDATE export_requests SET status = 'queued', run_key = %s, updated_at = now() "
        "WHERE id = %s"
    )
    fail = sql.SQL(
        "UPDATE export_requests SET status = 'failed', error = %s, updated_at = now() WHERE id = %s"
    )
    queued: list[ExportRequest] = []
    failed: list[ExportRequest] = []
    with connect(dsn) as conn, conn.transaction():
        rows = conn.cursor(row_factory=class_row(ExportRequest)).execute(select, (limit,))
        for request in rows.fetchall():
            error = rejection(request)
            if error is None:
                key = run_key_for(request.id)
                conn.execute(queue, (key, request.id))
                queued.append(_replace(request, status="queued", run_key=key))
            else:
                conn.execute(fail, (error, request.id))
                failed.append(_replace(request, status="failed", error=error))
    return queued, failed


def queued_after(dsn: str, after_id: int, limit: int = 100) -> list[ExportRequest]:
    """Requests queued with an id above `after_id`, i.e. claimed by a sensor tick whose result
    (and cursor) was never recorded; asking for their runs again is safe (same run keys)."""
    query = sql.SQL(
        "SELECT {} FROM export_requests WHERE status = 'queued' AND id > %s ORDER BY id LIMIT %s"
    ).format(_COLUMNS)
    with connect(dsn) as conn:
        cursor = conn.cursor(row_factory=class_row(ExportRequest))
        return cursor.execute(query, (after_id, limit)).fetchall()


def mark_running(dsn: str, request_id: int, run_id: str) -> bool:
    """queued/pending -> running; also a re-execution starting after a failed run."""
    query = sql.SQL(
        "UPDATE export_requests SET status = 'running', run_id = %(run)s, error = NULL, "
        "updated_at = now() WHERE id = %(id)s AND (status IN ('pending', 'queued') "
        "OR (status = 'failed' AND run_id IS DISTINCT FROM %(run)s))"
    )
    return _update(dsn, query, {"id": request_id, "run": run_id})


def mark_succeeded(dsn: str, request_id: int, run_id: str, uris: Sequence[str]) -> bool:
    query = sql.SQL(
        "UPDATE export_requests SET status = 'succeeded', run_id = %(run)s, uris = %(uris)s, "
        "error = NULL, updated_at = now() WHERE id = %(id)s"
    )
    return _update(dsn, query, {"id": request_id, "run": run_id, "uris": list(uris)})


def mark_failed(dsn: str, request_id: int, run_id: str | None, error: str) -> bool:
    query = sql.SQL(
        "UPDATE export_requests SET status = 'failed', run_id = COALESCE(%(run)s, run_id), "
        "error = %(error)s, updated_at = now() WHERE id = %(id)s AND status <> 'succeeded'"
    )
    return _update(dsn, query, {"id": request_id, "run": run_id, "error": error})


def _update(dsn: str, query: sql.SQL, params: dict[str, Any]) -> bool:
    with connect(dsn) as conn, conn.transaction():
        return conn.execute(query, params).rowcount == 1


def _replace(request: ExportRequest, **changes: Any) -> ExportRequest:
    return ExportRequest(**{**asdict(request), **changes})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Submit or show on-demand export requests.")
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="record a request; prints its id")
    submit.add_argument("customer")
    submit.add_argument("month", help="YYYY-MM")
    submit.add_argument("--dataset", action="append", dest="datasets", help="repeatable")
    submit.add_argument("--requester", default=os.environ.get("USER", ""))
    show = commands.add_parser("show", help="print a request as JSON")
    show.add_argument("id", type=int)
    args = parser.parse_args(argv)
    dsn = os.environ.get(STATE_DSN_VARIABLE, "")
    try:
        if args.command == "submit":
            request_id = submit_request(
                dsn, args.customer, args.month, args.datasets, args.requester
            )
            sys.stdout.write(f"{request_id}\n")
            return 0
        request = get_request(dsn, args.id)
    except ExportError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if request is None:
        sys.stderr.write(f"error: no request {args.id}\n")
        return 1
    sys.stdout.write(json.dumps(asdict(request), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
