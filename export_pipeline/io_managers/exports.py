"""The export IO manager: file streams in, objects in storage out; handles back.

Shaped like dagster-aws's S3 IO manager: the engine does the work (`batch.export_batch`, no
Dagster), and a thin `ConfigurableIOManager` translates Dagster's context into its calls. Where
the files go is the `export_storage` resource it depends on (`resources/storage.py`).

- `handle_output` takes what an export asset returned for its run's partitions: one lazy
  `ExportStream` per partition (`ExportStreams`, with the run's source session), or any
  `FileContent` (one partition) or mapping of partition key to `FileContent`. It exports them
  all (`export_batch`: partition locks, withdrawn manifests, one source session, commits
  overlapping the next export, in-place retries of transient failures) and records what each
  partition delivered:
  - all delivered: each partition's own metadata goes to its own materialization, the one
    Dagster records for the output, through `add_asset_metadata(..., partition_key=)`;
  - some failed (or the run was cancelled): Dagster records no materialization for the
    output, so each delivered partition's materialization is logged here
    (`OutputContext.log_event`, written at once), and the step fails naming every failed
    partition, with a row per partition in the failure's metadata (`failed_partitions`).
    Dagster then shows exactly those as failed, and a retry of the failed partitions exports
    only them.
  - cancelled (the UI's Terminate, SIGTERM), wherever the cancel lands, from the first
    export to the metadata of the last: every object published is recorded as above (a
    commit already started is waited for), and the step ends the run (`RunInterrupted`):
    Dagster would otherwise take the cancel for a failure and retry the step in process.
- `load_input` gives downstream assets a `StoredFile` handle (uri, size, sha256, rows,
  format, `open()`, `dataset()`, `presign()`), never the data; a dict of them, by partition
  key, for an input of several partitions. A file written by this very run is taken as
  recorded; an older one is checked to still be there at its recorded size (a HEAD).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from export_pipeline.batch import (
    BatchItem,
    BatchResult,
    ExportStreams,
    PartitionFailure,
    Retries,
    export_batch,
)
from export_pipeline.dagster_private import (
    INTERRUPTS,
    RunInterrupted,
    current_asset_context,
    run_partition_range,
)
from export_pipeline.engine import FileContent
from export_pipeline.errors import ExportError
from export_pipeline.io_managers.failures import export_failure
from export_pipeline.io_managers.metadata import (
    Recorded,
    latest_records,
    materialization_metadata,
    recorded_file,
)
from export_pipeline.io_managers.progress import event_log_reporter, previous_month_estimates
from export_pipeline.partitions import PARTITION_TAG, partition_order, split_partition_key
from export_pipeline.progress import DEFAULT_INTERVAL_SECONDS, ProgressReporter
from export_pipeline.resources.storage import ExportStorageResource
from export_pipeline.signals import deferred_interrupts
from export_pipeline.storage.files import StoredFile

EXPORTS_IO_MANAGER_KEY = "exports_io_manager"
FAILED_PARTITIONS = "failed_partitions"  # the failure's metadata: a row per failed partition
_LISTED = 20  # failed partitions named in a failure's description


class ExportIOManager(dg.ConfigurableIOManager):
    """Stores export file streams through the `export_storage` resource (module docstring)."""

    storage: ExportStorageResource = Field(
        description="Where the files go: a local folder or an S3 bucket (`export_storage`)."
    )
    progress_interval_seconds: float = Field(
        default=DEFAULT_INTERVAL_SECONDS,
        gt=0,
        description="A step's exports report progress to the event log this often: the "
        "range's partitions done, and each export running longer (docs/progress.md).",
    )

    # -- output ----------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        asset_key = context.asset_key
        asset = asset_key.to_user_string()
        partitions = sorted(context.asset_partition_keys, key=partition_order)
        contents, session = _contents(obj, partitions, asset)
        try:
            items = [BatchItem(pk, *split_partition_key(pk), contents[pk]) for pk in partitions]
        except ExportError as exc:
            raise export_failure(asset, exc) from exc
        where = partitions[0] if len(partitions) == 1 else _range_label(context, partitions)
        earlier = self._delivered_earlier(context, partitions)
        items = self._with_estimates(context, [i for i in items if i.partition not in earlier])
        result = BatchResult()
        logged: set[str] = set()  # delivered partitions whose materialization is logged
        reporter = self._reporter(context, asset, len(items))
        try:
            try:
                export_batch(
                    items,
                    self.storage.store(),
                    asset_key.path[-1],
                    session=session,
                    retries=_retries(context.op_def.retry_policy),
                    reporter=reporter,
                    sign_links=self.storage.record_links,
                    log=context.log.warning,
                    result=result,
                )
            except Exception as exc:
                if reporter is not None:
                    reporter.close()
                self._log_delivered(context, result, contents, logged)
                raise export_failure(f"{asset} {where}", exc) from exc
            finally:
                if reporter is not None:
                    reporter.close()
            self._summarize(context, asset, result, len(items))
            if result.failed:
                self._log_delivered(context, result, contents, logged)
                first = min(result.failed.values(), key=lambda f: f.partition)
                raise partition_failures(asset, result, len(items)) from first.error
            self._attach(context, result, contents, earlier)
        except INTERRUPTS as exc:
            # A cancel, wherever it landed (exporting, committing, building the metadata):
            # every published object gets its materialization, then the run ends (not retried).
            while True:
                try:
                    self._log_delivered(context, result, contents, logged)
                    break
                except INTERRUPTS:  # cancelled again: keep recording
                    continue
            raise RunInterrupted(
                f"{asset} {where}: the run was cancelled; {len(result.delivered)} of "
                f"{len(items)} partitions were delivered and recorded"
            ) from exc

    def _with_estimates(self, context: dg.OutputContext, items: list[BatchItem]) -> list[BatchItem]:
        """Each partition's previous-month row count, where recorded (progress estimates)."""
        instance = _instance(context)
        if instance is None:
            return items
        try:
            estimates = previous_month_estimates(
                instance, context.asset_key, [item.partition for item in items]
            )
        except Exception as exc:  # progress is best effort; the export is not
            context.log.warning(f"no previous-month estimates for progress: {exc}")
            return items
        return [
            BatchItem(i.partition, i.customer, i.month, i.content, estimates.get(i.partition))
            for i in items
        ]

    def _reporter(
        self, context: dg.OutputContext, asset: str, total: int
    ) -> ProgressReporter | None:
        try:
            step = context.step_context
        except dg.DagsterInvariantViolationError:  # a context built outside a run
            return None
        try:
            return event_log_reporter(
                context.log,
                step.instance,
                step.dagster_run,
                context.step_key,
                asset,
                total,
                self.progress_interval_seconds,
            )
        except Exception as exc:  # progress is best effort; the export is not
            context.log.warning(f"no progress reports for {asset}: {exc}")
            return None

    def _summarize(
        self, context: dg.OutputContext, asset: str, result: BatchResult, total: int
    ) -> None:
        delivered = result.delivered.values()
        if total == 1 and len(result.delivered) == 1:
            one = next(iter(delivered))
            context.log.info(
                f"exported {one.rows} rows ({one.stored.size_bytes} bytes) to "
                f"{one.stored.uri} in {one.duration_seconds:.2f}s"
            )
            return
        context.log.info(
            f"{asset}: {len(result.delivered)} of {total} partitions exported "
            f"({sum(r.rows for r in delivered):,} rows, "
            f"{sum(r.stored.size_bytes for r in delivered):,} bytes), "
            f"{len(result.failed)} failed"
        )

    def _delivered_earlier(
        self, context: dg.OutputContext, partitions: list[str]
    ) -> dict[str, Recorded]:
        """A re-execution (the UI's *Re-execute*, from failure or all) or a retry of the step:
        the partitions that an earlier run of the same run group (or an earlier attempt of
        this run) delivered and that nothing has replaced since. They are not exported again;
        their recorded metadata goes on this run's materialization of them."""
        asset_context = current_asset_context()
        if asset_context is None:
            return {}
        run = asset_context.run
        if run.parent_run_id is None and asset_context.retry_number == 0:
            return {}
        instance = asset_context.instance
        records = latest_records(instance, context.asset_key, partitions)
        group = run.root_run_id or run.run_id
        run_ids = sorted({r.run_id for r in records.values()})
        if not run_ids:
            return {}
        same_group = {
            other.run_id
            for other in instance.get_runs(dg.RunsFilter(run_ids=run_ids))
            if (other.root_run_id or other.run_id) == group
        }
        earlier = {p: r for p, r in records.items() if r.run_id in same_group}
        if earlier:
            context.log.info(
                f"{context.asset_key.to_user_string()}: {len(earlier)} of {len(partitions)} "
                "partitions were delivered by an earlier run of this run group; exporting the "
                f"other {len(partitions) - len(earlier)}"
            )
        return earlier

    def _attach(
        self,
        context: dg.OutputContext,
        result: BatchResult,
        contents: Mapping[str, FileContent],
        earlier: Mapping[str, Recorded],
    ) -> None:
        """All delivered: each partition's metadata onto the materialization Dagster records
        for it when the output is handled (for one delivered earlier, what it recorded then)."""
        asset_context = current_asset_context()
        for partition, recorded in earlier.items():
            if asset_context is not None:
                asset_context.add_asset_metadata(
                    dict(recorded.recorded), asset_key=context.asset_key, partition_key=partition
                )
        for partition, delivered in result.delivered.items():
            metadata = materialization_metadata(delivered, contents[partition].facts())
            if asset_context is not None:
                asset_context.add_asset_metadata(
                    metadata, asset_key=context.asset_key, partition_key=partition
                )
            else:  # a context built by hand (one partition, no run)
                context.add_output_metadata(metadata)

    def _log_delivered(
        self,
        context: dg.OutputContext,
        result: BatchResult,
        contents: Mapping[str, FileContent],
        logged: set[str],
    ) -> None:
        """The output will not be recorded (a partition failed, or the run was interrupted):
        record each delivered partition's materialization now, except those in `logged`, and
        add them to it. Interrupts wait, so a published object is never left half-recorded."""
        partitions_def = context.asset_partitions_def
        with deferred_interrupts():
            for partition, delivered in result.delivered.items():
                if partition in logged:
                    continue
                tags = {
                    k: v
                    for k, v in partitions_def.get_tags_for_partition_key(partition).items()
                    if k.startswith(f"{PARTITION_TAG}/")  # one tag per dimension
                }
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=context.asset_key,
                        partition=partition,
                        metadata=materialization_metadata(delivered, contents[partition].facts()),
                        tags=tags,
                    )
                )
                logged.add(partition)

    # -- input -----------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> StoredFile | dict[str, StoredFile]:
        """One partition: its handle (or a failure if it has none, or its file is not as
        recorded). Several: a dict of the handles of those whose file is there as recorded; the
        others are left out (each named in a warning) and the caller decides about them."""
        asset_key = context.asset_key
        partitions = list(context.asset_partition_keys)
        instance = context.instance
        records = latest_records(instance, asset_key, partitions)
        asset_context = current_asset_context()
        this_run = asset_context.run.run_id if asset_context is not None else None
        store = self.storage.store()
        handles: dict[str, StoredFile] = {}
        for partition in partitions:
            recorded = records.get(partition)
            if recorded is None:
                if len(partitions) == 1:
                    raise dg.Failure(
                        description=f"{asset_key.to_user_string()} {partition} has not been "
                        "materialized yet: nothing to load",
                        allow_retries=False,
                    )
                continue
            try:
                customer, month = split_partition_key(partition)
                handles[partition] = recorded_file(
                    store,
                    asset_key.path[-1],
                    customer,
                    month,
                    recorded.metadata,
                    verify=recorded.run_id != this_run,
                )
            except ExportError as exc:
                what = f"loading {asset_key.to_user_string()} {partition}"
                if len(partitions) == 1:
                    raise export_failure(what, exc) from exc
                context.log.warning(f"{what}: {exc}; left out")
        if len(partitions) == 1:
            return handles[partitions[0]]
        return handles


