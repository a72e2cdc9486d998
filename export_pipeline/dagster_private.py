"""Every Dagster API this project uses that Dagster does not promise to keep, in one place.

Each has a test in export_pipeline_tests/test_dagster_private.py that fails loudly on a Dagster
upgrade that breaks it. Everything else in the project uses Dagster's public API.

- `report_progress_event`: an engine event carrying progress metadata
  (`DagsterInstance.report_engine_event` with `dagster._core.events.EngineEventData`). Dagster
  has no public way to write an event with metadata that is neither an asset event (which
  would enter the asset's history) nor a plain log line; the CLI reads the figures back.
- `pool_instance_connections`: `DagsterInstance.optimize_for_webserver`. Outside the
  webserver, the Postgres storages open a new connection for every statement (SQLAlchemy
  NullPool): about 3 connections, some 20 ms here, per recorded event, most of a run's cost at
  thousands of partitions (bench/RESULTS.md, "Scale"). This switches a run's instance to a
  small pool, as the webserver does. Other storages (SQLite) ignore it.
- `current_asset_context`: `AssetExecutionContext.get()` is public, but that it is set while an
  IO manager's `handle_output` and `load_input` run is not promised: the export IO manager
  adds each partition's own metadata through it (`add_asset_metadata(..., partition_key=)`),
  and `load_input` reads the run's id from it.
- `ranged_run_tags`: the run tags of a ranged run, which a schedule or sensor can only ask for
  by writing them (`RunRequest` has no public range parameter, only the property that reads
  them back).
- `RunInterrupted`: how a step that took a cancel ends the run instead of being retried. Dagster
  turns an interrupt raised in user code into a retry when the op has a RetryPolicy, and the
  in-process executor never looks at the cancel again (see the class).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._core.events import EngineEventData


def report_progress_event(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    step_key: str | None,
    message: str,
    metadata: Mapping[str, Any],
) -> None:
    """Write an engine event with `metadata` to the run's event log, now (any thread)."""
    instance.report_engine_event(
        message,
        dagster_run=run,
        engine_event_data=EngineEventData(dict(metadata)),
        step_key=step_key,
    )


def pool_instance_connections(instance: dg.DagsterInstance) -> None:
    """Keep the instance's database connections open for the rest of this process (1
    connection + 2 overflow, recycled hourly, 60 s statement timeout)."""
    instance.optimize_for_webserver(statement_timeout=60_000, pool_recycle=3600, max_overflow=2)


def current_asset_context() -> dg.AssetExecutionContext | None:
    """The asset step being executed in this thread, or None outside one (a context built by
    hand in a test, a load outside a run)."""
    try:
        return dg.AssetExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return None


# The tags by which a run covers a range of partitions (`context.partition_keys`). Dagster's
# backfill daemon writes them; a schedule or sensor has no public parameter for a ranged run,
# only these tags (RunRequest reads them back as its public `partition_key_range`).
_RANGE_START_TAG = "dagster/asset_partition_range_start"
_RANGE_END_TAG = "dagster/asset_partition_range_end"


def ranged_run_tags(first: str, last: str) -> dict[str, str]:
    """Run tags asking for the partitions from `first` to `last` (for multi-partitions: the
    product of each dimension's range)."""
    return {_RANGE_START_TAG: first, _RANGE_END_TAG: last}


def run_partition_range(run: dg.DagsterRun) -> tuple[str, str] | None:
    """The (first, last) partition keys of a ranged run, from its tags; None otherwise."""
    first, last = run.tags.get(_RANGE_START_TAG), run.tags.get(_RANGE_END_TAG)
    return (first, last) if first is not None and last is not None else None


class RunInterrupted(dg.DagsterExecutionInterruptedError, dg.DagsterError):
    """Raise it (`from` the interrupt) when a step took a cancel (SIGTERM, SIGINT, the UI's
    "Terminate"): Dagster then fails the step as interrupted and ends the run.

    A plain interrupt raised in an op with a RetryPolicy becomes a retry: Dagster's
    `op_execution_error_boundary` turns it into `RetryRequested`. A step in a process of its own
    is not retried once its run is cancelled (the multiprocess executor checks for the cancel),
    but the in-process executor, which every run of this code location uses, checks nothing:
    a cancelled run would export again after the retry delay (measured: a SIGTERM to
    `dagster asset materialize` re-ran the step 52 s later and succeeded). That boundary passes
    a `DagsterError` through unchanged, and the step's handler treats a
    `DagsterExecutionInterruptedError` as an interrupt, so this is both."""


# What a cancelled run raises in the step's thread.
INTERRUPTS = (KeyboardInterrupt, dg.DagsterExecutionInterruptedError)


@contextmanager
def cancel_ends_the_run(what: str) -> Iterator[None]:
    """A cancel inside the block ends the run (`RunInterrupted`), never a RetryPolicy retry."""
    try:
        yield
    except RunInterrupted:
        raise
    except INTERRUPTS as exc:
        raise RunInterrupted(f"{what}: the run was cancelled") from exc
