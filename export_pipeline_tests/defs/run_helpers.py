"""The contexts Dagster gives the run-status sensors, built from a real run on a test instance.

Runs themselves are made with the harness (`export_pipeline_tests.harness.materialize`).
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

# A source nobody listens on, with a password that must never appear anywhere.
UNREACHABLE_SOURCE = "postgresql://u:pw-source-123@127.0.0.1:1/x"


def status_context(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    event_type: dg.DagsterEventType,
    sensor_name: str,
    resources: Mapping[str, object],
) -> dg.RunStatusSensorContext:
    """The context a run-status sensor gets for `run`'s event of `event_type`."""
    [entry] = instance.all_logs(run.run_id, of_type=event_type)
    assert entry.dagster_event is not None
    return dg.build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_event=entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources=resources,
    )


def failure_context(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    sensor_name: str,
    resources: Mapping[str, object],
) -> dg.RunFailureSensorContext:
    """The context a run-failure sensor gets for the failed `run`."""
    context = status_context(instance, run, dg.DagsterEventType.RUN_FAILURE, sensor_name, resources)
    return context.for_run_failure()