def partition_failures(asset: str, result: BatchResult, total: int) -> dg.Failure:
    """One failure naming every partition that failed, with a row per partition (customer,
    month, dataset, error, transient) in its `failed_partitions` metadata (the failure sensor
    turns them into rows of `export_failures`). Not retried by Dagster: transient failures
    were already retried in place, and the delivered partitions must not be exported again.
    Raise it `from` the first failure's error, so the UI shows that cause under it."""
    failures = sorted(result.failed.values(), key=lambda f: f.partition)
    lines = [
        f"{asset} {f.partition}: {f.message} "
        f"({'transient, may be retried' if f.transient else 'permanent, not retried'})"
        for f in failures[:_LISTED]
    ]
    if len(failures) > _LISTED:
        lines.append(f"... and {len(failures) - _LISTED} more (see {FAILED_PARTITIONS})")
    return dg.Failure(
        description=f"{asset}: {len(failures)} of {total} partitions failed, "
        f"{len(result.delivered)} delivered:\n" + "\n".join(lines),
        allow_retries=False,
        metadata=failure_metadata([failure_row(asset, f) for f in failures], len(result.delivered)),
    )


def failure_metadata(rows: list[dict[str, Any]], delivered: int) -> dict[str, Any]:
    """A failure's metadata: a row per failed partition (partition, customer, month, dataset,
    error), which the failure sensor records one by one, and how many were delivered."""
    return {
        FAILED_PARTITIONS: dg.MetadataValue.json(rows),
        "delivered": dg.MetadataValue.int(delivered),
    }


