from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.writer import ObjectHeaders
from export_pipeline_tests.helpers import files_under

HEADERS = ObjectHeaders("text/csv", "d.csv")


def test_commit_publishes_exact_bytes_and_checksum(local_store: LocalObjectStore) -> None:
    with local_store.open_writer("exports/1/2025-01/d.csv", HEADERS) as writer:
        writer.write(b"a,b\n")
        writer.write(memoryview(b"1,2\n"))
        stored = writer.commit()
    path = Path(stored.uri)
    assert path.read_bytes() == b"a,b\n1,2\n"
    assert stored.size_bytes == 8
    assert stored.sha256 == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert files_under(local_store.root) == ["exports/1/2025-01/d.csv"]


def test_error_before_commit_leaves_nothing(local_store: LocalObjectStore) -> None:
    with pytest.raises(RuntimeError), local_store.open_writer("exports/1/x.csv", HEADERS) as w:
        w.write(b"partial")
        raise RuntimeError("boom")
    assert files_under(local_store.root) == []


def test_without_commit_nothing_is_published(local_store: LocalObjectStore) -> None:
    with local_store.open_writer("exports/1/x.csv", HEADERS) as writer:
        writer.write(b"forgotten")
    assert files_under(local_store.root) == []


def test_failed_rewrite_keeps_the_previous_object(local_store: LocalObjectStore) -> None:
    with local_store.open_writer("k.csv", HEADERS) as writer:
        writer.write(b"v1")
        writer.commit()
    with pytest.raises(RuntimeError), local_store.open_writer("k.csv", HEADERS) as w:
        w.write(b"v2-partial")
        raise RuntimeError("boom")
    assert (local_store.root / "k.csv").read_bytes() == b"v1"
    assert files_under(local_store.root) == ["k.csv"]


def test_remove_many_and_read_tail(local_store: LocalObjectStore) -> None:
    for key, body in (("exports/1/a.csv", b"0123456789"), ("exports/1/empty.csv", b"")):
        with local_store.open_writer(key, HEADERS) as writer:
            writer.write(body)
            writer.commit()
    assert local_store.read_tail("exports/1/a.csv", 4) == (10, b"6789")
    assert local_store.read_tail("exports/1/a.csv", 40) == (10, b"0123456789")
    assert local_store.read_tail("exports/1/empty.csv", 4) == (0, b"")
    assert local_store.read_tail("exports/1/missing.csv", 4) is None
    local_store.remove_many(["exports/1/a.csv", "exports/1/missing.csv", "exports/1/a.csv"])
    local_store.remove("exports/2/never.csv")
    assert files_under(local_store.root) == ["exports/1/empty.csv"]
    assert local_store.location == f"file://{local_store.root}/exports"


def test_remove_orphans_removes_only_dead_writers_files_of_the_keys(
    local_store: LocalObjectStore,
) -> None:
    dead = local_store.open_writer("exports/1/2025-03/d.csv", HEADERS)  # killed: never aborted
    dead.write(b"partial")
    other = local_store.open_writer("exports/1/2025-03/e.csv", HEADERS)  # another key's
    other.write(b"partial")
    assert local_store.remove_orphans(["exports/1/2025-03/d.csv", "exports/7/2025-03/d.csv"]) == 1
    assert [p.name.split(".")[1] for p in local_store.path("exports/1/2025-03").iterdir()] == ["e"]
    other.abort()
