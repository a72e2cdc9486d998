"""File extensions and Content-Types for each format and compression."""

from __future__ import annotations

from export_pipeline.spec import Compression, Format

_BASE = {
    Format.PARQUET: (".parquet", "application/vnd.apache.parquet"),
    Format.CSV: (".csv", "text/csv; charset=utf-8"),
    Format.JSONL: (".jsonl", "application/jsonl; charset=utf-8"),
    Format.JSON: (".json", "application/json; charset=utf-8"),
}
# Compressed text files are stored as what they are (a .gz / .zst file), not as text with a
# Content-Encoding: with Content-Encoding, browsers and HTTP clients decompress on download, so
# the saved file would no longer match its name or the recorded sha256.
_WRAPPED = {
    Compression.GZIP: (".gz", "application/gzip"),
    Compression.ZSTD: (".zst", "application/zstd"),
}


def extension(fmt: Format, compression: Compression) -> str:
    """`.parquet` (compression is inside the file), `.csv`, `.csv.gz`, `.jsonl.zst`, ..."""
    ext = _BASE[fmt][0]
    if fmt is not Format.PARQUET and compression in _WRAPPED:
        ext += _WRAPPED[compression][0]
    return ext


def content_type(fmt: Format, compression: Compression) -> str:
    if fmt is not Format.PARQUET and compression in _WRAPPED:
        return _WRAPPED[compression][1]
    return _BASE[fmt][1]
