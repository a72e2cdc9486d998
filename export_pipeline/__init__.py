"""export_pipeline: per-customer, per-month exports from PostgreSQL to S3, run by Dagster."""
