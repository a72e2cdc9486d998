"""The delivery manifest of one customer-month, written after its files. No Dagster here.

Next to the exports (storage/keys.py): `<prefix>/<customer>/<YYYY-MM>/manifest.json`, then
`_SUCCESS` holding the manifest's sha256 (64 hex digits). The order of writes:
1. before any dataset of the customer-month is (re)written, `engine.publish` removes
   `_SUCCESS`, then `manifest.json` (`engine.invalidate_delivery`): a manifest never describes
   an object that is being replaced, and a failed export leaves none;
2. the dataset files;
3. once every dataset is delivered, `write_manifest`: remove `_SUCCESS`, write
   `manifest.json`, write `_SUCCESS`.
Each object goes through the store's atomic writer (`engine.deliver`), so neither is ever seen
half-written, and `_SUCCESS` never names a manifest other than the one beside it.
The format, with an example: docs/manifest.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from export_pipeline.engine import ExportResult, Written, deliver
from export_pipeline.errors import ExportError
from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.files import StoredFile
from export_pipeline.storage.keys import manifest_key, success_key
from export_pipeline.storage.writer import ObjectStore, ObjectWriter, StoredObject

MANIFEST_VERSION = 1
MANIFEST_CONTENT_TYPE = "application/json"
SUCCESS_CONTENT_TYPE = "text/plain"


class ManifestError(ExportError, ValueError):
    """A manifest cannot be written for what was asked (no datasets, say)."""


@dataclass(frozen=True)
class ManifestEntry:
    """One dataset's file as the manifest lists it."""

    dataset: str
    key: str
    rows: int
    size_bytes: int
    sha256: str
    format: Format
    compression: Compression
    columns: tuple[tuple[str, str], ...]  # (name, PostgreSQL type), in file order
    snapshot_at: datetime | None
    link_expires_at: datetime | None  # None: no download link recorded

    @classmethod
    def of_result(cls, result: ExportResult) -> ManifestEntry:
        """From an export just written (the monthly job)."""
        return cls(
            dataset=result.dataset,
            key=result.stored.key,
            rows=result.rows,
            size_bytes=result.stored.size_bytes,
            sha256=result.stored.sha256,
            format=result.format,
            compression=result.compression,
            columns=tuple((c.name, c.pg_type) for c in result.columns),
            snapshot_at=result.snapshot_at,
            link_expires_at=result.link.expires_at if result.link else None,
        )

    @classmethod
    def of_file(cls, dataset: str, stored: StoredFile) -> ManifestEntry:
        """From a recorded export's handle (what the IO manager's `load_input` gives)."""
        return cls(
            dataset=dataset,
            key=stored.key,
            rows=stored.row_count,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            format=stored.format,
            compression=stored.compression,
            columns=stored.columns,
            snapshot_at=stored.snapshot_at,
            link_expires_at=stored.link_expires_at,
        )

    def document(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "rows": self.rows,
            "bytes": self.size_bytes,
            "sha256": self.sha256,
            "format": self.format.value,
            "compression": self.compression.value,
            "columns": [{"name": name, "type": pg_type} for name, pg_type in self.columns],
            "snapshot_at": _instant(self.snapshot_at),
            "download_url_expires_at": _instant(self.link_expires_at),
        }


def manifest_document(
    customer: str, month: Month, entries: Sequence[ManifestEntry], created_at: datetime
) -> dict[str, Any]:
    """The manifest as JSON-ready data."""
    names = [e.dataset for e in entries]
    if not entries or len(set(names)) != len(names):
        raise ManifestError(
            f"manifest of {customer} {month}: needs each dataset once, got {sorted(names)}"
        )
    return {
        "manifest_version": MANIFEST_VERSION,
        "customer": customer,
        "month": str(month),
        "created_at": _instant(created_at),
        "datasets": {e.dataset: e.document() for e in sorted(entries, key=lambda e: e.dataset)},
    }


def encode_manifest(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class BytesContent:
    """A small object held in memory (a manifest, a marker), for `engine.deliver`."""

    data: bytes
    content_type: str

    def write_to(self, writer: ObjectWriter) -> Written:
        writer.write(self.data)
        return Written(rows=0, columns=[])


@dataclass(frozen=True)
class ManifestDelivery:
    customer: str
    month: Month
    document: dict[str, Any]
    manifest: StoredObject
    success: StoredObject


def write_manifest(
    store: ObjectStore,
    customer: str,
    month: Month,
    entries: Sequence[ManifestEntry],
    created_at: datetime | None = None,
) -> ManifestDelivery:
    """Write the customer-month's `manifest.json`, then `_SUCCESS` holding its sha256.

    Call only once every dataset of the customer-month is delivered. An older `_SUCCESS` is
    removed first, so the marker present always names the manifest present.
    """
    document = manifest_document(customer, month, entries, created_at or datetime.now(UTC))
    marker_key = success_key(store.prefix, customer, month)
    store.remove(marker_key)
    manifest = deliver(
        BytesContent(encode_manifest(document), MANIFEST_CONTENT_TYPE),
        store,
        manifest_key(store.prefix, customer, month),
    ).stored
    success = deliver(
        BytesContent(manifest.sha256.encode("ascii"), SUCCESS_CONTENT_TYPE), store, marker_key
    ).stored
    return ManifestDelivery(customer, month, document, manifest, success)


def _instant(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()
