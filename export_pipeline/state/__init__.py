"""The exporter's own tables (requests, failures) in a writable database: pure, no Dagster."""
