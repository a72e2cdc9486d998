"""`monthly_exports_job`: one run exports one month for many customers.

Why a job and not one run per customer-month: Dagster spends about 0.3 s (in-process) to 6 s
(a launched run) per run, against about 20-30 ms of engine time for a demo-sized partition,
so 1,000 customers x 3 datasets as separate runs is almost all overhead (bench/RESULTS.md,
"Scale"). A run of this job loops the engine over the month's customers and datasets and
records one `AssetMaterialization` per partition of `exports/<dataset>`, with the same
metadata the asset records, so every partition keeps its own materialization. The customer
x month asset partitions are not contiguous for a month (keys sort customer first), so a
BackfillPolicy range cannot express "one month, all customers"; this job is partitioned by
month instead, and a UI backfill of it over N months is N runs.

Failures: transient ones are retried in place (3 tries, 2 s then 4 s apart); a partition
that still fails is reported and the loop goes on; the run then fails, naming every failed
partition, so the failure sensor and the UI show them, and re-running the month redoes all.

Manifests: once every dataset of a customer is delivered, the run writes that customer-month's
`manifest.json` and `_SUCCESS`, posts the completion webhook, and records a materialization of
`exports_manifest` (as the asset would). A customer with a failed dataset gets none (its first
export already withdrew the old one). When `datasets` narrows the run, the other datasets are
listed from their latest materializations, if they have one and their file is still there.
"""

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import dagster as dg
from pydantic import Field

from export_pipeline.defs.assets import SOURCE_POOL
from export_pipeline.defs.checks import check_evaluations
from export_pipeline.defs.manifest import (
    MANIFEST_ASSET_KEY,
    completion_notifier,
    manifest_metadata,
    notify_completion,
)
from export_pipeline.engine import EngineTuning, ExportResult, partition_stream
from export_pipeline.errors import ExportError
from export_pipeline.io_managers.exports import ExportFiles, ExportIOManager
from export_pipeline.io_managers.failures import export_failure
from export_pipeline.io_managers.metadata import latest_metadata, materialization_metadata
from export_pipeline.manifest import ManifestEntry
from export_pipeline.partitions import (
    CUSTOMER_DIMENSION,
    CUSTOMERS_PARTITIONS_NAME,
    MONTH_DIMENSION,
    Month,
)
from export_pipeline.progress import ProgressReporting
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.retryable import is_transient
from export_pipeline.spec import DatasetSpec, ExportSpec

MONTHLY_JOB_NAME = "monthly_exports_job"
TRIES = 3
RETRY_WAIT_SECONDS = 2.0


class MonthlyExportConfig(dg.Config):
    customers: list[str] = Field(
        default_factory=list,
        description="Customer keys to export; empty: every `customers` partition.",
    )
    datasets: list[str] = Field(
        default_factory=list, description="Datasets to export; empty: every dataset of the spec."
    )
    run_checks: bool = Field(
        default=True,
        description="Evaluate the export checks (file present, row count, empty month, schema "
        "change) for each partition written, as a run of the asset would.",
    )


def build_monthly_exports_job(spec: ExportSpec) -> dg.JobDefinition:
    months_def = dg.MonthlyPartitionsDefinition(
        start_date=spec.months_start.isoformat(), end_offset=0
    )

    @dg.op(
        name="export_month",
        pool=SOURCE_POOL,
        out={},
        description="Exports one month of the chosen datasets for the chosen customers.",
    )
    def export_month(
        context: dg.OpExecutionContext,
        config: MonthlyExportConfig,
        source: PostgresSourceResource,
        exports_io_manager: dg.ResourceParam[ExportIOManager],
        delivery_webhook: DeliveryWebhookResource,
    ) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
        month = Month.parse(context.partition_key)
        _pool_instance_connections(context.instance)
        known = context.instance.get_dynamic_partitions(CUSTOMERS_PARTITIONS_NAME)
        customers = _chosen(config.customers, known, "customer", "a `customers` partition")
        names = _chosen(config.datasets, list(spec.datasets), "dataset", "in the spec")
        files = exports_io_manager.files()
        tuning = source.engine_tuning()
        step_key = context.get_step_execution_context().step.key

        def progress(name: str, customer: str) -> ProgressReporting:
            # The planner's estimate: no instance query per partition at thousands a month.
            partition = f"{customer}|{month.start.isoformat()}"
            return exports_io_manager.progress(
                context.log, context.instance, context.run, step_key, name, partition
            )

        notifier = completion_notifier(delivery_webhook, context.log)
        failed: list[str] = []
        manifests = 0
        started = time.perf_counter()
        for customer in customers:
            delivered: dict[str, ManifestEntry] = {}
            for name in names:
                what = f"exports/{name} {customer}|{month.start.isoformat()}"
                try:
                    result, facts = _export(
                        files,
                        source,
                        spec.datasets[name],
                        customer,
                        month,
                        tuning,
                        progress(name, customer),
                    )
                except Exception as exc:
                    failure = export_failure(what, exc)
                    context.log.error(failure.description or what)
                    failed.append(failure.description or what)
                    continue
                delivered[name] = ManifestEntry.of_result(result)
                event = _materialization(
                    dg.AssetKey(["exports", name]),
                    customer,
                    month,
                    materialization_metadata(result, facts),
                )
                yield event
                if config.run_checks:
                    yield from check_evaluations(context.instance, files, event)
            if len(delivered) < len(names):
                continue  # a dataset failed: no manifest
            what = f"{MANIFEST_ASSET_KEY.to_user_string()} {customer}|{month.start.isoformat()}"
            try:
                entries = _manifest_entries(context, files, spec, customer, month, delivered)
                if entries is None:
                    continue
                delivery = files.write_manifest(customer, month, entries)
            except Exception as exc:
                failure = export_failure(what, exc)
                context.log.error(failure.description or what)
                failed.append(failure.description or what)
                continue
            outcome = notify_completion(notifier, delivery, context.run_id, context.log)
            manifests += 1
            yield _materialization(
                MANIFEST_ASSET_KEY, customer, month, manifest_metadata(delivery, outcome)
            )
        total = len(customers) * len(names)
        context.log.info(
            f"{month}: {total - len(failed)} of {total} exports done, {manifests} of "
            f"{len(customers)} customers' manifests written in "
            f"{time.perf_counter() - started:.1f}s"
        )
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} of {total} exports of {month} failed:\n"
                + "\n".join(failed[:50])
                + ("\n..." if len(failed) > 50 else ""),
                metadata={"failed": len(failed), "exports": total},
                allow_retries=False,
            )

    @dg.job(
        name=MONTHLY_JOB_NAME,
        partitions_def=months_def,
        executor_def=dg.in_process_executor,
        description="One month of every (or the chosen) dataset for every (or the chosen) "
        "customer, in one run; records a materialization per customer-month partition.",
    )
    def monthly_exports_job() -> None:
        export_month()

    return monthly_exports_job


