from __future__ import annotations

import json

import pytest

from export_pipeline.formats.naming import content_type, extension
from export_pipeline.formats.text import JsonArrayFramer
from export_pipeline.spec import Compression, Format

LINES = b'{"a":1}\n{"b":"x\\ny"}\n{"c":[1,2]}\n'


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 8, 9, 15, len(LINES)])
def test_json_array_framing_is_valid_for_any_chunking(cut: int) -> None:
    framer = JsonArrayFramer()
    chunks = [LINES[i : i + cut] for i in range(0, len(LINES), cut)]
    out = b"".join(framer.feed(c) for c in chunks) + framer.finish()
    assert json.loads(out) == [{"a": 1}, {"b": "x\ny"}, {"c": [1, 2]}]


def test_json_array_framing_of_nothing_is_an_empty_array() -> None:
    framer = JsonArrayFramer()
    assert json.loads(framer.feed(b"") + framer.finish()) == []


@pytest.mark.parametrize(
    ("fmt", "comp", "ext", "ctype"),
    [
        (Format.PARQUET, Compression.ZSTD, ".parquet", "application/vnd.apache.parquet"),
        (Format.CSV, Compression.NONE, ".csv", "text/csv; charset=utf-8"),
        (Format.CSV, Compression.GZIP, ".csv.gz", "application/gzip"),
        (Format.JSONL, Compression.ZSTD, ".jsonl.zst", "application/zstd"),
        (Format.JSON, Compression.NONE, ".json", "application/json; charset=utf-8"),
    ],
)
def test_names_and_content_types(fmt: Format, comp: Compression, ext: str, ctype: str) -> None:
    assert extension(fmt, comp) == ext
    assert content_type(fmt, comp) == ctype


def test_json_framing_passes_a_large_row_on_without_copying() -> None:
    row = bytearray(b'{"k": "' + b"x" * 1_000_000 + b'"}\n')
    framer = JsonArrayFramer()
    head, body = framer.feed_parts(memoryview(row))
    assert head == b"[\n"
    assert isinstance(body, memoryview) and body.obj is row  # a view of the row, not a copy
    assert bytes(body) == bytes(row[:-1])
    out = b"".join(framer.feed_parts(b'{"a": 1}\n{"a": 2}\n')) + framer.finish()
    assert json.loads(bytes(head) + bytes(body) + out) == [
        {"k": "x" * 1_000_000},
        {"a": 1},
        {"a": 2},
    ]
