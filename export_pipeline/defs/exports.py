"""The export assets and their resources, built from the spec when Dagster loads the code.

Nothing is read at import time: the spec and the environment are read inside the
`@dg.definitions` function, which Dagster calls when it loads the code location.
"""

from __future__ import annotations

import dagster as dg

from export_pipeline.defs.assets import build_export_asset
from export_pipeline.defs.checks import build_export_checks
from export_pipeline.defs.manifest import build_manifest_asset
from export_pipeline.defs.monthly import build_monthly_exports_job
from export_pipeline.defs.partitions import build_export_partitions_def
from export_pipeline.defs.schedules import build_monthly_schedule
from export_pipeline.settings import build_resources, schedule_settings, spec_path
from export_pipeline.spec import load_spec


@dg.definitions
def exports() -> dg.Definitions:
    spec = load_spec(spec_path())
    partitions_def = build_export_partitions_def(spec.months_start)
    when = schedule_settings()
    monthly_job = build_monthly_exports_job(spec)
    return dg.Definitions(
        assets=[
            *(build_export_asset(d, partitions_def) for d in spec.datasets.values()),
            build_manifest_asset(spec, partitions_def),
        ],
        asset_checks=[build_export_checks(d, partitions_def) for d in spec.datasets.values()],
        jobs=[monthly_job],
        schedules=[
            build_monthly_schedule(monthly_job, spec.months_start, when.hour, when.timezone)
        ],
        resources=build_resources(),
    )
