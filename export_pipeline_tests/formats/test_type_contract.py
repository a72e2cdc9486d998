"""The type contract (docs/types.md), proven on torture tables through `harness.export_one`.

Every value is compared with PostgreSQL's own rendering of the same row (see contract_check.py).
Values checked per full run: TORTURE_VALUES_CHECKED in the module below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from export_pipeline.errors import ExportError
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, DatasetSpec, Format, Unrepresentable
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline_tests.formats.contract_check import ContractCheck
from export_pipeline_tests.formats.torture import (
    EXOTIC_COLUMNS,
    EXOTIC_ROWS,
    TORTURE_COLUMNS,
    TORTURE_ROWS,
    create_torture_tables,
)
from export_pipeline_tests.harness import export_one
from export_pipeline_tests.helpers import files_under
from export_pipeline_tests.services import scratch_database

# The server's version matters here (what each PostgreSQL type becomes): CI runs these
# again on a second PostgreSQL (.ci/run).
pytestmark = pytest.mark.server_version

MONTH = Month(2025, 3)  # the datasets below do not filter by month
TORTURE_KINDS = {
    "id": "int", "customer_id": "int", "i2": "int", "i4": "int", "i8": "int",
    "f4": "float4", "f8": "float8", "n12": "decimal", "n38": "decimal", "nfree": "text",
    "n50": "text", "m": "money", "t": "text", "vc": "text", "ch": "text", "ba": "bytea",
    "b": "bool", "d": "date", "tm": "time", "ts": "ts", "tstz": "tstz", "iv": "interval",
    "u": "uuid", "j": "json", "jb": "json", "ai": "int[]", "at": "text[]", "en": "text",
    "dom": "int", "comp": "comp", 'odd, "name"': "text",
}  # fmt: skip
EXOTIC_KINDS = {
    "id": "int", "customer_id": "int", "nnan": "text", "ninf": "text", "dinf": "date",
    "tsinf": "ts", "tstzinf": "tstz", "tsfar": "ts", "tz": "text", "ip": "text",
    "net": "text", "a2": "int[]", "alb": "int[]", "bits": "text", "m": "money",
}  # fmt: skip
# Under `unrepresentable: text` these exotic columns hold PostgreSQL text in Parquet / JSON.
EXOTIC_TEXT_PARQUET = frozenset(set(EXOTIC_KINDS) - {"id", "customer_id"})
EXOTIC_TEXT_JSON = frozenset({"a2", "alb"})
# Text-like columns (text, varchar, char, json, jsonb, enum) get the CSV formula guard.
GUARDED = frozenset({"t", "vc", "ch", "j", "jb", "en", 'odd, "name"'})
VARIANTS = [
    (Format.PARQUET, Compression.ZSTD),
    (Format.PARQUET, Compression.SNAPPY),
    (Format.PARQUET, Compression.NONE),
    (Format.CSV, Compression.NONE),
    (Format.CSV, Compression.GZIP),
    (Format.CSV, Compression.ZSTD),
    (Format.JSONL, Compression.NONE),
    (Format.JSONL, Compression.GZIP),
    (Format.JSONL, Compression.ZSTD),
    (Format.JSON, Compression.NONE),
    (Format.JSON, Compression.GZIP),
    (Format.JSON, Compression.ZSTD),
]
# 12 variants x 6 rows x 31 columns, + 12 x 3 x 15, + the CSV formula-guard run (6 x 31).
TORTURE_VALUES_CHECKED = (
    len(VARIANTS) * (TORTURE_ROWS * TORTURE_COLUMNS + EXOTIC_ROWS * EXOTIC_COLUMNS)
    + TORTURE_ROWS * TORTURE_COLUMNS
)
_counts: dict[str, int] = {}


@pytest.fixture(scope="module")
def torture_dsn(pg_server: str) -> Iterator[str]:
    with scratch_database(pg_server, "torture") as dsn:
        create_torture_tables(dsn)
        yield dsn


def _dataset(table: str, fmt: Format, comp: Compression, **options: object) -> DatasetSpec:
    return DatasetSpec(
        table,
        "customer_id",
        fmt,
        comp,
        sql=f"SELECT * FROM {table}",
        **options,  # type: ignore[arg-type]
    )


def _export(dsn: str, store: LocalObjectStore, dataset: DatasetSpec) -> bytes:
    result = export_one(SourceConfig(dsn), store, dataset, "1", MONTH)
    path = Path(result.stored.uri)
    assert path.name == f"{dataset.name}{_extension(dataset.format, dataset.compression)}"
    return path.read_bytes()


def _extension(fmt: Format, comp: Compression) -> str:
    base = {Format.PARQUET: ".parquet", Format.CSV: ".csv"}.get(fmt, f".{fmt.value}")
    if fmt is Format.PARQUET or comp is Compression.NONE:
        return base
    return base + {Compression.GZIP: ".gz", Compression.ZSTD: ".zst"}[comp]


def _check(check: ContractCheck, data: bytes, fmt: Format, comp: Compression, **kw: object) -> None:
    if fmt is Format.PARQUET:
        check.parquet(data, **kw)  # type: ignore[arg-type]
    elif fmt is Format.CSV:
        check.csv(data, comp)
    else:
        check.json(data, fmt, comp, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "comp"), VARIANTS)
def test_torture_table_is_lossless(
    torture_dsn: str, local_store: LocalObjectStore, fmt: Format, comp: Compression
) -> None:
    check = ContractCheck(torture_dsn, "torture", TORTURE_KINDS)
    data = _export(torture_dsn, local_store, _dataset("torture", fmt, comp))
    _check(check, data, fmt, comp)
    assert check.mismatches == [], "\n".join(check.mismatches)
    assert check.checked == TORTURE_ROWS * TORTURE_COLUMNS
    _counts[f"torture-{fmt}-{comp}"] = check.checked


@pytest.mark.parametrize(("fmt", "comp"), VARIANTS)
def test_exotic_values_with_text_fallback_are_postgres_text(
    torture_dsn: str, local_store: LocalObjectStore, fmt: Format, comp: Compression
) -> None:
    check = ContractCheck(torture_dsn, "exotic", EXOTIC_KINDS, typed_parquet=False)
    dataset = _dataset("exotic", fmt, comp, unrepresentable=Unrepresentable.TEXT)
    data = _export(torture_dsn, local_store, dataset)
    if fmt is Format.PARQUET:
        check.parquet(data, as_text=EXOTIC_TEXT_PARQUET)
    elif fmt is Format.CSV:
        check.csv(data, comp)
    else:
        check.json(data, fmt, comp, as_text=EXOTIC_TEXT_JSON)
    assert check.mismatches == [], "\n".join(check.mismatches)
    assert check.checked == EXOTIC_ROWS * EXOTIC_COLUMNS
    _counts[f"exotic-{fmt}-{comp}"] = check.checked


def test_csv_formula_guard_prefixes_text_cells_only(
    torture_dsn: str, local_store: LocalObjectStore
) -> None:
    check = ContractCheck(torture_dsn, "torture", TORTURE_KINDS)
    dataset = _dataset("torture", Format.CSV, Compression.NONE, csv_formula_guard=True)
    check.csv(_export(torture_dsn, local_store, dataset), Compression.NONE, guarded=GUARDED)
    assert check.mismatches == [], "\n".join(check.mismatches)
    _counts["csv-guard"] = check.checked


def test_zzz_values_checked_total() -> None:
    """Runs last in this module: every value above was compared (the number in the report)."""
    if len(_counts) < 2 * len(VARIANTS) + 1:
        pytest.skip("only part of the module ran")
    assert sum(_counts.values()) == TORTURE_VALUES_CHECKED == 2958, _counts


@pytest.mark.parametrize(
    ("fmt", "column", "pg_type", "value"),
    [
        (Format.PARQUET, "nnan", "numeric(10,2)", "NaN"),
        (Format.PARQUET, "dinf", "date", "infinity"),
        (Format.PARQUET, "tsinf", "timestamp", "infinity"),
        (Format.PARQUET, "tstzinf", "timestamptz", "infinity"),
        (Format.PARQUET, "tsfar", "timestamp", "beyond year 294246"),
        (Format.PARQUET, "tz", "timetz", "no Arrow type"),
        (Format.PARQUET, "ip", "inet", "no Arrow type"),
        (Format.PARQUET, "a2", "int4[]", "{{1,2},{3,4}}"),
        (Format.PARQUET, "alb", "int4[]", "[0:1]={1,2}"),
        (Format.JSONL, "alb", "int4[]", "[0:1]={1,2}"),
        (Format.JSON, "alb", "int4[]", "[0:1]={1,2}"),
    ],
)
def test_unrepresentable_value_fails_clearly_and_stores_nothing(
    torture_dsn: str,
    local_store: LocalObjectStore,
    fmt: Format,
    column: str,
    pg_type: str,
    value: str,
) -> None:
    dataset = DatasetSpec(
        "exotic_strict",
        "customer_id",
        fmt,
        Compression.NONE,
        sql=f"SELECT id, customer_id, {column} FROM exotic ORDER BY id",
    )
    with pytest.raises(ExportError) as info:
        export_one(SourceConfig(torture_dsn), local_store, dataset, "1", MONTH)
    message = str(info.value)
    for part in ("'exotic_strict'", f"'{column}'", pg_type, value, "unrepresentable: text"):
        assert part in message, message
    assert not local_store.root.exists() or files_under(local_store.root) == []


def test_default_dataset_keeps_the_strict_contract() -> None:
    dataset = _dataset("torture", Format.PARQUET, Compression.ZSTD)
    assert dataset.unrepresentable is Unrepresentable.FAIL
    assert not dataclasses.replace(dataset, format=Format.CSV).csv_formula_guard
