"""Connections to the source database that cannot write and cannot run forever.

Every session is read-only (`default_transaction_read_only`), has a statement timeout, runs
in UTC and reads rows in a repeatable order (no parallel workers, no synchronized scans), set
through libpq `options` so both psycopg and the ADBC driver (also libpq) get them
before the first query. A connection pooler (PgBouncer) or proxy may drop `options`; then the
month windows would silently shift. So every new session is checked in one round trip
(`SESSION_SETTINGS`) and refused, permanently, if a setting that shapes the file did not take.

An export's rows are read in one REPEATABLE READ transaction, opened after the replica check
(engine.py): text formats on the psycopg connection, Parquet on the ADBC one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from export_pipeline.errors import ExportError

APPLICATION_NAME = "export_pipeline"


class SourceConnectionError(ExportError, RuntimeError):
    """The source database could not be reached; the message never contains the password."""


class SessionSettingsError(SourceConnectionError):
    """The session did not take the settings sent in libpq `options` (permanent)."""


# What every session must show, in the order of SESSION_SETTINGS. TimeZone accepts PostgreSQL's
# other names of UTC, so a server whose own default is UTC passes even behind a pooler.
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu"})
# (name, what conninfo() sends, what the session may show)
EXPECTED_SETTINGS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("TimeZone", "UTC", _UTC_NAMES),
    ("default_transaction_read_only", "on", frozenset({"on"})),
    ("DateStyle", "ISO, YMD", frozenset({"ISO, YMD"})),
    ("IntervalStyle", "postgres", frozenset({"postgres"})),
    ("max_parallel_workers_per_gather", "0", frozenset({"0"})),
    ("synchronize_seqscans", "off", frozenset({"off"})),
)
SESSION_SETTINGS = (
    sql.SQL("SELECT {}")
    .format(
        sql.SQL(", ").join(
            sql.SQL("current_setting({}) AS {}").format(sql.Literal(name), sql.Identifier(name))
            for name, _, _ in EXPECTED_SETTINGS
        )
    )
    .as_string()
)


def check_session_settings(shown: Sequence[object], driver: str) -> None:
    """Raise `SessionSettingsError` unless `shown` (SESSION_SETTINGS' row) is what we sent."""
    wrong = [
        f"{name}={value}"
        for (name, _, allowed), value in zip(EXPECTED_SETTINGS, shown, strict=True)
        if str(value) not in allowed
    ]
    if wrong:
        sent = ", ".join(f"{name}={value}" for name, value, _ in EXPECTED_SETTINGS)
        raise SessionSettingsError(
            f"the source connection ({driver}) ignored the session settings sent in libpq "
            f"options (wanted {sent}; the session has {', '.join(wrong)}): a connection "
            "pooler such as PgBouncer drops startup options. Connect the exports directly "
            "to PostgreSQL (or a session-mode pool that forwards options), or set them for "
            "the export role: ALTER ROLE <role> SET TimeZone = 'UTC' (and the others)",
            transient=False,
        )


@dataclass(frozen=True)
class SourceConfig:
    """How to reach the source database.

    dsn: libpq URI or key=value string. It may hold a password: never log or repr it.
    statement_timeout_seconds: server-side limit for each statement (0 disables).
    idle_in_transaction_timeout_seconds: the server ends a session that sits idle inside a
        transaction this long (a stalled or half-dead client), so it cannot hold a snapshot
        that blocks vacuum, or replication on a replica (0 disables).
    """

    dsn: str
    statement_timeout_seconds: int = 3600
    connect_timeout_seconds: int = 10
    idle_in_transaction_timeout_seconds: int = 300

    def __repr__(self) -> str:
        return f"SourceConfig(dsn={redact_dsn(self.dsn)!r}, ...)"

    def conninfo(self) -> str:
        """The DSN with our session settings merged into libpq `options`."""
        try:
            params = conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError:
            raise SourceConnectionError(
                "EXPORT_SOURCE_DSN is not a valid libpq connection string or URI"
            ) from None
        ours = (
            "-c default_transaction_read_only=on"
            f" -c statement_timeout={int(self.statement_timeout_seconds) * 1000}"
            " -c idle_in_transaction_session_timeout="
            f"{int(self.idle_in_transaction_timeout_seconds) * 1000}"
            " -c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres"
            " -c extra_float_digits=1 -c client_encoding=UTF8"
            # Rows in the same order on every run, so a retry on an unchanged source writes a
            # byte-identical file: no parallel workers (their rows interleave at random; also,
            # an export then holds exactly one backend, which the source pool counts), and
            # sequential scans start at the first block (a synchronized scan of a large table
            # starts wherever another scan is).
            " -c max_parallel_workers_per_gather=0 -c synchronize_seqscans=off"
        )
        existing = str(params.pop("options", "") or "")
        options = f"{existing} {ours}".strip()
        params.setdefault("application_name", APPLICATION_NAME)
        params.setdefault("connect_timeout", str(self.connect_timeout_seconds))
        return make_conninfo("", **{**params, "options": options})


# Connection failures a retry cannot fix: wrong credentials, names or access rules.
_PERMANENT_CONNECT = re.compile(
    r"authentication failed|password|does not exist|no pg_hba\.conf entry|permission denied|"
    r"not permitted to log in|invalid (?:connection option|sslmode|port)|certificate",
    re.IGNORECASE,
)


def connect_failure_is_transient(message: str) -> bool:
    """A refused, reset or timed-out connection may work later; a rejected login will not."""
    return not _PERMANENT_CONNECT.search(message)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, for messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable dsn>"
    if "password" in params:
        params["password"] = "***"
    return redact_password(make_conninfo("", **params), dsn)


def _password_pieces(dsn: str) -> list[str]:
    """Every text that may be (part of) the password, longest first.

    libpq's parse of the password, and, for a URI, what its author meant: everything between
    the user's `:` and the last `@` of the authority. A password with an unencoded `@`, `/`,
    `?` or `#` is split by libpq, and the rest lands in the host, port or database name, which
    errors then echo ("failed to resolve host '<rest>@db'"): each piece is scrubbed too.
    """
    pieces: set[str] = set()
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        pieces.add(str(password))
    scheme, sep, rest = dsn.partition("://")
    if sep and scheme.lower() in {"postgres", "postgresql"} and "@" in rest:
        userinfo = rest[: rest.rfind("@")]
        if ":" in userinfo:
            meant = userinfo.split(":", 1)[1]
            for text in (meant, unquote(meant)):
                pieces.add(text)
                pieces.update(p for p in re.split(r"[@/?#:%]", text) if len(p) >= 3)
    return sorted((p for p in pieces if p), key=len, reverse=True)


def redact_password(message: str, dsn: str) -> str:
    """`message` with the DSN's password, and every piece of it, replaced by `***`."""
    for piece in _password_pieces(dsn):
        message = message.replace(piece, "***")
    return message


def open_connection(config: SourceConfig) -> psycopg.Connection:
    """A psycopg connection in a read-only UTC session whose settings were verified, in
    autocommit mode: a statement on its own is its own transaction; an export opens a
    REPEATABLE READ transaction explicitly (`engine.begin_snapshot`), so that BEGIN and the
    statement that takes the snapshot cost one round trip. The caller closes it."""
    try:
        conn = psycopg.connect(config.conninfo(), autocommit=True)
    except psycopg.OperationalError as exc:
        # Not chained: libpq's text may echo parts of the conninfo; the message is scrubbed.
        raise SourceConnectionError(
            _scrub(str(exc), config.dsn), transient=connect_failure_is_transient(str(exc))
        ) from None
    try:
        shown = conn.execute(SESSION_SETTINGS).fetchone()  # outside any transaction
        assert shown is not None
        check_session_settings(shown, "psycopg")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def connect(config: SourceConfig) -> Iterator[psycopg.Connection]:
    """`open_connection`, closed on exit."""
    conn = open_connection(config)
    try:
        yield conn
    finally:
        conn.close()


def _scrub(message: str, dsn: str) -> str:
    """libpq errors can echo parts of the conninfo; strip the password (and its pieces)."""
    return f"cannot connect to the source database: {redact_password(message, dsn).strip()}"
