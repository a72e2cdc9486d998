"""The one base class for errors a user can fix: bad spec, bad key, bad query, bad settings.

The Dagster layer turns these into a `dg.Failure` with the message alone: no traceback to dig
through, and messages are written never to contain secrets.
"""


class ExportError(Exception):
    """An export cannot run as configured; the message says what to change."""


def first_line(message: str, fallback: str = "no message from the server") -> str:
    """The first non-empty line of a driver's error text (PostgreSQL's primary message)."""
    text = message.split("ERROR:", 1)[-1].strip()
    return text.splitlines()[0].strip() if text else fallback
