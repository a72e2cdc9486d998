"""The code location: composition only. `dagster dev -m export_pipeline.definitions`."""

from pathlib import Path

import dagster as dg

import export_pipeline.defs


@dg.definitions
def defs() -> dg.Definitions:
    # The tree of the defs package itself, not load_from_defs_folder: that one looks for a
    # pyproject.toml above the package, which an installed wheel or image does not have.
    tree = dg.ComponentTree.from_module(
        defs_module=export_pipeline.defs, project_root=Path(__file__).resolve().parent
    )
    return tree.build_defs()
