"""Byte chunks from `COPY (...) TO STDOUT`, read through psycopg.

PostgreSQL sends one CopyData message per row; chunks are coalesced to about `chunk_size`
bytes so downstream work (compression, hashing, upload) runs per chunk, not per row.
A row as large as a chunk or larger (a 50 MB value) is passed on as psycopg returns it (a view
of libpq's own buffer), never copied here.
Memory: one chunk, or one row when a row is larger (libpq holds that row twice: the message
it received and the copy it hands over).
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
) -> Generator[bytes | bytearray | memoryview, None, None]:
    """Yield the COPY output in chunks; afterwards `cur.rowcount` is the number of rows.

    A chunk is valid until the next one is asked for (a large row is a view of psycopg's
    buffer): use it, do not keep it. `on_chunk`, if given, is called with the number of COPY
    messages (rows, plus a CSV header line) received so far, each time the consumer has taken a
    chunk: once per chunk, counted by `enumerate` in C, so nothing is added per row in Python.
    """
    buffer = bytearray()
    messages = 0
    with cur.copy(statement) as copy:
        for messages, data in enumerate(copy, 1):
            if len(data) >= chunk_size:
                if buffer:
                    yield bytes(buffer)
                    buffer.clear()
                yield data  # a large row: as it is, not copied
            else:
                buffer += data
                if len(buffer) < chunk_size:
                    continue
                yield bytes(buffer)
                buffer.clear()
            if on_chunk is not None:
                on_chunk(messages)
    if buffer:
        yield bytes(buffer)
    if on_chunk is not None:
        on_chunk(messages)
