"""Small assertions helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

# The metadata every delivered file's materialization records (the public contract: README,
# "What one run carries"), written out once for the tests that pin it.
FILE_METADATA_KEYS = frozenset(
    {
        "dagster/row_count",
        "dagster/column_schema",
        "size_bytes",
        "uri",
        "sha256",
        "format",
        "compression",
        "snapshot_at",
        "duration_seconds",
        "rows_per_second",
        "unrepresentable",
    }
)


def list_keys(client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def pending_uploads(client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def sqlalchemy_url(libpq_dsn: str) -> str:
    """`postgresql+psycopg2://...` for a libpq DSN (key=value or URI), as dagster.yaml wants."""
    params = conninfo_to_dict(libpq_dsn)
    user = quote(str(params.get("user", "postgres")), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = str(params.get("host", "127.0.0.1"))
    port = str(params.get("port", 5432))
    dbname = quote(str(params["dbname"]), safe="")
    if host.startswith("/"):  # a Unix socket directory (the embedded test server)
        return (
            f"postgresql+psycopg2://{auth}@/{dbname}"
            f"?host={quote(host, safe='/')}&port={quote(port, safe='')}"
        )
    return f"postgresql+psycopg2://{auth}@{host}:{port}/{dbname}"
