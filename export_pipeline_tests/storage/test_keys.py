from __future__ import annotations

import pytest

from export_pipeline.partitions import Month, PartitionKeyError
from export_pipeline.storage.keys import StorageConfigError, normalize_prefix, object_key


def test_customer_is_its_own_segment() -> None:
    key = object_key("exports", "42", Month(2025, 3), "events", ".parquet")
    assert key == "exports/42/2025-03/events.parquet"
    assert object_key("", "42", Month(2025, 3), "events", ".csv.gz") == "42/2025-03/events.csv.gz"
    assert object_key("/a/b/", "x", Month(2025, 1), "d", ".json") == "a/b/x/2025-01/d.json"


def test_keys_that_escape_are_rejected() -> None:
    with pytest.raises(PartitionKeyError):
        object_key("exports", "../other", Month(2025, 3), "events", ".csv")


@pytest.mark.parametrize("prefix", ["a/../b", "a//b", "./x", "sp ace"])
def test_bad_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(StorageConfigError, match="EXPORT_S3_PREFIX"):
        normalize_prefix(prefix)
