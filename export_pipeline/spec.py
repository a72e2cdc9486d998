"""The export spec: a YAML file naming where customers come from and which datasets to export.

`load_spec(path)` returns a frozen, validated `ExportSpec` or raises one `SpecError` naming the
file, the key and the reason. Nothing here touches the database or Dagster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from export_pipeline.errors import ExportError
from export_pipeline.storage.keys import RESERVED_DATASET_NAMES


class SpecError(ExportError, ValueError):
    """The export spec is invalid; the message names the file, the key and the reason."""


class Format(StrEnum):
    PARQUET = "parquet"
    CSV = "csv"
    JSONL = "jsonl"
    JSON = "json"


class Unrepresentable(StrEnum):
    """What to do with a value the format cannot hold exactly (see docs/types.md)."""

    FAIL = "fail"  # stop the export with one error naming dataset, column, type and value
    TEXT = "text"  # export the at-risk columns as PostgreSQL's own text output


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    SNAPPY = "snappy"


ALLOWED_COMPRESSION: dict[Format, tuple[Compression, ...]] = {
    Format.PARQUET: (Compression.ZSTD, Compression.SNAPPY, Compression.GZIP, Compression.NONE),
    Format.CSV: (Compression.GZIP, Compression.ZSTD, Compression.NONE),
    Format.JSONL: (Compression.GZIP, Compression.ZSTD, Compression.NONE),
    Format.JSON: (Compression.GZIP, Compression.ZSTD, Compression.NONE),
}
DEFAULT_COMPRESSION: dict[Format, Compression] = {
    Format.PARQUET: Compression.ZSTD,
    Format.CSV: Compression.NONE,
    Format.JSONL: Compression.NONE,
    Format.JSON: Compression.NONE,
}

# Placeholders a dataset's `sql:` may use; psycopg binds them (see extract/query.py).
SQL_PLACEHOLDERS = frozenset({"customer", "month_start", "month_end"})
_PLACEHOLDER_RE = re.compile(r"%(?:\((?P<name>[^)]*)\))?(?P<conv>[sbt%])?")
_DATASET_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_MONTH_RE = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class Relation:
    """A schema-qualified table name, kept as parts so it can be quoted with psycopg.sql."""

    parts: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class CustomersSpec:
    key_column: str
    table: Relation | None = None
    sql: str | None = None
    # New customers get every month since months.start exported (customers_sensor).
    export_history: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    customer_column: str
    format: Format
    compression: Compression
    table: Relation | None = None
    time_column: str | None = None
    sql: str | None = None
    unrepresentable: Unrepresentable = Unrepresentable.FAIL
    # CSV only: prefix text cells starting with = + - @ tab CR with a single quote.
    csv_formula_guard: bool = False
    # Parquet only: a row group closes at this many rows, or this much Arrow data, whichever
    # comes first (None: formats/parquet.py's defaults, 131,072 rows and 64 MiB).
    row_group_rows: int | None = None
    row_group_bytes: int | None = None


@dataclass(frozen=True)
class ExportSpec:
    customers: CustomersSpec
    months_start: date
    datasets: Mapping[str, DatasetSpec]
    source: str = "<memory>"


def load_spec(path: str | Path) -> ExportSpec:
    """Read and validate the spec at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: export spec not found (set EXPORT_SPEC to its path)") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read export spec: {exc.strerror}") from None
    return parse_spec(text, source=str(path))