def failure_row(asset: str, failure: PartitionFailure) -> dict[str, Any]:
    return {
        "partition": failure.partition,
        "customer": failure.customer,
        "month": str(failure.month),
        "dataset": asset.rsplit("/", 1)[-1],
        "error": failure.message,
        "transient": failure.transient,
        "attempts": failure.attempts,
    }


def _retries(policy: dg.RetryPolicy | None) -> Retries:
    """The asset's RetryPolicy, applied to each partition in place."""
    if policy is None:
        return Retries()
    return Retries(policy.max_retries, lambda attempt: float(policy.calculate_delay(attempt)))


def _range_label(context: dg.OutputContext, partitions: list[str]) -> str:
    """`first...last` of the run's range, as the run was asked for (the output's keys come in
    no particular order, and a product range of several months is several key ranges to
    Dagster's `asset_partition_key_range`)."""
    try:
        ranged = run_partition_range(context.step_context.dagster_run)
    except dg.DagsterInvariantViolationError:  # a context built outside a run
        ranged = None
    first, last = ranged or (min(partitions), max(partitions))
    return f"{first}...{last}"


def _instance(context: dg.OutputContext) -> dg.DagsterInstance | None:
    try:
        return context.step_context.instance
    except dg.DagsterInvariantViolationError:
        return None


def _contents(
    obj: object, partitions: list[str], asset: str
) -> tuple[Mapping[str, FileContent], Any]:
    """The asset's output as {partition: content}, and the source session it came with."""
    session = None
    if isinstance(obj, ExportStreams):
        contents: Mapping[str, Any] = obj.streams
        session = obj.session
    elif isinstance(obj, Mapping):
        contents = obj
    elif len(partitions) == 1:
        contents = {partitions[0]: obj}
    else:
        contents = {}
    problems = [
        f"{pk}: {type(contents.get(pk)).__name__}"
        for pk in partitions
        if not callable(getattr(contents.get(pk), "write_to", None))
    ]
    if problems:
        raise dg.Failure(
            description=f"{asset} returned no file stream for {len(problems)} of its "
            f"{len(partitions)} partitions ({', '.join(problems[:5])}); the export IO manager "
            "stores file streams (export_pipeline.engine.FileContent), one per partition",
            allow_retries=False,
        )
    return contents, session
