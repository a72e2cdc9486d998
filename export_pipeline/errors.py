"""The one base class for errors a user can fix: bad spec, bad key, bad query, bad settings.

The Dagster layer turns these into a `dg.Failure` with the message alone: no traceback to dig
through, and messages are written never to contain secrets.
"""


class ExportError(Exception):
    """An export cannot run as configured; the message says what to change."""
