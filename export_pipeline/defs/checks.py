"""Asset checks on every export: the file is there, its rows, empty months, schema changes.

One `@dg.multi_asset_check` per dataset, partitioned like the exports (customer x month), so a
result is recorded per partition. It depends on the asset, so a run that materializes a
partition runs the checks afterwards in the same run (the UI's *Materialize* selects an
asset's checks too); a run of the checks alone evaluates the partition in its
`dagster/partition` tag (`export_checks_job`, or *Execute* on the asset's Checks tab).

The checks read the partition's latest materialization and the same customer's previous month
from the instance, and the storage through the export IO manager (resource key
`exports_io_manager`): `ExportFiles.handle` does the HEAD/stat, `verify.py` the comparisons.
"""

import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import dagster as dg

from export_pipeline.errors import ExportError
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, ExportFiles
from export_pipeline.io_managers.metadata import latest_metadata, plain_values
from export_pipeline.partitions import CUSTOMER_DIMENSION, MONTH_DIMENSION, split_partition_key
from export_pipeline.spec import DatasetSpec
from export_pipeline.storage.files import StoredFile
from export_pipeline.verify import (
    Columns,
    Verdict,
    verify_not_empty_after_rows,
    verify_row_count,
    verify_schema_unchanged,
)

FILE_PRESENT = "file_present"
ROW_COUNT = "row_count_matches_file"
NOT_EMPTY = "not_empty_after_rows"
SCHEMA = "schema_unchanged"

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN
SEVERITY = {FILE_PRESENT: ERROR, ROW_COUNT: ERROR, NOT_EMPTY: WARN, SCHEMA: WARN}
DESCRIPTIONS = {
    FILE_PRESENT: "The object is at the recorded uri with the recorded size (a HEAD or a stat).",
    ROW_COUNT: "Parquet: the footer's row count equals dagster/row_count. Text formats are "
    "not counted (that needs a full download); the result says so.",
    NOT_EMPTY: "Warns when the month has no rows but the customer's previous month had some.",
    SCHEMA: "Warns when the columns (names, PostgreSQL types, order) differ from the "
    "customer's previous month.",
}

export_checks_job = dg.define_asset_job(
    "export_checks_job",
    selection=dg.AssetSelection.all_asset_checks(),
    description="The export checks alone, for the partition in the run's dagster/partition "
    "tag (customer|YYYY-MM-01); nothing is exported.",
)


class ExportFilesSource(Protocol):
    """What the checks need from the export IO manager."""

    def files(self) -> ExportFiles: ...


def build_export_checks(
    dataset: DatasetSpec, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    asset_key = dg.AssetKey(["exports", dataset.name])
    with warnings.catch_warnings():
        # Partitioned checks are a preview in Dagster 1.13; chosen knowingly (docs/checks.md)
        # and pinned by export_pipeline_tests/defs/test_checks.py.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [
            dg.AssetCheckSpec(
                name, asset=asset_key, partitions_def=partitions_def, description=text
            )
            for name, text in DESCRIPTIONS.items()
        ]

    @dg.multi_asset_check(
        specs=specs,
        name=f"exports__{dataset.name}__checks",
        can_subset=True,
        required_resource_keys={EXPORTS_IO_MANAGER_KEY},
        description=f"Checks of the {dataset.name} export partitions.",
    )
    def _checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        manager: ExportFilesSource = getattr(context.resources, EXPORTS_IO_MANAGER_KEY)
        selected = {key.name for key in context.selected_asset_check_keys}
        verdicts = evaluate(
            context.instance, manager.files(), asset_key, context.partition_key, selected
        )
        for name, verdict in verdicts.items():
            yield dg.AssetCheckResult(asset_key=asset_key, **_result_fields(name, verdict))

    return _checks


def _result_fields(name: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "check_name": name,
        "passed": verdict.passed,
        "severity": SEVERITY[name],
        "description": verdict.description,
        "metadata": verdict.metadata,
    }


def check_evaluations(
    instance: dg.DagsterInstance, files: ExportFiles, event: dg.AssetMaterialization
) -> list[dg.AssetCheckEvaluation]:
    """Every check of the partition `event` just recorded, as events, for runs that write
    partitions outside the asset's own step (monthly_exports_job): the same verdicts as the
    checks themselves, from the event's own metadata (no instance query for it)."""
    asset_key, partition = event.asset_key, str(event.partition)
    recorded = plain_values(event.metadata)
    return [
        dg.AssetCheckEvaluation(
            asset_key=asset_key, partition=partition, **_result_fields(name, verdict)
        )
        for name, verdict in evaluate(
            instance, files, asset_key, partition, set(SEVERITY), recorded
        ).items()
    ]


def evaluate(
    instance: dg.DagsterInstance,
    files: ExportFiles,
    asset_key: dg.AssetKey,
    partition: str,
    selected: set[str],
    recorded: dict[str, Any] | None = None,
) -> dict[str, Verdict]:
    """A verdict for each selected check of one partition (`recorded`: its latest
    materialization's metadata, read from the instance when not given)."""
    dataset = asset_key.path[-1]
    customer, month = split_partition_key(partition)
    if recorded is None:
        recorded = latest_metadata(instance, asset_key, partition)
    if recorded is None:
        missing = Verdict(
            False,
            f"{asset_key.to_user_string()} {partition} has not been materialized: nothing to check",
        )
        return {name: missing for name in DESCRIPTIONS if name in selected}
    verdicts: dict[str, Verdict] = {}
    if selected & {FILE_PRESENT, ROW_COUNT}:
        stored: StoredFile | None = None
        try:
            stored = files.handle(dataset, customer, month, recorded)
            verdicts[FILE_PRESENT] = Verdict(
                True,
                f"{stored.uri}: {stored.size_bytes} bytes, as recorded",
                {"uri": stored.uri, "size_bytes": stored.size_bytes},
            )
        except (ExportError, KeyError, ValueError) as exc:
            reason = f"materialization lacks {exc}" if isinstance(exc, KeyError) else str(exc)
            verdicts[FILE_PRESENT] = Verdict(False, reason, {"uri": str(recorded.get("uri"))})
        if stored is None:
            verdicts[ROW_COUNT] = Verdict(
                False, f"rows not checked: {verdicts[FILE_PRESENT].description}"
            )
        else:
            verdicts[ROW_COUNT] = verify_row_count(stored)
    previous = month.previous()
    if selected & {NOT_EMPTY, SCHEMA}:
        before_key = str(
            dg.MultiPartitionKey(
                {CUSTOMER_DIMENSION: customer, MONTH_DIMENSION: previous.start.isoformat()}
            )
        )
        before = latest_metadata(instance, asset_key, before_key)
        verdicts[NOT_EMPTY] = verify_not_empty_after_rows(
            int(recorded.get("dagster/row_count", 0)),
            None if before is None else int(before.get("dagster/row_count", 0)),
            previous,
        )
        verdicts[SCHEMA] = verify_schema_unchanged(
            recorded_columns(recorded) or [],
            None if before is None else recorded_columns(before),
            previous,
        )
    return {name: verdict for name, verdict in verdicts.items() if name in selected}


def recorded_columns(recorded: Mapping[str, Any]) -> Columns | None:
    schema = recorded.get("dagster/column_schema")
    if not isinstance(schema, dg.TableSchema):
        return None
    return [(column.name, column.type) for column in schema.columns]
