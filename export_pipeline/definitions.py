"""The code location: composition only. `dagster dev -m export_pipeline.definitions`."""

import warnings
from pathlib import Path

import dagster as dg

import export_pipeline.defs

CODE_LOCATION_NAME = "export_pipeline"  # as [tool.dg.project] in pyproject.toml


@dg.definitions
def defs() -> dg.Definitions:
    # What load_from_defs_folder builds, without its search for a pyproject.toml above the
    # package, which an installed wheel or image does not have.
    tree = dg.ComponentTree(
        defs_module=export_pipeline.defs,
        project_root=Path(__file__).resolve().parent,
        code_location_name=CODE_LOCATION_NAME,
    )
    with warnings.catch_warnings():
        # load_from_defs_folder silences these too: the module loader it uses is in preview.
        warnings.simplefilter("ignore", category=dg.PreviewWarning)
        return tree.build_defs()
