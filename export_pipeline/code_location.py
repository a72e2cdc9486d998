"""How the code location is built: once per process and inputs, with one-line errors.

`definitions.py` composes; this builds. The defs folder is built as a component tree (what
`load_from_defs_folder` does, without its search for a pyproject.toml above the package,
which an installed wheel or image does not have).
"""

import functools
import os
import warnings
from pathlib import Path

import click
import dagster as dg

import export_pipeline.defs
from export_pipeline.errors import ExportError
from export_pipeline.settings import spec_path

CODE_LOCATION_NAME = "export_pipeline"  # as [tool.dg.project] in pyproject.toml


def build_definitions() -> dg.Definitions:
    """The definitions for the environment and the spec file as they are now."""
    return _build(_inputs())


def _inputs() -> tuple[object, ...]:
    """What the definitions are built from: the environment and the spec file as it is now."""
    spec = spec_path()
    try:
        stat = spec.stat()
        version: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None
    return (tuple(sorted(os.environ.items())), str(spec), version)


# One build per process for the same inputs: Dagster calls `defs` several times while it
# loads and executes a run (six times for `dagster asset materialize`), and each build of
# the component tree also renders the JSON schema of every installed component type
# (about 0.3 s of CPU each time).
@functools.lru_cache(maxsize=1)
def _build(inputs: tuple[object, ...]) -> dg.Definitions:
    tree = dg.ComponentTree(
        defs_module=export_pipeline.defs,
        project_root=Path(__file__).resolve().parent,
        code_location_name=CODE_LOCATION_NAME,
    )
    try:
        with warnings.catch_warnings():
            # load_from_defs_folder silences these too: the module loader it uses is in preview.
            warnings.simplefilter("ignore", category=dg.PreviewWarning)
            return tree.build_defs()
    except Exception as exc:
        error = _export_error(exc)
        if error is None:
            raise
        # A bad spec or EXPORT_* variable is the user's to fix, and its message says how.
        # Dagster's commands are click programs: `dg list defs` and `dagster asset
        # materialize` print a ClickException as one line; the UI shows it as the code
        # location's error, caused by ours (Dagster's component-tree wrapper left out).
        raise click.ClickException(f"export_pipeline: {error}") from error


def _export_error(exc: BaseException) -> ExportError | None:
    """The ExportError (spec, settings, storage configuration) behind a failed build."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ExportError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
