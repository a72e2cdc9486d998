"""`exports_manifest`: each customer-month's delivery manifest, after all of its exports.

A partitioned asset downstream of every `exports/<dataset>` asset, on the same customer x month
partitions, with the exports' backfill policy, so a ranged run writes the manifests of its
whole range. Its inputs are the export IO manager's `StoredFile` handles (`load_input`: the
recorded files, by partition); for each customer-month it writes `manifest.json`, then
`_SUCCESS`, through the store's atomic writer (`manifest.write_manifest`), under the
customer-month's partition lock, then posts the optional completion webhook and records its
outcome as that partition's metadata. The manifests of a range are written a few at once.

A customer-month one of whose datasets has no file gets no manifest: that partition fails,
the others are written. If an export of the same run failed, Dagster skips this step; a
retry of the failed partitions writes the manifests.

Its key is not under `exports/`, so no dataset can take it; a dataset named `manifest` (whose
file would be `manifest.json`) is rejected by the spec.
"""

import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg

from export_pipeline.batch import claim_deliveries
from export_pipeline.completion import CompletionNotifier, completion_payload
from export_pipeline.dagster_private import INTERRUPTS, RunInterrupted
from export_pipeline.defs.assets import EXPORT_BACKFILL_POLICY, EXPORT_RETRY_POLICY, EXPORTS_GROUP
from export_pipeline.errors import ExportError
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, failure_metadata
from export_pipeline.io_managers.failures import export_failure
from export_pipeline.io_managers.metadata import (
    export_asset_key,
    latest_records,
    recorded_file,
    uri_value,
)
from export_pipeline.manifest import ManifestEntry, WrittenManifest, write_manifest
from export_pipeline.partitions import Month, partition_key, partition_order, split_partition_key
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.resources.storage import ExportStorageResource
from export_pipeline.signals import deferred_interrupts
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.files import StoredFile
from export_pipeline.storage.keys import manifest_key, success_key
from export_pipeline.webhook import PostOutcome, safe_url

MANIFEST_ASSET_KEY = dg.AssetKey(["exports_manifest"])
_INPUT_SUFFIX = "_file"  # input names: <dataset>_file, never a parameter name of the asset
WRITE_THREADS = 8  # customer-months whose manifest is being written at once


def build_manifest_asset(
    spec: ExportSpec,
    partitions_def: dg.PartitionsDefinition,
    retry_policy: dg.RetryPolicy | None = EXPORT_RETRY_POLICY,
) -> dg.AssetsDefinition:
    ins = {
        f"{name}{_INPUT_SUFFIX}": dg.AssetIn(
            key=export_asset_key(name), input_manager_key=EXPORTS_IO_MANAGER_KEY
        )
        for name in spec.datasets
    }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # backfill_policy (see assets.py)
        return _manifest_asset(spec, partitions_def, retry_policy, ins)


