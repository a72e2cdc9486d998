"""`exports_manifest`: each customer-month's delivery manifest, after all of its exports.

A partitioned asset downstream of every `exports/<dataset>` asset, on the same customer x month
partitions. Its inputs are the export IO manager's `StoredFile` handles (`load_input`: the
recorded file, checked to be in storage at its recorded size); it writes `manifest.json`, then
`_SUCCESS`, through the same IO manager's store and atomic writer (`ExportFiles.write_manifest`),
then posts the optional completion webhook and records its outcome as metadata.

Its key is not under `exports/`, so no dataset can take it; a dataset named `manifest` (whose
file would be `manifest.json`) is rejected by the spec. `monthly_exports_job` writes the same
manifest and records the same materialization for each customer it delivers completely.
"""

from typing import Any

import dagster as dg

from export_pipeline.completion import CompletionNotifier, completion_payload
from export_pipeline.defs.assets import EXPORT_RETRY_POLICY
from export_pipeline.defs.jobs import EXPORTS_GROUP
from export_pipeline.errors import ExportError
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, ExportIOManager
from export_pipeline.io_managers.failures import export_failure
from export_pipeline.manifest import ManifestDelivery, ManifestEntry
from export_pipeline.partitions import split_partition_key
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.spec import ExportSpec
from export_pipeline.storage.files import StoredFile
from export_pipeline.webhook import Delivery, safe_url

MANIFEST_ASSET_KEY = dg.AssetKey(["exports_manifest"])
_INPUT_SUFFIX = "_file"  # input names: <dataset>_file, never a parameter name of the asset


def build_manifest_asset(
    spec: ExportSpec,
    partitions_def: dg.PartitionsDefinition,
    retry_policy: dg.RetryPolicy | None = EXPORT_RETRY_POLICY,
) -> dg.AssetsDefinition:
    ins = {
        f"{name}{_INPUT_SUFFIX}": dg.AssetIn(
            key=dg.AssetKey(["exports", name]), input_manager_key=EXPORTS_IO_MANAGER_KEY
        )
        for name in spec.datasets
    }

    @dg.asset(
        key=MANIFEST_ASSET_KEY,
        partitions_def=partitions_def,
        group_name=EXPORTS_GROUP,
        ins=ins,
        kinds={"json"},
        retry_policy=retry_policy,
        description="The customer-month's manifest.json (every dataset's key, rows, bytes, "
        "sha256, format, columns, snapshot time), then _SUCCESS holding its sha256, written "
        "after all exports; then the optional completion webhook (docs/manifest.md).",
    )
    def _manifest(
        context: dg.AssetExecutionContext,
        exports_io_manager: dg.ResourceParam[ExportIOManager],
        delivery_webhook: DeliveryWebhookResource,
        **files: StoredFile,
    ) -> dg.MaterializeResult:
        partition = context.partition_key
        what = f"{MANIFEST_ASSET_KEY.to_user_string()} {partition}"
        entries = [
            ManifestEntry.of_file(name.removesuffix(_INPUT_SUFFIX), stored)
            for name, stored in files.items()
        ]
        try:
            customer, month = split_partition_key(partition)
            delivery = exports_io_manager.files().write_manifest(customer, month, entries)
        except Exception as exc:
            raise export_failure(what, exc) from exc
        context.log.info(
            f"manifest of {len(entries)} datasets written to {delivery.manifest.uri}, then "
            f"{delivery.success.uri}"
        )
        notifier = completion_notifier(delivery_webhook, context.log)
        outcome = notify_completion(notifier, delivery, context.run.run_id, context.log)
        return dg.MaterializeResult(metadata=manifest_metadata(delivery, outcome))

    return _manifest


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
    delivery: ManifestDelivery,
    run_id: str,
    log: dg.DagsterLogManager,
) -> Delivery | None:
    """Post the completion webhook after `_SUCCESS`; the outcome, or None if there is none.

    A failed post is logged, not raised: the files, manifest and `_SUCCESS` are in place and
    correct, and failing the step would mark a complete delivery failed (docs/manifest.md).
    """
    if notifier is None:
        return None
    if isinstance(notifier, ExportError):
        return Delivery(False, 0, f"not sent: {notifier}")
    outcome = notifier.notify(completion_payload(delivery, run_id))
    what = f"completion webhook for {delivery.customer} {delivery.month}"
    where = safe_url(notifier.config.url)
    if outcome.ok:
        log.info(f"{what} posted to {where} ({outcome.detail}, attempt {outcome.attempts})")
    else:
        log.error(
            f"{what} not delivered to {where} after {outcome.attempts} attempt(s): "
            f"{outcome.detail}; the delivery itself is complete"
        )
    return outcome


def manifest_metadata(delivery: ManifestDelivery, outcome: Delivery | None) -> dict[str, Any]:
    """What the manifest's materialization records: the manifest, the marker, the totals and,
    when a webhook is configured, its outcome."""
    manifest = delivery.manifest
    datasets = delivery.document["datasets"]
    metadata: dict[str, Any] = {
        "uri": _uri(manifest.uri),
        "sha256": dg.MetadataValue.text(manifest.sha256),
        "size_bytes": dg.MetadataValue.int(manifest.size_bytes),
        "success_uri": _uri(delivery.success.uri),
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


def _uri(uri: str) -> dg.MetadataValue:
    return dg.MetadataValue.text(uri) if uri.startswith("s3://") else dg.MetadataValue.path(uri)
