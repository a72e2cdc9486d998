"""Runs of held export assets in this process, against S3 over HTTP, and what they left."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from export_pipeline.io_managers.exports import FAILED_PARTITIONS
from export_pipeline.io_managers.metadata import ROW_COUNT, export_asset_key
from export_pipeline.spec import Format, parse_spec
from export_pipeline.storage.s3 import MIN_PART_SIZE
from export_pipeline_tests.faults.source import CUSTOMER, PARTITION
from export_pipeline_tests.harness import (
    add_customers,
    export_definitions,
    export_resources,
    materialize,
    s3_storage,
    step_failures,
)


@dataclass(frozen=True)
class RunOutcome:
    success: bool
    error: str  # the step failure's description, "" on success
    row_count: int | None  # the materialization's dagster/row_count
    failed_partitions: list[dict[str, Any]] = field(default_factory=list)  # the failure's rows
    # (when, message) of the run's warnings, e.g. the in-place retries
    warnings: list[tuple[float, str]] = field(default_factory=list)
    retried_steps: int = 0  # steps Dagster retried (STEP_UP_FOR_RETRY)


def run_export(
    instance: dg.DagsterInstance,
    spec_text: str,
    dataset: str,
    source_dsn: str,
    endpoint: str,
    bucket: str,
    *,
    retry_policy: dg.RetryPolicy | None = None,
    **source_settings: Any,
) -> RunOutcome:
    """Materialize `dataset`'s customer-month PARTITION once, through the harness's
    definitions (5 MiB parts, so a held export has parts out), with `retry_policy`."""
    spec = parse_spec(spec_text)
    if not instance.has_dynamic_partition("customers", CUSTOMER):
        add_customers(instance, [CUSTOMER])
    resources = export_resources(
        source_dsn, s3_storage(endpoint, bucket, part_size_bytes=MIN_PART_SIZE), **source_settings
    )
    defs = export_definitions(
        spec, resources, retry_policy=retry_policy, checks=False, manifest=False
    )
    result = materialize(instance, defs, PARTITION, selection=[export_asset_key(dataset)])
    failures = step_failures(result)
    rows: list[dict[str, Any]] = []
    for event in result.all_events:
        user = event.step_failure_data.user_failure_data if event.is_step_failure else None
        if user is not None and FAILED_PARTITIONS in user.metadata:
            rows = list(user.metadata[FAILED_PARTITIONS].value)  # type: ignore[arg-type]
    row_count = None
    for materialization in result.get_asset_materialization_events():
        metadata = materialization.materialization.metadata
        row_count = int(metadata[ROW_COUNT].value)  # type: ignore[arg-type]
    warnings = [
        (entry.timestamp, entry.user_message)
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event is None and entry.level in (logging.WARNING, "WARNING")
    ]
    retried = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    return RunOutcome(
        success=result.success,
        error="\n".join(failures.values()),
        row_count=row_count,
        failed_partitions=rows,
        warnings=warnings,
        retried_steps=len(retried),
    )


def file_rows(fmt: Format, data: bytes) -> list[dict[str, Any]]:
    """The rows of an uncompressed export file, as dicts (CSV values as text)."""
    if fmt is Format.PARQUET:
        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode()
    if fmt is Format.JSONL:
        return [json.loads(line) for line in text.splitlines()]
    if fmt is Format.JSON:
        parsed: list[dict[str, Any]] = json.loads(text)
        return parsed
    header, *lines = text.splitlines()
    names = header.split(",")
    return [dict(zip(names, line.split(","), strict=True)) for line in lines]
