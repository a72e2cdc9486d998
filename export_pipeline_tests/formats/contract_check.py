"""Value-by-value comparison of an export with PostgreSQL's own rendering of the same rows.

Expected values come from PostgreSQL only: each value's text output (its type's output
function), plus, for Parquet's typed columns, exact integers computed by the server (days and
microseconds since 1970, interval fields). Files are read with pyarrow and Python's csv and json
modules; nothing from export_pipeline is used to read them back.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql
from psycopg.types.string import TextLoader

from export_pipeline.spec import Compression, Format
from export_pipeline_tests.roundtrip import decompress

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def pg_text(dsn: str, query: str) -> tuple[list[str], list[list[str | None]]]:
    """Column names and every value as PostgreSQL's text output (None for NULL), by id."""
    with psycopg.connect(dsn, options="-c TimeZone=UTC -c DateStyle=ISO,YMD") as conn:
        cur = conn.cursor()
        probe = sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(query))  # type: ignore[arg-type]
        cur.execute(probe)
        names = [c.name for c in cur.description or []]
        for column in cur.description or []:
            cur.adapters.register_loader(column.type_code, TextLoader)
        cur.execute(sql.SQL("SELECT * FROM ({}) AS q ORDER BY id").format(sql.SQL(query)))  # type: ignore[arg-type]
        return names, [list(row) for row in cur.fetchall()]


def pg_facts(dsn: str, table: str, exprs: dict[str, str]) -> dict[str, list[Any]]:
    """Server-computed facts per column (e.g. days since 1970), by id."""
    if not exprs:
        return {}
    select = sql.SQL(", ").join(sql.SQL(e) for e in exprs.values())  # type: ignore[arg-type]
    query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(select, sql.Identifier(table))
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as conn:
        rows = conn.execute(query).fetchall()
    return {name: [r[i] for r in rows] for i, name in enumerate(exprs)}


def parquet_facts(kinds: dict[str, str]) -> dict[str, str]:
    """The server-side expressions that give Parquet's exact typed value per kind."""
    facts: dict[str, str] = {}
    for col, kind in kinds.items():
        ident = f'"{col}"'
        if kind == "date":
            facts[col] = f"{ident} - date '1970-01-01'"
        elif kind in ("ts", "tstz"):
            facts[col] = f"(extract(epoch FROM {ident}) * 1000000)::bigint"
        elif kind == "interval":
            facts[col] = (
                f"CASE WHEN {ident} IS NOT NULL THEN json_build_object("
                f"'months', extract(year FROM {ident})::int * 12 + extract(month FROM {ident}),"
                f"'days', extract(day FROM {ident}),"
                f"'microseconds', extract(hour FROM {ident})::bigint * 3600000000"
                f" + extract(minute FROM {ident})::bigint * 60000000"
                f" + extract(microseconds FROM {ident})::bigint) END"
            )
        elif kind == "bytea":
            facts[col] = f"encode({ident}, 'hex')"
        elif kind in ("int[]", "text[]"):
            facts[col] = f"to_jsonb({ident})"
        elif kind == "comp":
            facts[col] = (
                f"CASE WHEN {ident}::text IS NOT NULL THEN jsonb_build_object("
                f"'a', ({ident}).a, 'b', ({ident}).b) END"
            )
        elif kind == "money":
            facts[col] = f"{ident}::numeric::text"
    return facts


def _float4(text: str) -> float:
    return float(struct.unpack("f", struct.pack("f", float(text)))[0])


def _same_float(got: Any, want: float) -> bool:
    if math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    return got == want and math.copysign(1, got) == math.copysign(1, want)


def _parquet_value(kind: str, got: Any, text: str, fact: Any) -> bool:
    checks: dict[str, Callable[[], bool]] = {
        "int": lambda: got == int(text),
        "float4": lambda: _same_float(got, _float4(text)),
        "float8": lambda: _same_float(got, float(text)),
        "decimal": lambda: isinstance(got, Decimal) and format(got, "f") == text,
        "money": lambda: got == fact,
        "bytea": lambda: got == bytes.fromhex(fact),
        "bool": lambda: got is (text == "t"),
        "date": lambda: got == fact,
        "ts": lambda: got == fact,
        "tstz": lambda: got == fact,
        "interval": lambda: got == fact,
        "uuid": lambda: str(got) == text,
        "time": lambda: got == datetime.time.fromisoformat(text),
        "int[]": lambda: got == fact,
        "text[]": lambda: got == fact,
        "comp": lambda: json.loads(got) == fact,
    }
    check = checks.get(kind)
    return check() if check else got == text  # text-like, unconstrained numeric, json


