"""Modules that register Dagster objects. `definitions.py` builds them as a component tree
(`dg.ComponentTree`, what `load_from_defs_folder` does, without its search for a
pyproject.toml, which an installed wheel or image does not have): each module's top-level
Dagster objects are loaded, and `exports.py`'s `@dg.definitions` function builds everything
that depends on the spec."""