def _pool_instance_connections(instance: dg.DagsterInstance) -> None:
    """Keep the instance's database connections open for the rest of this run.

    Outside the webserver, Dagster's Postgres storages open a new connection for every
    statement (SQLAlchemy NullPool): about 3 connections, some 20 ms here, per recorded
    materialization, which was most of this job's overhead at 3,000 partitions a month
    (bench/RESULTS.md, "Scale"). `optimize_for_webserver` is the instance's public switch to a
    small pool (1 connection + 2 overflow, recycled hourly), as the webserver uses; the
    statement timeout is 60 s. Other storages (SQLite) ignore it.
    """
    instance.optimize_for_webserver(statement_timeout=60_000, pool_recycle=3600, max_overflow=2)


def _chosen(asked: Sequence[str], known: Sequence[str], what: str, where: str) -> list[str]:
    unknown = sorted(set(asked) - set(known))
    if unknown:
        raise dg.Failure(
            description=f"unknown {what}(s) {', '.join(map(repr, unknown[:20]))}: not {where}",
            allow_retries=False,
        )
    return list(dict.fromkeys(asked)) if asked else list(known)


def _export(
    files: ExportFiles,
    source: PostgresSourceResource,
    dataset: DatasetSpec,
    customer: str,
    month: Month,
    tuning: EngineTuning,
    progress: ProgressReporting | None = None,
) -> tuple[ExportResult, dict[str, str | bool]]:
    """One partition, tried again after a transient failure (a new snapshot each time);
    what was delivered, and the stream's facts (type-contract options) to record with it."""
    attempt = 1
    while True:
        stream = partition_stream(source.source_config(), dataset, customer, month, tuning)
        stream = replace(stream, progress=progress)
        try:
            return files.write(stream, dataset.name, customer, month), stream.facts()
        except Exception as exc:
            if attempt >= TRIES or not is_transient(exc):
                raise
            time.sleep(RETRY_WAIT_SECONDS * 2 ** (attempt - 1))
            attempt += 1


def _manifest_entries(
    context: dg.OpExecutionContext,
    files: ExportFiles,
    spec: ExportSpec,
    customer: str,
    month: Month,
    delivered: dict[str, ManifestEntry],
) -> list[ManifestEntry] | None:
    """Every dataset's entry: this run's exports, else the latest recorded one (a run narrowed
    to some datasets). None, with a warning, if a dataset has no file to list."""
    entries = list(delivered.values())
    partition = str(_partition_key(customer, month))
    for name in spec.datasets:
        if name in delivered:
            continue
        recorded = latest_metadata(context.instance, dg.AssetKey(["exports", name]), partition)
        if recorded is None:
            context.log.warning(
                f"no manifest for {customer} {month}: exports/{name} was never delivered"
            )
            return None
        try:
            stored = files.handle(name, customer, month, recorded)
        except (ExportError, KeyError, ValueError) as exc:
            context.log.warning(f"no manifest for {customer} {month}: exports/{name}: {exc}")
            return None
        entries.append(ManifestEntry.of_file(name, stored))
    return entries


def _partition_key(customer: str, month: Month) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey(
        {CUSTOMER_DIMENSION: customer, MONTH_DIMENSION: month.start.isoformat()}
    )


def _materialization(
    asset_key: dg.AssetKey, customer: str, month: Month, metadata: dict[str, Any]
) -> dg.AssetMaterialization:
    month_key = month.start.isoformat()
    return dg.AssetMaterialization(
        asset_key=asset_key,
        partition=_partition_key(customer, month),
        metadata=metadata,
        tags={
            f"dagster/partition/{CUSTOMER_DIMENSION}": customer,
            f"dagster/partition/{MONTH_DIMENSION}": month_key,
        },
    )
