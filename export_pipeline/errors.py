"""Errors of the export, and whether trying again can help.

`ExportError` is what a user sees: a message that says what went wrong and never contains a
secret. `transient` separates what may pass on its own (a dropped connection, a replica
conflict, S3 5xx or SlowDown) from what never will (a bad spec, a type-contract violation, a
permission denial, a missing table), so a `RetryPolicy` retries only the first kind.
"""

from __future__ import annotations


class ExportError(Exception):
    """An export failed; the message says what happened and, if a user must act, what to do."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def driver_message(message: str, fallback: str = "no message from the server") -> str:
    """PostgreSQL's primary message in a driver's error text: what follows `ERROR:`, up to
    the end of its line (the query and context lines that follow are dropped)."""
    text = message.split("ERROR:", 1)[-1].strip()
    return text.splitlines()[0].strip() if text else fallback
