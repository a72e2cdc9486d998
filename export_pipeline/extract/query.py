"""The query behind one customer-month of a dataset, and what its columns are.

Identifiers from the spec are quoted with `psycopg.sql.Identifier`; the customer and month
are bound as parameters. COPY cannot take server-side parameters, and the ADBC driver streams
only parameterless queries through COPY, so both paths bind client-side with psycopg's own
literal quoting (`ClientCursor.mogrify`): the same escaping psycopg uses for `cursor.copy()`.
Month bounds are bound as untyped literals ('2024-03-01'), so PostgreSQL reads them in the time
column's own type: a date stays a date, a timestamptz is midnight UTC (sessions run in UTC).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import psycopg
from psycopg import ClientCursor, sql

from export_pipeline.errors import ExportError, driver_message
from export_pipeline.partitions import Month
from export_pipeline.spec import CustomersSpec, DatasetSpec, Relation


class QueryError(ExportError, ValueError):
    """The dataset's query cannot be exported as it stands (bad columns, SQL errors)."""


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    type_oid: int


def _relation(rel: Relation) -> sql.Identifier:
    return sql.Identifier(*rel.parts)


def dataset_query(dataset: DatasetSpec, customer: str, month: Month) -> tuple[sql.Composed, dict]:
    """The SELECT for one partition and its parameters."""
    params = {
        "customer": customer,
        "month_start": month.start.isoformat(),
        "month_end": month.end.isoformat(),
    }
    if dataset.table is not None:
        assert dataset.time_column is not None
        query = sql.SQL(
            "SELECT * FROM {table} WHERE {customer} = %(customer)s"
            " AND {time} >= %(month_start)s AND {time} < %(month_end)s"
        ).format(
            table=_relation(dataset.table),
            customer=sql.Identifier(dataset.customer_column),
            time=sql.Identifier(dataset.time_column),
        )
        return query, params
    assert dataset.sql is not None
    # The outer filter on customer_column guarantees isolation even if the spec's SQL forgets
    # to filter by %(customer)s. sql.SQL(...) is concatenated, never .format()ed, so braces in
    # the user's SQL (array literals, JSON) stay as written.
    query = (
        sql.SQL("SELECT * FROM (")
        + sql.SQL(dataset.sql)
        + sql.SQL(") AS _export_source WHERE _export_source.{} = %(customer)s").format(
            sql.Identifier(dataset.customer_column)
        )
    )
    return query, params


def customers_query(customers: CustomersSpec) -> sql.Composed:
    """Distinct, non-null customer keys as text, sorted."""
    key = sql.Identifier(customers.key_column)
    if customers.table is not None:
        source: sql.Composable = _relation(customers.table)
    else:
        assert customers.sql is not None
        source = sql.SQL("(") + sql.SQL(customers.sql) + sql.SQL(") AS _customers")
    return sql.SQL(
        "SELECT k::text FROM (SELECT DISTINCT {key} AS k FROM {source} WHERE {key} IS NOT NULL)"
        " AS _keys ORDER BY k"
    ).format(key=key, source=source)


def render(conn: psycopg.Connection, query: sql.Composed, params: dict) -> str:
    """The query as text with parameters bound client-side by psycopg."""
    return ClientCursor(conn).mogrify(query, params)


def describe(conn: psycopg.Connection, query_text: str, dataset: str) -> list[Column]:
    """The query's output columns, without reading a row. Rejects unusable column names."""
    probe = sql.SQL("SELECT * FROM ({}) AS _export_probe LIMIT 0").format(sql.SQL(query_text))
    try:
        with conn.cursor() as cur:
            cur.execute(probe)
            description = cur.description or []
    except psycopg.Error as exc:
        conn.rollback()
        raise QueryError(f"dataset {dataset!r}: the query failed: {pg_message(exc)}") from exc
    unknown = [c.type_code for c in description if c.type_display.isdigit()]
    names = _type_names(conn, unknown) if unknown else {}
    columns = [
        Column(
            c.name,
            c.type_display if not c.type_display.isdigit() else names[c.type_code],
            c.type_code,
        )
        for c in description
    ]
    check_column_names(columns, dataset)
    return columns


def _type_names(conn: psycopg.Connection, oids: list[int]) -> dict[int, str]:
    """Names of types psycopg does not know by itself (enums, domains, composites)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT o, format_type(o, NULL) FROM unnest(%s::oid[]) AS o", (sorted(set(oids)),)
        )
        return {int(oid): str(name) for oid, name in cur.fetchall()}


def check_column_names(columns: list[Column], dataset: str) -> None:
    names = [c.name for c in columns]
    if not names:
        raise QueryError(f"dataset {dataset!r}: the query returns no columns")
    empty = [i + 1 for i, n in enumerate(names) if not n.strip() or n == "?column?"]
    if empty:
        raise QueryError(
            f"dataset {dataset!r}: output column(s) at position {empty} have no name; "
            "give every expression an alias (AS name)"
        )
    dupes = sorted(n for n, k in Counter(names).items() if k > 1)
    if dupes:
        raise QueryError(
            f"dataset {dataset!r}: duplicate output column name(s) {dupes}; "
            "alias them so each column has a unique name"
        )


def pg_message(exc: psycopg.Error) -> str:
    """PostgreSQL's primary error message, without the query or context lines."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return primary or driver_message(str(exc))
