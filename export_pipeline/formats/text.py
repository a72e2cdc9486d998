"""CSV, JSON Lines and JSON, rendered by PostgreSQL itself and streamed through COPY.

PostgreSQL writes every value in its own text output (what `psql \\copy` produces), so nothing
is re-encoded per row in Python. JSON Lines uses `row_to_json`, sent through COPY's CSV mode
with a delimiter and quote byte (0x01, 0x02) that JSON text never contains raw, so each line
arrives verbatim; COPY's text mode would double every backslash.
"""

from __future__ import annotations

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


class JsonArrayFramer:
    """Turns JSON Lines chunks into one JSON array, streaming.

    Lines never contain a raw newline (JSON escapes it), so each newline is a row boundary.
    Memory: one chunk.
    """

    def __init__(self) -> None:
        self._started = False
        self._pending_separator = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        data = bytes(chunk)
        if not data:
            return b""
        head = b"[\n" if not self._started else (b",\n" if self._pending_separator else b"")
        self._started = True
        if data.endswith(b"\n"):
            data = data[:-1]
            self._pending_separator = True
        else:
            self._pending_separator = False
        return head + data.replace(b"\n", b",\n")

    def finish(self) -> bytes:
        return b"\n]\n" if self._started else b"[]\n"
