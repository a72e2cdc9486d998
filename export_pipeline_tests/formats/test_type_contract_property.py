"""Property: generated rows of mixed types survive every format, value by value."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json

from export_pipeline.extract.connection import SourceConfig
from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, DatasetSpec, Format
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline_tests.formats.contract_check import ContractCheck
from export_pipeline_tests.harness import export_one
from export_pipeline_tests.services import scratch_database

# The server's version matters here (what each PostgreSQL type becomes): CI runs these
# again on a second PostgreSQL (.ci/run).
pytestmark = pytest.mark.server_version

KINDS = {
    "id": "int", "customer_id": "int", "i": "int", "f": "float8", "n": "text", "t": "text",
    "ts": "ts", "j": "json",
}  # fmt: skip
FORMATS = [
    (Format.PARQUET, Compression.ZSTD),
    (Format.CSV, Compression.GZIP),
    (Format.JSONL, Compression.NONE),
    (Format.JSON, Compression.ZSTD),
]
_text = st.text(st.characters(exclude_characters="\x00", codec="utf-8"), max_size=30)
_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_row = st.tuples(
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.floats(allow_nan=True, allow_infinity=True),
    st.none() | st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.none() | st.sampled_from(["=cmd", '"', ",", "\r\n", "\\", "漢字😀"]) | _text,
    st.none() | st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.none() | _json,
)


@pytest.fixture(scope="module")
def property_dsn(pg_server: str) -> Iterator[str]:
    with scratch_database(pg_server, "property") as dsn:
        yield dsn


def _load(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS mixed")
        conn.execute(
            "CREATE TABLE mixed (id int, customer_id int, i bigint, f double precision,"
            " n numeric, t text, ts timestamp, j jsonb)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO mixed VALUES (%s, 1, %s, %s, %s, %s, %s, %s)",
                [
                    (k, i, f, n, t, ts, None if j is None else Json(j))
                    for k, (i, f, n, t, ts, j) in enumerate(rows)
                ],
            )


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(_row, min_size=0, max_size=6))
def test_generated_rows_round_trip_in_every_format(
    property_dsn: str, rows: list[tuple[Any, ...]]
) -> None:
    rows = [(*r[:2], _finite(r[2]), *r[3:]) for r in rows]
    _load(property_dsn, rows)
    check = ContractCheck(property_dsn, "mixed", KINDS)
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalObjectStore(Path(tmp))
        for fmt, comp in FORMATS:
            dataset = DatasetSpec("mixed", "customer_id", fmt, comp, sql="SELECT * FROM mixed")
            result = export_one(SourceConfig(property_dsn), store, dataset, "1", Month(2025, 1))
            data = Path(result.stored.uri).read_bytes()
            if fmt is Format.PARQUET:
                check.parquet(data)
            elif fmt is Format.CSV:
                check.csv(data, comp)
            else:
                check.json(data, fmt, comp)
    assert check.mismatches == [], "\n".join(check.mismatches)
    assert check.checked == len(FORMATS) * len(rows) * len(KINDS)


def _finite(value: Decimal | None) -> Decimal | None:
    """Keep generated numerics inside PostgreSQL's numeric range (exponent within ±16383)."""
    if value is None or abs(value.adjusted()) < 1000:
        return value
    return None
