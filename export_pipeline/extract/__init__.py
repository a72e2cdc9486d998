"""Read rows out of PostgreSQL: queries, safe connections, Arrow batches and COPY chunks.

No Dagster imports here; everything is a plain function or dataclass.
"""