def parse_spec(text: str, source: str = "<memory>") -> ExportSpec:
    """Validate spec YAML given as text; `source` names it in errors."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpecError(f"{source}: not valid YAML{where}") from None
    v = _Validator(source)
    root = v.mapping(raw, "", required={"customers", "months", "datasets"}, optional=set())
    customers = _customers(v, root["customers"])
    months = v.mapping(root["months"], "months", required={"start"}, optional=set())
    months_start = _month(v, months["start"], "months.start")
    datasets_raw = v.mapping_any(root["datasets"], "datasets")
    if not datasets_raw:
        v.fail("datasets", "at least one dataset is required")
    datasets = {name: _dataset(v, name, body) for name, body in datasets_raw.items()}
    return ExportSpec(customers, months_start, datasets, source)


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, reason: str) -> None:
        raise SpecError(f"{self.source}: {key or '<root>'}: {reason}")

    def mapping_any(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {_kind(value)}")
        for k in value:
            if not isinstance(k, str):
                self.fail(key, f"keys must be strings, got {k!r}")
        return value

    def mapping(
        self, value: Any, key: str, *, required: set[str], optional: set[str]
    ) -> dict[str, Any]:
        m = self.mapping_any(value, key)
        prefix = f"{key}." if key else ""
        for k in sorted(set(m) - required - optional):
            allowed = ", ".join(sorted(required | optional))
            self.fail(f"{prefix}{k}", f"unknown key (allowed: {allowed})")
        for k in sorted(required - set(m)):
            self.fail(f"{prefix}{k}", "is required")
        return m

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a non-empty string, got {_kind(value)}")
        return value.strip()

    def relation(self, value: Any, key: str) -> Relation:
        text = self.string(value, key)
        parts = tuple(p.strip() for p in text.split("."))
        if len(parts) > 2 or any(not p for p in parts):
            self.fail(key, f"must be 'table' or 'schema.table', got {text!r}")
        return Relation(parts)

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        text = self.string(value, key).lower()
        if text not in options:
            self.fail(key, f"{value!r} is not one of {', '.join(options)}")
        return text

    def one_of(self, m: dict[str, Any], key: str, a: str, b: str) -> None:
        if (a in m) == (b in m):
            self.fail(key, f"exactly one of `{a}:` or `{b}:` is required")


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _month(v: _Validator, value: Any, key: str) -> date:
    text = value if isinstance(value, str) else str(value)
    m = _MONTH_RE.fullmatch(text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        v.fail(key, f'must be a month as "YYYY-MM", got {value!r}')
    assert m is not None
    return date(int(m.group(1)), int(m.group(2)), 1)


def _check_sql(v: _Validator, text: str, key: str, allowed: frozenset[str]) -> str:
    for m in _PLACEHOLDER_RE.finditer(text):
        name, conv = m.group("name"), m.group("conv")
        if conv == "%" and name is None:
            continue
        if name is None:
            v.fail(
                key,
                "positional placeholders are not supported; use %(customer)s, "
                "%(month_start)s or %(month_end)s (write a literal % as %%)",
            )
        if name not in allowed or conv != "s":
            v.fail(
                key,
                f"unknown placeholder %({name}){conv or ''}; allowed: "
                + ", ".join(f"%({p})s" for p in sorted(allowed)),
            )
    # The query is wrapped as a subquery, so a trailing semicolon would be a syntax error.
    return text.strip().rstrip(";").strip()


def _customers(v: _Validator, raw: Any) -> CustomersSpec:
    m = v.mapping(
        raw, "customers", required={"key_column"}, optional={"table", "sql", "export_history"}
    )
    v.one_of(m, "customers", "table", "sql")
    key_column = v.string(m["key_column"], "customers.key_column")
    history = m.get("export_history", False)
    if not isinstance(history, bool):
        v.fail("customers.export_history", f"must be true or false, got {history!r}")
    if "table" in m:
        relation = v.relation(m["table"], "customers.table")
        return CustomersSpec(key_column, table=relation, export_history=history)
    sql_text = _check_sql(v, v.string(m["sql"], "customers.sql"), "customers.sql", frozenset())
    return CustomersSpec(key_column, sql=sql_text, export_history=history)


def _row_group_setting(v: _Validator, value: Any, key: str, fmt: Format) -> int:
    if fmt is not Format.PARQUET:
        v.fail(key, "only applies to `format: parquet`")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        v.fail(key, f"must be a positive whole number, got {value!r}")
    return int(value)


def _dataset(v: _Validator, name: str, raw: Any) -> DatasetSpec:
    key = f"datasets.{name}"
    if not _DATASET_NAME_RE.fullmatch(name):
        v.fail(
            key,
            "dataset names must be lower-case letters, digits and _, starting with a "
            "letter (they become asset keys and file names)",
        )
    if name in RESERVED_DATASET_NAMES:
        v.fail(
            key,
            f"the name {name!r} is reserved: each customer-month's {name}.json delivery "
            "manifest sits next to the dataset files (docs/manifest.md)",
        )
    m = v.mapping(
        raw,
        key,
        required={"customer_column", "format"},
        optional={
            "table",
            "sql",
            "time_column",
            "compression",
            "unrepresentable",
            "csv_formula_guard",
            "row_group_rows",
            "row_group_bytes",
        },
    )
    v.one_of(m, key, "table", "sql")
    fmt = Format(v.choice(m["format"], f"{key}.format", tuple(Format)))
    allowed = ALLOWED_COMPRESSION[fmt]
    if "compression" in m:
        comp = Compression(v.choice(m["compression"], f"{key}.compression", tuple(allowed)))
    else:
        comp = DEFAULT_COMPRESSION[fmt]
    customer_column = v.string(m["customer_column"], f"{key}.customer_column")
    unrepresentable = Unrepresentable(
        v.choice(m.get("unrepresentable", "fail"), f"{key}.unrepresentable", tuple(Unrepresentable))
    )
    guard = m.get("csv_formula_guard", False)
    if not isinstance(guard, bool):
        v.fail(f"{key}.csv_formula_guard", f"must be true or false, got {_kind(guard)}")
    if guard and fmt is not Format.CSV:
        v.fail(f"{key}.csv_formula_guard", "only applies to `format: csv`")
    rows, size = (
        _row_group_setting(v, m[name], f"{key}.{name}", fmt) if name in m else None
        for name in ("row_group_rows", "row_group_bytes")
    )
    if "table" in m:
        if "time_column" not in m:
            v.fail(f"{key}.time_column", "is required with `table:`")
        return DatasetSpec(
            name,
            customer_column,
            fmt,
            comp,
            table=v.relation(m["table"], f"{key}.table"),
            time_column=v.string(m["time_column"], f"{key}.time_column"),
            unrepresentable=unrepresentable,
            csv_formula_guard=guard,
            row_group_rows=rows,
            row_group_bytes=size,
        )
    if "time_column" in m:
        v.fail(
            f"{key}.time_column",
            "only applies to `table:`; filter the month in `sql:` "
            "with %(month_start)s and %(month_end)s",
        )
    sql_text = _check_sql(v, v.string(m["sql"], f"{key}.sql"), f"{key}.sql", SQL_PLACEHOLDERS)
    return DatasetSpec(
        name,
        customer_column,
        fmt,
        comp,
        sql=sql_text,
        unrepresentable=unrepresentable,
        csv_formula_guard=guard,
        row_group_rows=rows,
        row_group_bytes=size,
    )
