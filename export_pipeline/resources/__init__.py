"""Typed Dagster resources: thin, configurable wrappers that build engine objects."""
