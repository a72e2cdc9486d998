"""Modules that register Dagster objects; loaded by `definitions.py` with load_from_defs_folder."""
