"""The sink contract shared by local and S3 storage.

An `ObjectWriter` receives bytes as they are produced, hashes and counts them, and publishes the
object only on `commit()`. Leaving the `with` block without committing (an exception, a
KeyboardInterrupt, a forgotten commit) aborts: nothing is left under the final key.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import BinaryIO, Literal

import pyarrow.fs as pafs


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class DownloadLink:
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class ObjectHeaders:
    """HTTP headers stored with the object."""

    content_type: str
    filename: str

    @property
    def content_disposition(self) -> str:
        return f'attachment; filename="{self.filename}"'


class ObjectWriter(ABC):
    """A write-only binary file that becomes an object on commit.

    Also quacks enough like a file (`write`, `flush`, `tell`, `closed`, `close`) for
    `pyarrow.parquet.ParquetWriter`; `close()` does not commit.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._sha = hashlib.sha256()
        self._size = 0
        self._state: Literal["open", "committed", "aborted"] = "open"
        self.closed = False

    # -- file protocol -------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._state != "open":
            raise ValueError(f"write to a {self._state} object writer for {self.key}")
        n = len(data)
        if n:
            self._sha.update(data)
            self._size += n
            self._write(data)
        return n

    def flush(self) -> None:  # noqa: B027 - nothing is buffered at this level
        pass

    def tell(self) -> int:
        return self._size

    def writable(self) -> bool:
        return True

    @property
    def buffered_only(self) -> bool:
        """True while nothing has been sent: `commit` is then one request (or a rename) with
        what is buffered, and the writer holds at most one part's bytes."""
        return True

    def close(self) -> None:
        self.closed = True

    # -- lifecycle -----------------------------------------------------------------------
    def commit(self) -> StoredObject:
        if self._state != "open":
            raise ValueError(f"commit of a {self._state} object writer for {self.key}")
        uri = self._commit()
        self._state = "committed"
        return StoredObject(self.key, uri, self._size, self._sha.hexdigest())

    def abort(self) -> None:
        if self._state == "open":
            self._state = "aborted"
            self._abort()

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    # -- implementations ---------------------------------------------------------------
    @abstractmethod
    def _write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    def _commit(self) -> str:
        """Publish the object; return its URI."""

    @abstractmethod
    def _abort(self) -> None:
        """Discard everything written; must not raise for a half-started upload."""


class ObjectStore(ABC):
    """Somewhere objects can be written, read back and, maybe, linked to."""

    prefix: str

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the objects live (bucket and prefix, or folder and prefix), e.g. to name them
        in locks and messages."""

    @abstractmethod
    def open_writer(self, key: str, headers: ObjectHeaders) -> ObjectWriter: ...

    @abstractmethod
    def uri(self, key: str) -> str:
        """`s3://bucket/key` or the local path: what materializations record."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes (a HEAD or a stat, never a download); None if absent."""

    @abstractmethod
    def read_tail(self, key: str, length: int) -> tuple[int, bytes] | None:
        """(the object's size, its last `length` bytes or fewer) in one request (a ranged GET
        or a stat and a read); None if absent."""

    @abstractmethod
    def remove_many(self, keys: Sequence[str]) -> None:
        """Delete the objects `keys` (missing ones are fine), in as few requests as the store
        allows; in no particular order."""

    def remove(self, key: str) -> None:
        """Delete the object `key`; nothing happens if there is none."""
        self.remove_many([key])

    @abstractmethod
    def open_reader(self, key: str) -> BinaryIO:
        """The object's bytes as stored, streamed (a compressed file stays compressed)."""

    @abstractmethod
    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem over this store and the path that `key`s are relative to."""

    def remove_orphans(self, keys: Sequence[str]) -> int:
        """Discard what writers of `keys` that died without aborting left behind (a killed
        run's temporary files or open multipart uploads); return how many. Call it only while
        no live writer of these keys can exist (the caller holds their partition locks)."""
        return 0

    def download_link(self, key: str, ttl_seconds: int | None = None) -> DownloadLink | None:
        """A time-limited GET link, where the store has such a thing."""
        return None
