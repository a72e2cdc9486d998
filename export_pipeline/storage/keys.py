"""Object keys: `<prefix>/<customer>/<YYYY-MM>/<dataset>.<ext>`, and next to them the
customer-month's `manifest.json` and `_SUCCESS` (docs/manifest.md).

The customer is its own path segment, validated so it cannot escape it; see
`partitions.validate_customer_key`.
"""

from __future__ import annotations

import re

from export_pipeline.errors import ExportError
from export_pipeline.partitions import Month, validate_customer_key

_PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9._=-]+")
DEFAULT_PREFIX = "exports"  # objects are <prefix>/<customer>/<YYYY-MM>/<dataset>.<ext>

MANIFEST_STEM, MANIFEST_EXTENSION = "manifest", ".json"
SUCCESS_NAME = "_SUCCESS"
# Dataset names whose files could be taken for the delivery's own files (spec.py rejects them).
RESERVED_DATASET_NAMES = frozenset({MANIFEST_STEM})


class StorageConfigError(ExportError, ValueError):
    """The storage settings (bucket, prefix, folder) are unusable."""


def normalize_prefix(prefix: str) -> str:
    """Strip slashes and check each segment; '' is allowed (objects at the bucket root)."""
    cleaned = prefix.strip().strip("/")
    if not cleaned:
        return ""
    for segment in cleaned.split("/"):
        if segment in {".", ".."} or not _PREFIX_SEGMENT_RE.fullmatch(segment):
            raise StorageConfigError(
                f"EXPORT_S3_PREFIX {prefix!r} is not allowed: segments may use "
                "A-Z a-z 0-9 . _ = - and must not be '.' or '..'"
            )
    return cleaned


def object_key(prefix: str, customer: str, month: Month, dataset: str, extension: str) -> str:
    """The key of one customer-month export of one dataset."""
    customer = validate_customer_key(customer)
    parts = [normalize_prefix(prefix), customer, str(month), f"{dataset}{extension}"]
    return "/".join(p for p in parts if p)


def manifest_key(prefix: str, customer: str, month: Month) -> str:
    """The key of the customer-month's `manifest.json`, next to its exports."""
    return object_key(prefix, customer, month, MANIFEST_STEM, MANIFEST_EXTENSION)


def success_key(prefix: str, customer: str, month: Month) -> str:
    """The key of the customer-month's `_SUCCESS` marker, next to its exports."""
    return object_key(prefix, customer, month, SUCCESS_NAME, "")
