"""A delivered file as downstream code sees it: what it is, and ways to read it.

No data is read when the handle is made; `open()` streams the object and, for Parquet,
`dataset()` reads through pyarrow's own filesystem (footer first, then only the row groups and
columns asked for), so nothing is downloaded up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from export_pipeline.errors import ExportError
from export_pipeline.spec import Compression, Format
from export_pipeline.storage.writer import DownloadLink, ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads


class StoredFileError(ExportError, ValueError):
    """A delivered file cannot be read the way it was asked for."""


@dataclass(frozen=True)
class StoredFile:
    store: ObjectStore
    key: str
    uri: str
    size_bytes: int
    sha256: str
    row_count: int
    format: Format
    compression: Compression
    # What the materialization also recorded: columns as (name, PostgreSQL type), when the
    # source snapshot was taken, when its recorded download link expires (None: not recorded).
    columns: tuple[tuple[str, str], ...] = ()
    snapshot_at: datetime | None = None
    link_expires_at: datetime | None = None

    def open(self) -> BinaryIO:
        """The object's bytes exactly as stored: a `.csv.gz` stays gzip-compressed, so the
        bytes hash to `sha256`. Close it (or use `with`)."""
        return self.store.open_reader(self.key)

    def presign(self, ttl_seconds: int | None = None) -> DownloadLink:
        """A fresh presigned GET link (S3 only); the default TTL is the configured one."""
        link = self.store.download_link(self.key, ttl_seconds)
        if link is None:
            raise StoredFileError(f"{self.uri}: local files have no download links (S3 only)")
        return link

    def dataset(self) -> pads.Dataset:
        """The Parquet file as a `pyarrow.dataset.Dataset` (lazy; filter and project on it)."""
        import pyarrow.dataset as pads

        if self.format is not Format.PARQUET:
            raise StoredFileError(
                f"{self.uri} is {self.format.value}, not parquet: use open() to read it"
            )
        filesystem, root = self.store.arrow_filesystem()
        return pads.dataset(f"{root}/{self.key}", filesystem=filesystem, format="parquet")

    def read_table(self, **to_table_kwargs: Any) -> pa.Table:
        """`dataset().to_table(...)`: e.g. `columns=[...]`, `filter=pc.field(...) > x`."""
        return self.dataset().to_table(**to_table_kwargs)