def _json_value(kind: str, got: Any, text: str) -> bool:
    if kind == "bool":
        return got is (text == "t")
    if kind == "ts":
        return got == text.replace(" ", "T", 1)
    if kind == "tstz":
        return got == text.replace(" ", "T", 1).replace("+00", "+00:00", 1)
    if kind == "json":
        return got == json.loads(text, parse_float=str, parse_int=str)
    if kind in ("int[]", "text[]", "comp"):
        return True  # compared against the server's JSON in check_json via `facts`
    return got == text  # numbers compare by their digits (parse_int/parse_float=str)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"bare {name} is not JSON")


def read_json_rows(data: bytes, fmt: Format, compression: Compression) -> list[dict[str, Any]]:
    """Rows of a JSON Lines / JSON file; numbers kept as their digits; NaN/Infinity rejected."""
    text = decompress(data, compression).decode("utf-8")
    kw: dict[str, Any] = {
        "parse_float": str,
        "parse_int": str,
        "parse_constant": _reject_constant,
    }
    if fmt is Format.JSONL:
        # Only LF separates records: str.splitlines would also split on U+0085 and U+2028,
        # which JSON strings may hold raw.
        return [json.loads(line, **kw) for line in text.split("\n") if line]
    return list(json.loads(text, **kw))


class ContractCheck:
    """Compares files with the source; `checked` counts the values compared."""

    def __init__(
        self, dsn: str, table: str, kinds: dict[str, str], typed_parquet: bool = True
    ) -> None:
        """`typed_parquet=False`: skip the Parquet facts (every Parquet column is text)."""
        self.kinds = kinds
        self.names, self.text = pg_text(dsn, f'SELECT * FROM "{table}"')
        self.facts = pg_facts(dsn, table, parquet_facts(kinds) if typed_parquet else {})
        self.json_facts = pg_facts(
            dsn,
            table,
            {c: f'to_json("{c}")' for c, k in kinds.items() if k in ("int[]", "text[]", "comp")},
        )
        self.checked = 0
        self.mismatches: list[str] = []

    def _note(self, ok: bool, fmt: str, row: int, col: str, got: Any, want: Any) -> None:
        self.checked += 1
        if not ok:
            self.mismatches.append(f"{fmt} row {row} {col}: got {got!r}, want {want!r}")

    def parquet(self, data: bytes, as_text: frozenset[str] = frozenset()) -> None:
        table = pq.read_table(io.BytesIO(data))
        assert table.column_names == self.names
        for col in self.names:
            kind = "text" if col in as_text else self.kinds[col]
            column = table.column(col).combine_chunks()
            if kind == "date":
                values = column.view(pa.int32()).to_pylist()
            elif kind in ("ts", "tstz"):
                values = column.view(pa.int64()).to_pylist()
            else:
                values = column.to_pylist()
            facts = self.facts.get(col) if col not in as_text else None
            position = self.names.index(col)
            for i, got in enumerate(values):
                want, fact = self.text[i][position], facts[i] if facts else None
                ok = got is None if want is None else _parquet_value(kind, got, want, fact)
                self._note(ok, "parquet", i, col, got, fact if fact is not None else want)

    def csv(
        self, data: bytes, compression: Compression, guarded: frozenset[str] = frozenset()
    ) -> None:
        """`guarded`: columns the CSV formula guard applies to."""
        text = decompress(data, compression).decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert rows[0] == self.names
        assert len(rows) - 1 == len(self.text)
        for i, (got_row, want_row) in enumerate(zip(rows[1:], self.text, strict=True)):
            for col, got, want in zip(self.names, got_row, want_row, strict=True):
                expected = "" if want is None else want
                if col in guarded and expected.startswith(FORMULA_START):
                    expected = "'" + expected
                self._note(got == expected, "csv", i, col, got, expected)

    def json(
        self,
        data: bytes,
        fmt: Format,
        compression: Compression,
        as_text: frozenset[str] = frozenset(),
    ) -> None:
        rows = read_json_rows(data, fmt, compression)
        assert len(rows) == len(self.text)
        for i, (obj, want_row) in enumerate(zip(rows, self.text, strict=True)):
            assert list(obj) == self.names
            for col, want in zip(self.names, want_row, strict=True):
                got, kind = obj[col], ("text" if col in as_text else self.kinds[col])
                if want is None:
                    ok = got is None
                elif kind in ("int[]", "text[]", "comp"):
                    server = json.loads(json.dumps(self.json_facts[col][i]))
                    ok = _normalise_numbers(got) == _normalise_numbers(server)
                else:
                    ok = _json_value(kind, got, want)
                self._note(ok, fmt.value, i, col, got, want)


def _normalise_numbers(value: Any) -> Any:
    """Digits-as-text (from parse_int=str) and ints (from psycopg) compare as text."""
    if isinstance(value, list):
        return [_normalise_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise_numbers(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return str(value)
    return value
