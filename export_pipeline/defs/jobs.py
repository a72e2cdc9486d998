"""Jobs: every export asset, for runs requested by sensors (one partition, some datasets)."""

import dagster as dg

EXPORTS_GROUP = "exports"

exports_job = dg.define_asset_job(
    "exports_job",
    selection=dg.AssetSelection.groups(EXPORTS_GROUP),
    description="The export assets; runs pick a customer|month partition and the datasets.",
)
