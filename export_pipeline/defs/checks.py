"""Asset checks on every export: the file is there, its rows, empty months, schema changes.

One `@dg.multi_asset_check` per dataset, partitioned like the exports (customer x month), so a
result is recorded per partition. It depends on the asset, so a run that materializes
partitions runs the checks afterwards in the same run, for every partition of the run's range
(the UI's *Materialize* selects an asset's checks too); a run of the checks alone evaluates the
partitions in its partition tags (`export_checks_job`, or *Execute* on the asset's Checks
tab).

Per partition, the checks read its latest materialization and the same customer's previous
month from the instance (a few queries for the whole range), and look at the stored object
once: a HEAD (or a stat), or for Parquet one ranged GET of the file's last bytes, which gives
both the size and the footer. Those requests run on a few threads, so a range's checks overlap
their waiting. `row_count_matches_file` exists for Parquet datasets only: a text file's rows
could only be counted by downloading it.
"""

import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg

from export_pipeline.dagster_private import pool_instance_connections
from export_pipeline.errors import ExportError
from export_pipeline.io_managers.metadata import (
    ROW_COUNT,
    Recorded,
    export_asset_key,
    latest_records,
    recorded_columns,
    recorded_file,
)
from export_pipeline.partitions import (
    partition_order,
    previous_month_partition,
    split_partition_key,
)
from export_pipeline.resources.storage import ExportStorageResource
from export_pipeline.spec import DatasetSpec, Format
from export_pipeline.storage.files import StoredFile
from export_pipeline.storage.writer import ObjectStore
from export_pipeline.verify import (
    PARQUET_TAIL_BYTES,
    Verdict,
    parquet_footer_length,
    verify_not_empty_after_rows,
    verify_row_count,
    verify_schema_unchanged,
    verify_size,
)

FILE_PRESENT = "file_present"
ROW_COUNT_CHECK = "row_count_matches_file"
NOT_EMPTY = "not_empty_after_rows"
SCHEMA = "schema_unchanged"

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN
SEVERITY = {FILE_PRESENT: ERROR, ROW_COUNT_CHECK: ERROR, NOT_EMPTY: WARN, SCHEMA: WARN}
DESCRIPTIONS = {
    FILE_PRESENT: "The object is at the recorded uri with the recorded size (a HEAD, a stat, "
    "or the ranged read of a Parquet file's footer).",
    ROW_COUNT_CHECK: "The Parquet footer's row count equals dagster/row_count.",
    NOT_EMPTY: "Warns when the month has no rows but the customer's previous month had some.",
    SCHEMA: "Warns when the columns (names, PostgreSQL types, order) differ from the "
    "customer's previous month.",
}
CHECK_THREADS = 8  # stored objects looked at at once

export_checks_job = dg.define_asset_job(
    "export_checks_job",
    selection=dg.AssetSelection.all_asset_checks(),
    description="The export checks alone, for the partitions of the run (a partition, or a "
    "range of them); nothing is exported.",
)


def check_names(dataset: DatasetSpec) -> list[str]:
    """The checks a dataset has: the row count only where the file carries one (Parquet)."""
    names = [FILE_PRESENT, ROW_COUNT_CHECK, NOT_EMPTY, SCHEMA]
    return [n for n in names if n != ROW_COUNT_CHECK or dataset.format is Format.PARQUET]


def build_export_checks(
    dataset: DatasetSpec, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    asset_key = export_asset_key(dataset.name)
    with warnings.catch_warnings():
        # Partitioned checks are a preview in Dagster 1.13; chosen knowingly (docs/checks.md)
        # and pinned by export_pipeline_tests/defs/test_checks.py.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [
            dg.AssetCheckSpec(
                name, asset=asset_key, partitions_def=partitions_def, description=DESCRIPTIONS[name]
            )
            for name in check_names(dataset)
        ]

    @dg.multi_asset_check(
        specs=specs,
        name=f"exports__{dataset.name}__checks",
        can_subset=True,
        description=f"Checks of the {dataset.name} export partitions.",
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, export_storage: ExportStorageResource
    ) -> Iterator[dg.AssetCheckEvaluation]:
        partitions = sorted(context.op_execution_context.partition_keys, key=partition_order)
        pool_instance_connections(context.instance)  # events follow, one per check
        selected = {key.name for key in context.selected_asset_check_keys}
        verdicts = evaluate(context.instance, export_storage.store(), dataset, partitions, selected)
        for partition, by_check in verdicts.items():
            for name, verdict in by_check.items():
                yield dg.AssetCheckEvaluation(
                    asset_key=asset_key, partition=partition, **_result_fields(name, verdict)
                )

    return _checks


