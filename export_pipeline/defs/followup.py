"""`partial_failure_sensor`: the checks and manifests of what a partly failed run delivered.

`exports_manifest` and the checks depend on the export steps, so when one export step of a
ranged run fails (one customer's query, say), Dagster skips them for the whole range: the
customer-months whose every dataset was delivered would get no checks, no `manifest.json`,
`_SUCCESS` or completion webhook until someone retries. This sensor watches failed runs of
this code location and asks, for exactly those customer-months (every dataset materialized by
the failed run, no manifest yet), for `exports_manifest` and the export checks, in runs of
`exports_job` that export nothing. Same steps (`defs/manifest.py`, `defs/checks.py`); only
the trigger is new. Run keys name the failed run, so a re-evaluated tick asks for nothing
twice. A customer-month with a failed dataset waits for the retry, which runs them all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import dagster as dg

from export_pipeline.dagster_private import ranged_run_tags, run_partition_range
from export_pipeline.defs.checks import check_names
from export_pipeline.defs.jobs import exports_job
from export_pipeline.defs.manifest import MANIFEST_ASSET_KEY
from export_pipeline.defs.schedules import TRIGGER_TAG
from export_pipeline.io_managers.metadata import export_asset_key
from export_pipeline.partitions import (
    CUSTOMERS_PARTITIONS_NAME,
    PARTITION_TAG,
    Month,
    partition_key,
    split_partition_key,
)
from export_pipeline.spec import ExportSpec


def build_partial_failure_sensor(
    spec: ExportSpec, partitions_def: dg.MultiPartitionsDefinition
) -> dg.SensorDefinition:
    datasets = [export_asset_key(name) for name in spec.datasets]
    checks = [
        dg.AssetCheckKey(export_asset_key(d.name), name)
        for d in spec.datasets.values()
        for name in check_names(d)
    ]

    @dg.run_failure_sensor(
        name="partial_failure_sensor",
        request_job=exports_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After a run in which some exports failed, runs the checks and writes the "
        "manifests of the customer-months it delivered completely (Dagster skipped them).",
    )
    def partial_failure_sensor(
        context: dg.RunFailureSensorContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        run = context.dagster_run
        selected = set(run.asset_selection or ())
        if selected and MANIFEST_ASSET_KEY not in selected:
            return dg.SkipReason("the run did not ask for manifests")
        partitions = _run_partitions(context.instance, run, partitions_def)
        if not partitions:
            return dg.SkipReason("not a run of export partitions")
        done: dict[dg.AssetKey, set[str]] = defaultdict(set)
        for entry in context.instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ):
            event = entry.asset_materialization
            if event is not None and event.partition is not None:
                done[event.asset_key].add(str(event.partition))
        complete = [
            p
            for p in partitions
            if p not in done[MANIFEST_ASSET_KEY] and all(p in done[d] for d in datasets)
        ]
        if not complete:
            return dg.SkipReason("no customer-month of the run was delivered completely")
        customers = context.instance.get_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME)
        requests = [
            dg.RunRequest(
                run_key=f"after-{run.run_id}-{n}",
                asset_selection=[MANIFEST_ASSET_KEY],
                asset_check_keys=checks,
                tags={**ranged_run_tags(first, last), TRIGGER_TAG: "partial-failure"},
            )
            for n, (first, last) in enumerate(contiguous_ranges(complete, customers))
        ]
        context.log.info(
            f"{len(complete)} customer-month(s) of failed run {run.run_id} were delivered "
            f"completely: asking for their checks and manifests in {len(requests)} run(s)"
        )
        return requests

    return partial_failure_sensor


def _run_partitions(
    instance: dg.DagsterInstance, run: dg.DagsterRun, partitions_def: dg.MultiPartitionsDefinition
) -> list[str]:
    key = run.tags.get(PARTITION_TAG)
    if key is not None:
        return [key] if "|" in key else []
    ranged = run_partition_range(run)
    if ranged is None:
        return []
    return list(
        partitions_def.get_partition_keys_in_range(
            dg.PartitionKeyRange(*ranged), dynamic_partitions_store=instance
        )
    )


def contiguous_ranges(keys: list[str], customers: Sequence[str]) -> list[tuple[str, str]]:
    """`keys` (customer|month) as ranges of customers contiguous in partition order, one month
    each: a range's partitions are exactly some of `keys`, never another customer's."""
    order = {customer: n for n, customer in enumerate(customers)}
    by_month: dict[Month, list[str]] = defaultdict(list)
    for key in keys:
        customer, month = split_partition_key(key)
        by_month[month].append(customer)
    ranges: list[tuple[str, str]] = []
    for month, members in sorted(by_month.items()):
        members.sort(key=lambda c: order.get(c, -1))
        start = previous = members[0]
        for customer in members[1:]:
            if order.get(customer, -2) != order.get(previous, -2) + 1:
                ranges.append((partition_key(start, month), partition_key(previous, month)))
                start = customer
            previous = customer
        ranges.append((partition_key(start, month), partition_key(previous, month)))
    return ranges
