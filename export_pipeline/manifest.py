"""The delivery manifest of one customer-month, written after its files. No Dagster here.

Next to the exports (storage/keys.py): `<prefix>/<customer>/<YYYY-MM>/manifest.json`, then
`_SUCCESS` holding the manifest's sha256 (64 hex digits). The order of writes:
1. before any dataset of the customer-month is (re)written, `withdraw_manifests` removes
   `_SUCCESS`, then `manifest.json` (batch.export_batch does it for a whole range of
   customer-months in two batched requests): a manifest never describes an object that is
   being replaced, and a failed export leaves none;
2. the dataset files;
3. once every dataset is delivered, `write_manifest`: write `manifest.json`, then `_SUCCESS`
   (a `_SUCCESS` left from before is removed first, by `withdraw_manifests`).
Each object goes through the store's atomic writer (`engine.write_object`), so neither is ever
seen half-written, and `_SUCCESS` never names a manifest other than the one beside it. All of
this happens under the customer-month's partition lock (extract/session.py), so no other run
writes the same customer-month's files or manifest meanwhile.
The format, with an example: docs/manifest.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from export_pipeline.engine import Written, write_object
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
            "snapshot_at": _iso(self.snapshot_at),
            "download_url_expires_at": _iso(self.link_expires_at),
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
        "created_at": _iso(created_at),
        "datasets": {e.dataset: e.document() for e in sorted(entries, key=lambda e: e.dataset)},
    }


def encode_manifest(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class BytesContent:
    """A small object held in memory (a manifest, a marker), for `engine.write_object`."""

    data: bytes
    content_type: str

    def write_to(self, writer: ObjectWriter) -> Written:
        writer.write(self.data)
        return Written(rows=0, columns=[])


@dataclass(frozen=True)
class WrittenManifest:
    """A customer-month's manifest and `_SUCCESS`, as written."""

    customer: str
    month: Month
    document: dict[str, Any]
    manifest: StoredObject
    success: StoredObject


def withdraw_manifests(store: ObjectStore, customer_months: Iterable[tuple[str, Month]]) -> None:
    """Remove the customer-months' `_SUCCESS`, then their `manifest.json`: two batched
    requests however many customer-months (up to 1,000 each; S3 DeleteObjects).

    In this order, so that whenever a `_SUCCESS` exists the manifest it names exists too.
    """
    pairs = sorted(set(customer_months))
    store.remove_many([success_key(store.prefix, c, m) for c, m in pairs])
    store.remove_many([manifest_key(store.prefix, c, m) for c, m in pairs])


def write_manifest(
    store: ObjectStore,
    customer: str,
    month: Month,
    entries: Sequence[ManifestEntry],
    created_at: datetime | None = None,
) -> WrittenManifest:
    """Write the customer-month's `manifest.json`, then `_SUCCESS` holding its sha256.

    Call only once every dataset of the customer-month is delivered, and after
    `withdraw_manifests` removed the `_SUCCESS` left from before (so the marker present always
    names the manifest present).
    """
    document = manifest_document(customer, month, entries, created_at or datetime.now(UTC))
    manifest = write_object(
        BytesContent(encode_manifest(document), MANIFEST_CONTENT_TYPE),
        store,
        manifest_key(store.prefix, customer, month),
    )
    success = write_object(
        BytesContent(manifest.sha256.encode("ascii"), SUCCESS_CONTENT_TYPE),
        store,
        success_key(store.prefix, customer, month),
    )
    return WrittenManifest(customer, month, document, manifest, success)


def _iso(value: datetime | None) -> str | None:
    """An instant as the manifest writes it: ISO 8601 in UTC."""
    return None if value is None else value.astimezone(UTC).isoformat()