def _result_fields(name: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "check_name": name,
        "passed": verdict.passed,
        "severity": SEVERITY[name],
        "description": verdict.description,
        "metadata": verdict.metadata,
    }


def evaluate(
    instance: dg.DagsterInstance,
    store: ObjectStore,
    dataset: DatasetSpec,
    partitions: Sequence[str],
    selected: set[str],
) -> dict[str, dict[str, Verdict]]:
    """A verdict for each selected check of each partition."""
    asset_key = export_asset_key(dataset.name)
    wanted = [n for n in check_names(dataset) if n in selected]
    records = latest_records(instance, asset_key, partitions)
    previous_key = {p: previous_month_partition(p) for p in partitions}
    before = (
        latest_records(instance, asset_key, list(previous_key.values()))
        if {NOT_EMPTY, SCHEMA} & selected
        else {}
    )
    looked_at: dict[str, dict[str, Verdict]] = {}
    if {FILE_PRESENT, ROW_COUNT_CHECK} & selected:
        with ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="export-check") as pool:
            futures = {
                p: pool.submit(_look_at_file, store, dataset, p, records[p])
                for p in partitions
                if p in records
            }
            looked_at = {p: f.result() for p, f in futures.items()}
    verdicts: dict[str, dict[str, Verdict]] = {}
    for partition in partitions:
        recorded = records.get(partition)
        if recorded is None:
            missing = Verdict(
                False,
                f"exports/{dataset.name} {partition} has not been materialized: nothing to check",
            )
            verdicts[partition] = {name: missing for name in wanted}
            continue
        found = dict(looked_at.get(partition, {}))
        previous = before.get(previous_key[partition])
        found.update(_compare_with_previous(partition, recorded, previous))
        verdicts[partition] = {name: found[name] for name in wanted if name in found}
    return verdicts


def _look_at_file(
    store: ObjectStore, dataset: DatasetSpec, partition: str, recorded: Recorded
) -> dict[str, Verdict]:
    """FILE_PRESENT (and, for Parquet, ROW_COUNT) from one request to the stored object. A
    storage that cannot answer (access denied, a 5xx after retries) fails this partition's
    checks, with the reason, and no other's."""
    customer, month = split_partition_key(partition)
    try:
        stored = recorded_file(store, dataset.name, customer, month, recorded.metadata, False)
        return _look_at_stored(store, stored)
    except (ExportError, OSError) as exc:
        failed = Verdict(False, str(exc), {"uri": str(recorded.metadata.get("uri"))})
        return {FILE_PRESENT: failed, ROW_COUNT_CHECK: Verdict(False, f"not checked: {exc}")}


def _look_at_stored(store: ObjectStore, stored: StoredFile) -> dict[str, Verdict]:
    if stored.format is not Format.PARQUET:
        return {FILE_PRESENT: verify_size(stored.uri, stored.size_bytes, store.size(stored.key))}
    tail = store.read_tail(stored.key, PARQUET_TAIL_BYTES)
    present = verify_size(stored.uri, stored.size_bytes, None if tail is None else tail[0])
    if tail is None or not present.passed:
        return {
            FILE_PRESENT: present,
            ROW_COUNT_CHECK: Verdict(False, f"rows not checked: {present.description}"),
        }
    data = tail[1]
    try:
        if parquet_footer_length(data) > len(data):  # a footer larger than the first read
            longer = store.read_tail(stored.key, parquet_footer_length(data))
            data = longer[1] if longer is not None else data
    except ValueError:
        pass  # verify_row_count says what is wrong with the file's end
    return {
        FILE_PRESENT: present,
        ROW_COUNT_CHECK: verify_row_count(stored.uri, stored.row_count, data),
    }


def _compare_with_previous(
    partition: str, recorded: Recorded, previous: Recorded | None
) -> dict[str, Verdict]:
    _, month = split_partition_key(partition)
    before = None if previous is None else previous.metadata
    return {
        NOT_EMPTY: verify_not_empty_after_rows(
            int(recorded.metadata.get(ROW_COUNT, 0)),
            None if before is None else int(before.get(ROW_COUNT, 0)),
            month.previous(),
        ),
        SCHEMA: verify_schema_unchanged(
            recorded_columns(recorded.metadata) or [],
            None if before is None else recorded_columns(before),
            month.previous(),
        ),
    }
