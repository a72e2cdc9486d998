"""File formats: Parquet from Arrow batches; CSV, JSON Lines and JSON from COPY byte chunks."""
