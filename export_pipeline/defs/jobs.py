"""`exports_job`: the export assets, their manifest and their checks, for one partition or a
range of them. The schedule, the sensors and on-demand requests launch it; a UI backfill of
the same assets runs the same steps (the assets' backfill policy makes its runs ranged)."""

import dagster as dg

from export_pipeline.defs.assets import EXPORTS_GROUP

exports_job = dg.define_asset_job(
    "exports_job",
    selection=dg.AssetSelection.groups(EXPORTS_GROUP),
    description="The export assets, the delivery manifest and their checks; a run covers one "
    "customer|month partition or a range of them, and may select some datasets.",
)
