"""The exporter's writable state database, as a Dagster resource."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from export_pipeline.extract.connection import redact_dsn
from export_pipeline.state.db import STATE_DSN_VARIABLE, StateDatabaseError


class ExportStateResource(dg.ConfigurableResource):
    """Where the exporter keeps its own tables (`export_requests`, `export_failures`).

    Not the source: the source connection is read-only. The tables are created on first use.
    """

    dsn: str | None = Field(
        default=None,
        description="libpq URI of a database the exporter may write; set through "
        "EXPORT_STATE_DSN. Unset: the request and failure sensors fail their ticks.",
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The DSN may hold a password: keep it out of reprs and logs."""
        for name, value in super().__repr_args__():
            yield name, (redact_dsn(value) if name == "dsn" and isinstance(value, str) else value)

    def require_dsn(self) -> str:
        if not self.dsn:
            raise StateDatabaseError(
                f"{STATE_DSN_VARIABLE} is not set: export requests and failure records need a "
                "writable PostgreSQL database (a libpq URI, not the read-only source)"
            )
        return self.dsn
