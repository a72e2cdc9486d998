"""A local folder as object storage: for laptops and tests.

Bytes go to a hidden temporary file next to the final path, which is fsynced and renamed into
place on commit (atomic on POSIX); an abort deletes it. Memory: none beyond the caller's chunk.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from export_pipeline.errors import ExportError
from export_pipeline.storage.keys import DEFAULT_PREFIX, normalize_prefix
from export_pipeline.storage.writer import ObjectHeaders, ObjectStore, ObjectWriter


class LocalObjectWriter(ObjectWriter):
    def __init__(self, key: str, path: Path, root: Path | None = None) -> None:
        super().__init__(key)
        self.path = path
        self._root = root
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        self._file = open(self._tmp, "xb")

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)

    def _commit(self) -> str:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        try:
            os.replace(self._tmp, self.path)
        except FileNotFoundError as exc:
            raise ExportError(
                f"{self.path}: the temporary file was removed by another writer of the same "
                "key (a concurrent export of this partition) before this one committed "
                "(transient)",
                transient=True,
            ) from exc
        return str(self.path)

    def _abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        # Folders made for this object and left empty go too (never the store's root).
        folder = self.path.parent
        while self._root is not None and self._root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty: another object lives here
                break
            folder = folder.parent


class LocalObjectStore(ObjectStore):
    """Objects under `root/<prefix>/...`; URIs are absolute file paths."""

    def __init__(self, root: str | Path, prefix: str = DEFAULT_PREFIX) -> None:
        self.root = Path(root).expanduser().resolve()
        self.prefix = normalize_prefix(prefix)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"object key {key!r} escapes the storage folder")
        return path

    @property
    def location(self) -> str:
        return f"file://{self.root}/{self.prefix}"

    def open_writer(self, key: str, headers: ObjectHeaders) -> ObjectWriter:
        return LocalObjectWriter(key, self.path(key), self.root)

    def remove_orphans(self, keys: Sequence[str]) -> int:
        removed = 0
        for key in keys:
            path = self.path(key)
            if not path.parent.is_dir():
                continue
            for orphan in path.parent.glob(f".{path.name}.*.partial"):
                orphan.unlink(missing_ok=True)
                removed += 1
        return removed

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def read_tail(self, key: str, length: int) -> tuple[int, bytes] | None:
        try:
            with open(self.path(key), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - length))
                return size, f.read()
        except FileNotFoundError:
            return None

    def remove_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    def open_reader(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), str(self.root)
