"""The code location: composition only. `dagster dev -m export_pipeline.definitions`."""

import dagster as dg

from export_pipeline.code_location import CODE_LOCATION_NAME, build_definitions

__all__ = ["CODE_LOCATION_NAME", "defs"]


@dg.definitions
def defs() -> dg.Definitions:
    """The export assets, checks, jobs, schedule, sensors and resources (export_pipeline/defs)."""
    return build_definitions()
