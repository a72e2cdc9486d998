"""Runs of held export assets in this process, against S3 over HTTP, and what they left."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.partitions import CUSTOMERS_PARTITIONS_NAME, build_export_partitions_def
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, S3ExportIOManager
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.spec import Format, parse_spec
from export_pipeline.storage.s3 import MIN_PART_SIZE
from export_pipeline_tests.faults.source import CUSTOMER, PARTITION


@dataclass(frozen=True)
class RunOutcome:
    success: bool
    error: str  # the step failure's message, "" on success
    row_count: int | None  # the materialization's dagster/row_count


def run_export(
    instance: dg.DagsterInstance,
    spec_text: str,
    dataset: str,
    source: PostgresSourceResource,
    endpoint: str,
    bucket: str,
) -> RunOutcome:
    """Materialize `dataset`'s customer-month PARTITION once (no RetryPolicy: the test retries)."""
    spec = parse_spec(spec_text)
    if not instance.has_dynamic_partition(CUSTOMERS_PARTITIONS_NAME, CUSTOMER):
        instance.add_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME, [CUSTOMER])
    partitions_def = build_export_partitions_def(spec.months_start)
    asset = build_export_asset(spec.datasets[dataset], partitions_def, retry_policy=None)
    io_manager = S3ExportIOManager(
        s3=ExportS3Resource(endpoint_url=endpoint),
        bucket=bucket,
        part_size_bytes=MIN_PART_SIZE,
    )
    result = dg.materialize(
        [asset],
        instance=instance,
        partition_key=PARTITION,
        resources={"source": source, EXPORTS_IO_MANAGER_KEY: io_manager},
        raise_on_error=False,
    )
    failures = [e for e in result.all_events if e.event_type is dg.DagsterEventType.STEP_FAILURE]
    error = failures[0].step_failure_data.error if failures else None
    rows = None
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        rows = int(metadata["dagster/row_count"].value)  # type: ignore[arg-type]
    return RunOutcome(result.success, error.message if error else "", rows)


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
