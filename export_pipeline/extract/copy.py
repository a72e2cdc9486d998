"""Byte chunks from `COPY (...) TO STDOUT`, read through psycopg.

PostgreSQL sends one CopyData message per row; chunks are coalesced to about `chunk_size`
bytes so downstream work (compression, hashing, upload) runs per chunk, not per row.
Memory: one chunk.
"""

from __future__ import annotations

from collections.abc import Generator

import psycopg
from psycopg import sql

DEFAULT_CHUNK_SIZE = 1024 * 1024


def copy_chunks(
    cur: psycopg.Cursor, statement: sql.Composed, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Generator[bytes, None, None]:
    """Yield the COPY output in chunks; afterwards `cur.rowcount` is the number of rows."""
    buffer = bytearray()
    with cur.copy(statement) as copy:
        for data in copy:
            buffer += data
            if len(buffer) >= chunk_size:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)