def _manifest_asset(
    spec: ExportSpec,
    partitions_def: dg.PartitionsDefinition,
    retry_policy: dg.RetryPolicy | None,
    ins: dict[str, dg.AssetIn],
) -> dg.AssetsDefinition:
    @dg.asset(
        key=MANIFEST_ASSET_KEY,
        partitions_def=partitions_def,
        group_name=EXPORTS_GROUP,
        ins=ins,
        kinds={"json"},
        retry_policy=retry_policy,
        backfill_policy=EXPORT_BACKFILL_POLICY,
        description="The customer-month's manifest.json (every dataset's key, rows, bytes, "
        "sha256, format, columns, snapshot time), then _SUCCESS holding its sha256, written "
        "after all exports; then the optional completion webhook (docs/manifest.md).",
    )
    def _manifest(
        context: dg.AssetExecutionContext,
        export_storage: ExportStorageResource,
        source: PostgresSourceResource,
        delivery_webhook: DeliveryWebhookResource,
        **files: StoredFile | dict[str, StoredFile],
    ) -> Iterator[dg.MaterializeResult]:
        partitions = sorted(context.partition_keys, key=partition_order)
        by_dataset = {
            name.removesuffix(_INPUT_SUFFIX): (
                handles if isinstance(handles, dict) else {partitions[0]: handles}
            )
            for name, handles in files.items()
        }
        entries: dict[str, list[ManifestEntry]] = {}
        missing: dict[str, str] = {}
        for partition in partitions:
            absent = sorted(d for d, handles in by_dataset.items() if partition not in handles)
            if absent:
                missing[partition] = (
                    f"not every dataset is delivered: no usable file of {absent} (never "
                    "materialized, or not as recorded: see the step's warnings)"
                )
            else:
                entries[partition] = [
                    ManifestEntry.of_file(dataset, handles[partition])
                    for dataset, handles in by_dataset.items()
                ]
        store = export_storage.store()
        written: dict[str, WrittenManifest] = {}
        outcomes: dict[str, PostOutcome | None] = {}
        logged: set[str] = set()
        failed: dict[str, str] = dict(missing)
        notifier = completion_notifier(delivery_webhook, context.log)
        what = MANIFEST_ASSET_KEY.to_user_string()

        def log_written() -> None:
            """Record each manifest written so far that is not yet (interrupts wait)."""
            with deferred_interrupts():
                for partition, manifest in written.items():
                    if partition not in logged:
                        metadata = manifest_metadata(manifest, outcomes.get(partition))
                        context.log_event(_materialization(partition, metadata))
                        logged.add(partition)

        try:
            try:
                # Every customer-month of the step, also those that get no manifest now: an
                # old manifest of one whose file is gone must not go on announcing it.
                claimed = [split_partition_key(p) for p in partitions]
                new = claim_deliveries(source.session(), store, claimed)
                pairs = {p: split_partition_key(p) for p in entries}
                store.remove_orphans(
                    [k for c, m in pairs.values() for k in _delivery_keys(store.prefix, c, m)]
                )
                # Files were loaded before the locks were held: another run may have replaced
                # some of those until now (this run's own exports held them all along).
                fresh = {partition_key(c, m) for c, m in new} & set(entries)
                _reload_replaced(context.instance, store, entries, sorted(fresh), failed)
            except Exception as exc:
                raise export_failure(what, exc) from exc
            _write_all(store, entries, pairs, written, failed)
            for partition, manifest in written.items():
                outcomes[partition] = notify_completion(
                    notifier, manifest, context.run.run_id, context.log
                )
            context.log.info(
                f"{len(written)} of {len(partitions)} manifests written"
                + (f", {len(failed)} not: see the failure" if failed else "")
            )
            if failed:
                log_written()
                rows = [
                    {"partition": p, "customer": c, "month": str(m), "dataset": None, "error": e}
                    for p, e in sorted(failed.items())
                    for c, m in [split_partition_key(p)]
                ]
                raise dg.Failure(
                    description=f"{what}: {len(failed)} of {len(partitions)} manifests not "
                    "written:\n" + "\n".join(f"{p}: {e}" for p, e in sorted(failed.items())[:20]),
                    allow_retries=False,
                    metadata=failure_metadata(rows, len(written)),
                )
            for partition, manifest in written.items():
                context.add_asset_metadata(
                    manifest_metadata(manifest, outcomes[partition]), partition_key=partition
                )
        except INTERRUPTS as exc:
            while True:  # every manifest written gets its materialization, however often
                try:  # the run is cancelled meanwhile; then the run ends (not retried)
                    log_written()
                    break
                except INTERRUPTS:
                    continue
            raise RunInterrupted(f"{what}: the run was cancelled") from exc
        except Exception:
            log_written()
            raise
        yield dg.MaterializeResult()

    return _manifest


def _reload_replaced(
    instance: dg.DagsterInstance,
    store: Any,
    entries: dict[str, list[ManifestEntry]],
    partitions: list[str],
    failed: dict[str, str],
) -> None:
    """Of `partitions` (in `entries`), rebuild the entries of those whose datasets' latest
    materializations are no longer the files loaded (a few queries per dataset); a replaced
    file that is not as recorded fails its partition."""
    if not partitions:
        return
    datasets = [entry.dataset for entry in entries[partitions[0]]]
    for dataset in datasets:
        records = latest_records(instance, export_asset_key(dataset), partitions)
        for partition in partitions:
            if partition not in entries:
                continue
            at = next(i for i, e in enumerate(entries[partition]) if e.dataset == dataset)
            recorded = records.get(partition)
            if recorded is None or recorded.metadata.get("sha256") == entries[partition][at].sha256:
                continue
            customer, month = split_partition_key(partition)
            try:
                stored = recorded_file(store, dataset, customer, month, recorded.metadata)
            except ExportError as exc:
                failed[partition] = f"{dataset} was replaced by another run meanwhile: {exc}"
                del entries[partition]
                continue
            entries[partition][at] = ManifestEntry.of_file(dataset, stored)


