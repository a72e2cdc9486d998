"""The export assets and everything built from the spec, when Dagster loads the code.

Nothing is read at import time: the spec and the environment are read inside the
`@dg.definitions` function, which Dagster calls when it loads the code location, once. The
sensors that need the spec are built here too, so they can never ask for a dataset that the
loaded assets do not have.

Every run of this code location executes in process (`in_process_executor`): an export step
spends its time waiting on PostgreSQL and S3, not on CPU, and the source pool admits few steps
at once anyway, while a process per step costs an import of Dagster and a load of the code
(measured: 13.3 s for one customer-month with the multiprocess executor, 4.1 s in process;
bench/RESULTS.md). It also lets the steps of a run share one source session.
"""

from __future__ import annotations

import dagster as dg

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.checks import build_export_checks
from export_pipeline.defs.followup import build_partial_failure_sensor
from export_pipeline.defs.manifest import build_manifest_asset
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.defs.requests import build_export_requests_sensor
from export_pipeline.defs.schedules import build_monthly_schedule
from export_pipeline.defs.sensors import build_customers_sensor
from export_pipeline.settings import build_resources, schedule_settings, spec_path
from export_pipeline.spec import load_spec


@dg.definitions
def exports() -> dg.Definitions:
    spec = load_spec(spec_path())
    partitions_def = build_export_partitions_def(spec.months_start)
    when = schedule_settings()
    return dg.Definitions(
        assets=[
            *(build_export_asset(d, partitions_def) for d in spec.datasets.values()),
            build_manifest_asset(spec, partitions_def),
        ],
        asset_checks=[build_export_checks(d, partitions_def) for d in spec.datasets.values()],
        schedules=[build_monthly_schedule(spec.months_start, when.hour, when.timezone)],
        sensors=[
            build_customers_sensor(spec),
            build_partial_failure_sensor(spec, partitions_def),
            build_export_requests_sensor(spec),
        ],
        resources=build_resources(),
        executor=dg.in_process_executor,
    )
