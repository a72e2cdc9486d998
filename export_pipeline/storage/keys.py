"""Object keys: `<prefix>/<customer>/<YYYY-MM>/<dataset>.<ext>`.

The customer is its own path segment, validated so it cannot escape it; see
`partitions.validate_customer_key`.
"""

from __future__ import annotations

import re

from export_pipeline.errors import ExportError
from export_pipeline.partitions import Month, validate_customer_key

_PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9._=-]+")


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
