"""CSV, JSON Lines and JSON, rendered by PostgreSQL itself and streamed through COPY.

PostgreSQL writes every value in its own text output (what `psql \\copy` produces), so nothing
is re-encoded per row in Python. JSON Lines uses `row_to_json`, sent through COPY's CSV mode
with a delimiter and quote byte (0x01, 0x02) that JSON text never contains raw, so each line
arrives verbatim; COPY's text mode would double every backslash.
"""

from __future__ import annotations

import re

from psycopg import sql

from export_pipeline.spec import Format


def copy_statement(fmt: Format, query: sql.Composable) -> sql.Composed:
    """The `COPY (...) TO STDOUT` statement that renders `query` in `fmt`."""
    if fmt is Format.CSV:
        return sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER true)").format(query)
    if fmt in (Format.JSONL, Format.JSON):
        return sql.SQL(
            "COPY (SELECT row_to_json(_export_row) FROM ({}) AS _export_row) "
            "TO STDOUT (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')"
        ).format(query)
    raise ValueError(f"{fmt} is not a COPY format")


_NEWLINE = re.compile(b"\n")


class JsonArrayFramer:
    """Turns JSON Lines chunks into one JSON array, streaming.

    Lines never contain a raw newline (JSON escapes it), so each newline is a row boundary.
    Memory: one chunk.
    """

    def __init__(self) -> None:
        self._started = False
        self._pending_separator = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        return b"".join(self.feed_parts(chunk))

    def feed_parts(self, chunk: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """The framed chunk as pieces to write in order, without joining them. A chunk that
        is one row (a 50 MB value) is not copied at all; others are copied once (the
        newline replacement)."""
        view = memoryview(chunk).cast("B")
        if not len(view):
            return []
        head = b"[\n" if not self._started else (b",\n" if self._pending_separator else b"")
        self._started = True
        self._pending_separator = view[-1] == 0x0A
        body = view[:-1] if self._pending_separator else view
        if _NEWLINE.search(body):  # several rows: separate them (re reads the buffer in place)
            return [head, bytes(body).replace(b"\n", b",\n")]
        return [head, body]

    def finish(self) -> bytes:
        return b"\n]\n" if self._started else b"[]\n"
