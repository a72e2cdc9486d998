"""Which failures may pass if the export is tried again, and which never will.

Transient: connection failures and drops (SQLSTATE class 08, `pg_terminate_backend` 57P01,
server shutdown 57P02/57P03), serialization and recovery conflicts on a replica (40001, 40P01),
lack of resources (class 53), S3 5xx/SlowDown/timeouts and network errors. Everything else is
permanent: spec and settings errors, type-contract violations, permission denials (42501),
missing tables (42P01), other SQL errors and statement timeouts (57014: the same query would
time out again; raise `statement_timeout_seconds` instead). Pure: no Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from export_pipeline.errors import ExportError

TRANSIENT_SQLSTATE_CLASSES = ("08", "53")
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "58030"})
TRANSIENT_S3_CODES = frozenset(
    {
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
    }
)
# libpq's text when a stream breaks: ADBC reports mid-stream errors as OSError without the
# SQLSTATE, so these are recognised by PostgreSQL's own wording.
_TRANSIENT_TEXT = re.compile(
    r"terminating connection|server closed the connection|could not receive data|"
    r"connection to server .* failed|conflict with recovery|could not serialize access|"
    r"deadlock detected|the database system is (?:shutting down|starting up|in recovery mode)|"
    r"SSL SYSCALL error|no connection to the server",
    re.IGNORECASE,
)


def transient_sqlstate(sqlstate: str | None) -> bool:
    if not sqlstate:
        return False
    return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith(TRANSIENT_SQLSTATE_CLASSES)


def is_transient(exc: BaseException) -> bool:
    """True when trying again may succeed. The first error in the chain that says, decides."""
    for error in _chain(exc):
        verdict = _verdict(error)
        if verdict is not None:
            return verdict
    return False


def _verdict(error: BaseException) -> bool | None:
    if isinstance(error, ExportError):
        return True if error.transient else None  # a wrapper may still chain the real cause
    if isinstance(error, psycopg.Error):
        if error.sqlstate:
            return transient_sqlstate(error.sqlstate)
        return isinstance(error, psycopg.OperationalError)  # connection-level, no SQLSTATE
    sqlstate = getattr(error, "sqlstate", None)  # adbc_driver_manager.Error
    if isinstance(sqlstate, str) and sqlstate:
        return transient_sqlstate(sqlstate)
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code in TRANSIENT_S3_CODES or status.startswith("5")
    if isinstance(
        error,
        (EndpointConnectionError, ReadTimeoutError, ConnectionClosedError, BotoConnectionError),
    ):
        return True
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError) and _TRANSIENT_TEXT.search(str(error)):
        return True
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        suppressed = current.__suppress_context__  # `raise ... from None` ends the chain
        current = current.__cause__ or (None if suppressed else current.__context__)
