"""The server-side half of the type contract (docs/types.md): rewrite the SELECT list per column.

Some losses cannot be seen once rows reach Arrow or COPY, so they are handled in the query:
- Parquet: the ADBC driver flattens multi-dimensional arrays and drops a lower bound of 0
  without a word, so every array value is checked server-side; `money` is cast to `numeric`
  (exact, whatever the server's `lc_monetary`), since the driver hands over bare minor units;
  composites become JSON (`to_json`), since the driver loses which composite values are NULL.
- JSON Lines / JSON: `row_to_json` drops array lower bounds (`[0:1]={1,2}` becomes `[1,2]`),
  so arrays are checked for bounds other than 1.
- `unrepresentable: text`: every column whose type can hold a value the format cannot is
  exported as PostgreSQL's own text output (its output function), for every row, so the schema
  never depends on the data.
- CSV `csv_formula_guard`: text-like cells starting with = + - @ tab or CR get a leading `'`.
A failed check raises a server-side cast error whose text names dataset, column, type and value,
so the export stops before the object is published. Nothing here runs per row in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from export_pipeline.extract.query import Column
from export_pipeline.spec import DatasetSpec, Format, Unrepresentable

# Types the ADBC driver decodes to a lossless Arrow type (numeric as exact text, see
# formats/parquet.py). Anything else arrives as `arrow.opaque` binary.
ARROW_NATIVE = frozenset(
    {
        "int2", "int4", "int8", "float4", "float8", "numeric", "text", "varchar", "bpchar",
        "bytea", "bool", "date", "time", "timestamp", "timestamptz", "interval", "uuid",
        "json", "jsonb",
    }
)  # fmt: skip
# Types that can hold values Parquet cannot: NaN/±Infinity, ±infinity and far-future years.
_PARQUET_AT_RISK = frozenset({"numeric", "date", "timestamp", "timestamptz", "money"})
_VALUE_PREVIEW_CHARS = 200
_FORMULA_START = r"^[=+\-@\t\r]"


@dataclass(frozen=True)
class ContractOptions:
    """A dataset's opt-ins to the documented fallbacks; the default is the strict contract."""

    unrepresentable: Unrepresentable = Unrepresentable.FAIL
    csv_formula_guard: bool = False

    @classmethod
    def of(cls, dataset: DatasetSpec) -> ContractOptions:
        return cls(dataset.unrepresentable, dataset.csv_formula_guard)


@dataclass(frozen=True)
class ColumnType:
    """A column's type after resolving domains: what decides how it is exported."""

    name: str  # pg_type.typname of the base type (`_int4` for int[])
    kind: str  # pg_type.typtype: b base, e enum, c composite, r range, ...
    category: str  # pg_type.typcategory: A array, S string, N numeric, ...
    element: str | None  # element base typname for arrays

    @property
    def is_array(self) -> bool:
        return self.category == "A"

    @property
    def arrow_native(self) -> bool:
        return self.name in ARROW_NATIVE or self.kind == "e"

    @property
    def text_like(self) -> bool:
        return self.category == "S" or self.kind == "e" or self.name in ("json", "jsonb")


_TYPES_QUERY = """
WITH RECURSIVE base (oid, cur, depth) AS (
    SELECT o, o, 0 FROM unnest(%s::oid[]) AS o
    UNION ALL
    SELECT base.oid, t.typbasetype, base.depth + 1
    FROM base JOIN pg_catalog.pg_type AS t ON t.oid = base.cur
    WHERE t.typtype = 'd'
)
SELECT DISTINCT ON (base.oid)
    base.oid, t.typname, t.typtype, t.typcategory,
    CASE WHEN e.typtype = 'd' THEN eb.typname ELSE e.typname END
FROM base
JOIN pg_catalog.pg_type AS t ON t.oid = base.cur
LEFT JOIN pg_catalog.pg_type AS e ON e.oid = t.typelem AND t.typcategory = 'A'
LEFT JOIN pg_catalog.pg_type AS eb ON eb.oid = e.typbasetype
ORDER BY base.oid, base.depth DESC
"""


def column_types(conn: psycopg.Connection, columns: list[Column]) -> dict[int, ColumnType]:
    """Base type facts for each column's type OID (domains resolved to their base type)."""
    oids = sorted({c.type_oid for c in columns})
    with conn.cursor() as cur:
        cur.execute(_TYPES_QUERY, (oids,))
        return {
            int(oid): ColumnType(str(name), str(kind), str(cat), elem)
            for oid, name, kind, cat, elem in cur.fetchall()
        }


@dataclass(frozen=True)
class ContractedQuery:
    """The query to run, and the numeric columns it sends as text (name -> `numeric(p,s)`)."""

    text: str
    numeric_as_text: dict[str, str]


@dataclass(frozen=True)
class ContractPlan:
    """The contract's rewrite of a query shape: a SELECT list over the query (None: nothing to
    rewrite). It depends on the columns' types only, not on the partition, so a session plans
    it once per dataset and applies it to every partition's query (`apply`)."""

    select_list: str | None
    numeric_as_text: dict[str, str]

    def apply(self, query_text: str) -> ContractedQuery:
        if self.select_list is None:
            return ContractedQuery(query_text, {})
        rewritten = sql.SQL("SELECT {} FROM ({}) AS _export_contract").format(
            sql.SQL(self.select_list), sql.SQL(query_text)
        )
        return ContractedQuery(rewritten.as_string(None), self.numeric_as_text)


