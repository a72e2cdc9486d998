"""The source database, as a Dagster resource."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from export_pipeline.engine import EngineTuning
from export_pipeline.extract.arrow import DEFAULT_BATCH_SIZE_HINT_BYTES
from export_pipeline.extract.connection import SourceConfig, redact_dsn
from export_pipeline.formats.parquet import DEFAULT_ROW_GROUP_BYTES, DEFAULT_ROW_GROUP_ROWS


class PostgresSourceResource(dg.ConfigurableResource):
    """Read-only access to the PostgreSQL database the exports come from.

    Point `dsn` at a read replica in production. Sessions are read-only, in UTC, with a
    statement timeout.
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
    parquet_row_group_rows: int = Field(
        default=DEFAULT_ROW_GROUP_ROWS,
        gt=0,
        description="A Parquet row group closes at this many rows (or at "
        "`parquet_row_group_bytes`, whichever comes first). About 128k rows is what DuckDB, "
        "Spark and Athena scan well; memory grows with it (one row group of Arrow data per "
        "running export).",
    )
    parquet_row_group_bytes: int = Field(
        default=DEFAULT_ROW_GROUP_BYTES,
        gt=0,
        description="A Parquet row group closes once this much Arrow data is pending, even "
        "before `parquet_row_group_rows`: bounds the memory of wide rows.",
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The DSN may hold a password: keep it out of reprs and logs."""
        for name, value in super().__repr_args__():
            yield name, (redact_dsn(value) if name == "dsn" and isinstance(value, str) else value)

    def engine_tuning(self) -> EngineTuning:
        return EngineTuning(
            batch_size_hint_bytes=self.batch_size_hint_bytes,
            parquet_row_group_rows=self.parquet_row_group_rows,
            parquet_row_group_bytes=self.parquet_row_group_bytes,
        )

    def source_config(self) -> SourceConfig:
        return SourceConfig(
            self.dsn,
            statement_timeout_seconds=self.statement_timeout_seconds,
            idle_in_transaction_timeout_seconds=self.idle_in_transaction_timeout_seconds,
        )
