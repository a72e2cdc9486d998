"""Streaming compressors for text formats: gzip (ISA-L) and zstd.

ISA-L's gzip is several times faster than zlib at a similar ratio; at level 1 it and zstd
compress the events CSV at 570-690 MB/s, faster than PostgreSQL renders it, so compression runs
on the reading thread and hides behind the server (bench/RESULTS.md). Memory: the compressor's
window plus one output chunk.
"""

from __future__ import annotations

from typing import Protocol

import zstandard
from isal import isal_zlib

from export_pipeline.spec import Compression

GZIP_LEVEL = 1  # ISA-L levels are 0-3; 1 is the speed/ratio sweet spot (see bench/RESULTS.md)
ZSTD_LEVEL = 1  # faster than 3 and, on the events CSV, a smaller file (bench/RESULTS.md)


class Compressor(Protocol):
    def compress(self, data: bytes | bytearray | memoryview) -> bytes: ...
    def flush(self) -> bytes: ...


def make_compressor(compression: Compression) -> Compressor | None:
    """A compressor for a text format, or None for uncompressed output."""
    if compression is Compression.GZIP:
        return isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)  # 31: gzip container
    if compression is Compression.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    if compression is Compression.NONE:
        return None
    raise ValueError(f"{compression} is not a compression for text formats")