def plan_contract(
    conn: psycopg.Connection,
    columns: list[Column],
    fmt: Format,
    name: str,
    options: ContractOptions | None = None,
) -> ContractPlan:
    """The contract's per-column rewrites for `fmt` of a query returning `columns` (what
    `describe` said); `name` names the dataset in errors. One catalog query (the types)."""
    options = options or ContractOptions()
    types = column_types(conn, columns)
    exprs: list[sql.Composable] = []
    numeric_as_text: dict[str, str] = {}
    changed = False
    for column in columns:
        ref = sql.SQL("_export_contract.{}").format(sql.Identifier(column.name))
        ctype = types[column.type_oid]
        if _numeric_as_text(column, ctype, fmt, options):
            expr: sql.Composable = sql.SQL("{}::text").format(ref)
            numeric_as_text[column.name] = column.pg_type
        else:
            expr = column_expression(ref, column, ctype, fmt, name, options)
        changed = changed or expr is not ref
        exprs.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(column.name)))
    if not changed:
        return ContractPlan(None, {})
    return ContractPlan(sql.SQL(", ").join(exprs).as_string(conn), numeric_as_text)


def contract_query(
    conn: psycopg.Connection,
    query_text: str,
    columns: list[Column],
    fmt: Format,
    name: str,
    options: ContractOptions | None = None,
) -> ContractedQuery:
    """`query_text` with the contract's per-column rewrites for `fmt`; unchanged if none apply.

    `columns` is what `describe` returned for `query_text`; `name` names the dataset in errors.
    """
    return plan_contract(conn, columns, fmt, name, options).apply(query_text)


def _numeric_as_text(
    column: Column, ctype: ColumnType, fmt: Format, options: ContractOptions
) -> bool:
    """Parquet numerics travel as text: the driver's binary-numeric-to-text conversion cost a
    third of the client CPU of a 10M-row export (bench/RESULTS.md); PostgreSQL's numeric_out
    is cheaper and just as exact. formats/parquet.py turns the text into decimal128."""
    return (
        fmt is Format.PARQUET
        and options.unrepresentable is Unrepresentable.FAIL
        and ctype.name == "numeric"
        and column.pg_type.startswith("numeric")
    )


def column_expression(
    ref: sql.Composable,
    column: Column,
    ctype: ColumnType,
    fmt: Format,
    name: str,
    options: ContractOptions,
) -> sql.Composable:
    """The SELECT-list expression exporting one column under the contract (`ref` if as is)."""
    as_text = options.unrepresentable is Unrepresentable.TEXT
    # The type's own output function; a `::text` cast is not always that (char(n) drops its
    # padding, inet shows its netmask). num_nulls: `ROW(NULL) IS NULL` is true, this is not.
    text = sql.SQL("CASE WHEN num_nulls({r}) = 0 THEN format('%s', {r}) END").format(r=ref)
    if fmt is Format.PARQUET:
        if ctype.kind == "c":  # the driver loses NULL composites; JSON keeps names and NULLs
            return sql.SQL("to_json({})").format(ref)
        if ctype.is_array:
            return text if as_text else _checked(ref, _ARRAY_IS_NOT_A_LIST, column, name)
        if as_text and (ctype.name in _PARQUET_AT_RISK or not ctype.arrow_native):
            return text
        if ctype.name == "money":
            return sql.SQL("{}::numeric").format(ref)
        return ref
    if fmt in (Format.JSON, Format.JSONL):
        if ctype.is_array:
            return text if as_text else _checked(ref, _ARRAY_HAS_BOUNDS, column, name)
        return ref
    if options.csv_formula_guard and ctype.text_like:
        return sql.SQL("CASE WHEN {t} ~ {p} THEN {q} || {t} ELSE {t} END").format(
            t=text, p=sql.Literal(_FORMULA_START), q=sql.Literal("'")
        )
    return ref


@dataclass(frozen=True)
class _Check:
    condition: str  # SQL with one `{0}` for the column reference
    reason: str


_ARRAY_IS_NOT_A_LIST = _Check(
    "array_ndims({0}) > 1 OR array_lower({0}, 1) <> 1",
    "Parquet lists cannot hold a multi-dimensional array or a lower bound other than 1",
)
_ARRAY_HAS_BOUNDS = _Check(
    # The cheap test first: the regex runs only for the rare multi-dimensional array.
    "array_lower({0}, 1) <> 1"
    " OR (array_ndims({0}) > 1 AND array_dims({0}) !~ '^(\\[1:[0-9]+\\])+$')",
    "JSON arrays cannot hold a lower bound other than 1",
)


def _checked(ref: sql.Composable, check: _Check, column: Column, name: str) -> sql.Composable:
    """`ref`, or a server-side error naming dataset, column, type and value if `check` fails.

    PostgreSQL SQL has no RAISE, so the error is a failed cast of the message to integer; the
    message is the only text in it. CASE guarantees the cast is evaluated only on failure.
    """
    where = f"dataset {name!r}, column {column.name!r} ({column.pg_type})"
    message = (
        f"unrepresentable value: {where.replace('%', '%%')}: value %s: {check.reason}; set "
        "`unrepresentable: text` on the dataset to export the column as PostgreSQL text"
    )
    condition = sql.SQL(check.condition).format(ref)
    failure = sql.SQL("format({}, left({}::text, {}))::int").format(
        sql.Literal(message), ref, sql.Literal(_VALUE_PREVIEW_CHARS)
    )
    return sql.SQL("CASE WHEN {c} THEN CASE WHEN {f} = 0 THEN {r} END ELSE {r} END").format(
        c=condition, f=failure, r=ref
    )
