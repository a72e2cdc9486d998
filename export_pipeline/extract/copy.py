"""Byte chunks from `COPY (...) TO STDOUT`, read through psycopg.

PostgreSQL sends one CopyData message per row; chunks are coalesced to about `chunk_size`
bytes so downstream work (compression, hashing, upload) runs per chunk, not per row.
Memory: one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import psycopg
from psycopg import sql

DEFAULT_CHUNK_SIZE = 1024 * 1024


def copy_chunks(
    cur: psycopg.Cursor,
    statement: sql.Composed,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: Callable[[int], None] | None = None,
) -> Generator[bytes, None, None]:
    """Yield the COPY output in chunks; afterwards `cur.rowcount` is the number of rows.

    `on_chunk`, if given, is called with the number of COPY messages (rows, plus a CSV
    header line) received so far, each time the consumer has taken a chunk: once per chunk,
    counted by `enumerate` in C, so nothing is added per row in Python.
    """
    buffer = bytearray()
    with cur.copy(statement) as copy:
        if on_chunk is None:
            for data in copy:
                buffer += data
                if len(buffer) >= chunk_size:
                    yield bytes(buffer)
                    buffer.clear()
        else:
            for messages, data in enumerate(copy, 1):
                buffer += data
                if len(buffer) >= chunk_size:
                    yield bytes(buffer)
                    buffer.clear()
                    on_chunk(messages)
    if buffer:
        yield bytes(buffer)