def _write_all(
    store: Any,
    entries: Mapping[str, list[ManifestEntry]],
    pairs: Mapping[str, tuple[str, Month]],
    written: dict[str, WrittenManifest],
    failed: dict[str, str],
) -> None:
    """Write every manifest, a few at once; `written` holds each one written, also when this
    is interrupted (the writes already started are waited for)."""
    with ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="export-manifest") as pool:
        futures = {p: pool.submit(write_manifest, store, *pairs[p], entries[p]) for p in entries}
        try:
            for partition, future in futures.items():
                _settle(partition, future, written, failed)
        except BaseException:
            for partition, future in futures.items():
                if not future.cancel() and partition not in written:
                    _settle(partition, future, written, failed)
            raise


def _settle(
    partition: str, future: Any, written: dict[str, WrittenManifest], failed: dict[str, str]
) -> None:
    try:
        written[partition] = future.result()
    except ExportError as exc:
        failed[partition] = str(exc)
    except Exception as exc:
        failed[partition] = f"{type(exc).__name__}: {exc}"


def _delivery_keys(prefix: str, customer: str, month: Month) -> list[str]:
    return [manifest_key(prefix, customer, month), success_key(prefix, customer, month)]


def _materialization(partition: str, metadata: dict[str, Any]) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        asset_key=MANIFEST_ASSET_KEY, partition=partition, metadata=metadata
    )


def completion_notifier(
    resource: DeliveryWebhookResource, log: dg.DagsterLogManager
) -> CompletionNotifier | ExportError | None:
    """The run's notifier; None with no webhook configured; the error if half-configured
    (reported as each delivery's webhook outcome, never failing it)."""
    try:
        config = resource.webhook_config()
    except ExportError as exc:
        log.error(str(exc))
        return exc
    if config is None:
        return None
    return CompletionNotifier(config, resource.max_failures_in_a_row)


def notify_completion(
    notifier: CompletionNotifier | ExportError | None,
    manifest: WrittenManifest,
    run_id: str,
    log: dg.DagsterLogManager,
) -> PostOutcome | None:
    """Post the completion webhook after `_SUCCESS`; the outcome, or None if there is none.

    A failed post is logged, not raised: the files, manifest and `_SUCCESS` are in place and
    correct, and failing the step would mark a complete delivery failed (docs/manifest.md).
    """
    if notifier is None:
        return None
    if isinstance(notifier, ExportError):
        return PostOutcome(False, 0, f"not sent: {notifier}")
    outcome = notifier.notify(completion_payload(manifest, run_id))
    what = f"completion webhook for {manifest.customer} {manifest.month}"
    where = safe_url(notifier.config.url)
    if outcome.ok:
        log.info(f"{what} posted to {where} ({outcome.detail}, attempt {outcome.attempts})")
    else:
        log.error(
            f"{what} not delivered to {where} after {outcome.attempts} attempt(s): "
            f"{outcome.detail}; the delivery itself is complete"
        )
    return outcome


def manifest_metadata(manifest: WrittenManifest, outcome: PostOutcome | None) -> dict[str, Any]:
    """What the manifest's materialization records: the manifest, the marker, the totals and,
    when a webhook is configured, its outcome."""
    stored = manifest.manifest
    datasets = manifest.document["datasets"]
    metadata: dict[str, Any] = {
        "uri": uri_value(stored.uri),
        "sha256": dg.MetadataValue.text(stored.sha256),
        "size_bytes": dg.MetadataValue.int(stored.size_bytes),
        "success_uri": uri_value(manifest.success.uri),
        "datasets": dg.MetadataValue.int(len(datasets)),
        "total_rows": dg.MetadataValue.int(sum(d["rows"] for d in datasets.values())),
        "total_bytes": dg.MetadataValue.int(sum(d["bytes"] for d in datasets.values())),
    }
    if outcome is not None:
        metadata["webhook_delivered"] = dg.MetadataValue.bool(outcome.ok)
        metadata["webhook_attempts"] = dg.MetadataValue.int(outcome.attempts)
        if outcome.status is not None:
            metadata["webhook_status_code"] = dg.MetadataValue.int(outcome.status)
        if not outcome.ok:
            metadata["webhook_error"] = dg.MetadataValue.text(outcome.detail)
    return metadata
