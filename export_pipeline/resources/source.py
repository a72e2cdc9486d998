"""The source database, as a Dagster resource."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from export_pipeline.engine import EngineTuning
from export_pipeline.extract.arrow import DEFAULT_BATCH_SIZE_HINT_BYTES
from export_pipeline.extract.connection import SourceConfig, redact_dsn
from export_pipeline.extract.session import DEFAULT_LOCK_WAIT_SECONDS, SourceSession


class PostgresSourceResource(dg.ConfigurableResource):
    """Read-only access to the PostgreSQL database the exports come from.

    Point `dsn` at a read replica in production (one server: the exports' snapshots and
    partition locks live on it). Sessions are read-only, in UTC, with a statement timeout.
    A run's exports share one `SourceSession` (`session()`): its connections are opened on
    first use and closed when the run's resources are torn down, which also releases the
    run's partition locks.
    """

    dsn: str = Field(
        description="libpq URI or key=value string of the source database; set through "
        "EXPORT_SOURCE_DSN so the password never appears in run config."
    )
    statement_timeout_seconds: int = Field(
        default=3600, description="Server-side timeout for each export statement (0: none)."
    )
    idle_in_transaction_timeout_seconds: int = Field(
        default=300,
        description="The server ends a source session idle inside a transaction this long, so "
        "a stalled client cannot hold a snapshot open (0: none).",
    )
    batch_size_hint_bytes: int = Field(
        default=DEFAULT_BATCH_SIZE_HINT_BYTES,
        description="Arrow batch size asked of the ADBC driver. Memory grows with it (about "
        "three batches per running export).",
    )
    lock_wait_seconds: float = Field(
        default=DEFAULT_LOCK_WAIT_SECONDS,
        gt=0,
        description="How long a run waits for customer-months that another run is writing "
        "before it fails, transient (and is retried).",
    )
    _session: SourceSession | None = PrivateAttr(default=None)

    def session(self) -> SourceSession:
        """This run's source session (made on first use; closed at teardown)."""
        if self._session is None:
            self._session = SourceSession(self.source_config(), self.lock_wait_seconds)
        return self._session

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The DSN may hold a password: keep it out of reprs and logs."""
        for name, value in super().__repr_args__():
            yield name, (redact_dsn(value) if name == "dsn" and isinstance(value, str) else value)

    def engine_tuning(self) -> EngineTuning:
        return EngineTuning(batch_size_hint_bytes=self.batch_size_hint_bytes)

    def source_config(self) -> SourceConfig:
        return SourceConfig(
            self.dsn,
            statement_timeout_seconds=self.statement_timeout_seconds,
            idle_in_transaction_timeout_seconds=self.idle_in_transaction_timeout_seconds,
        )
