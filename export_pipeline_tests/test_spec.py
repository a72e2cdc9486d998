from __future__ import annotations

from pathlib import Path

import pytest

from export_pipeline.engine import partition_stream
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.partitions import Month
from export_pipeline.spec import Compression, Format, SpecError, load_spec, parse_spec

VALID = """
customers:
  table: public.customers
  key_column: id
months:
  start: "2024-01"
datasets:
  events:
    table: public.events
    customer_column: customer_id
    time_column: occurred_at
    format: parquet
  invoices:
    sql: SELECT * FROM invoices WHERE issued_on >= %(month_start)s AND issued_on < %(month_end)s;
    customer_column: customer_id
    format: csv
    compression: gzip
"""


def test_valid_spec_parses_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "exports.yaml"
    path.write_text(VALID)
    spec = load_spec(path)
    events = spec.datasets["events"]
    assert events.table is not None and events.table.parts == ("public", "events")
    assert events.format is Format.PARQUET and events.compression is Compression.ZSTD
    invoices = spec.datasets["invoices"]
    assert invoices.sql is not None and not invoices.sql.endswith(";")
    assert invoices.compression is Compression.GZIP
    assert spec.months_start.isoformat() == "2024-01-01"
    assert spec.customers.key_column == "id"


def test_repo_spec_is_valid() -> None:
    spec = load_spec(Path(__file__).resolve().parents[1] / "exports.yaml")
    assert set(spec.datasets) == {"events", "orders", "invoices"}


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ("format: parquet", "format: xls", "datasets.events.format", "'xls' is not one of"),
        (
            "compression: gzip",
            "compression: snappy",
            "datasets.invoices.compression",
            "'snappy' is not one of gzip, zstd, none",
        ),
        (
            "    time_column: occurred_at\n",
            "",
            "datasets.events.time_column",
            "is required with `table:`",
        ),
        ('start: "2024-01"', 'start: "2024-13"', "months.start", "YYYY-MM"),
        ("key_column: id", "key_colum: id", "customers.key_colum", "unknown key"),
        (
            "%(month_end)s",
            "%(month_stop)s",
            "datasets.invoices.sql",
            "unknown placeholder %(month_stop)s",
        ),
        ("%(month_end)s", "%s", "datasets.invoices.sql", "positional placeholders"),
        ("  events:\n", "  Events:\n", "datasets.Events", "dataset names must be"),
        (
            "    customer_column: customer_id\n    time_column",
            "    time_column",
            "datasets.events.customer_column",
            "is required",
        ),
        ("  table: public.customers\n", "  table: a.b.c\n", "customers.table", "'schema.table'"),
        # manifest.json sits next to the dataset files, and exports_manifest is its asset
        ("  events:\n", "  manifest:\n", "datasets.manifest", "the name 'manifest' is reserved"),
    ],
)
def test_invalid_spec_names_file_key_and_reason(
    tmp_path: Path, old: str, new: str, key: str, reason: str
) -> None:
    assert old in VALID
    path = tmp_path / "bad.yaml"
    path.write_text(VALID.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert reason in message


def test_table_and_sql_together_is_an_error() -> None:
    text = VALID.replace(
        "    table: public.events\n", "    table: public.events\n    sql: select 1\n"
    )
    with pytest.raises(SpecError, match=r"datasets.events: exactly one of `table:` or `sql:`"):
        parse_spec(text, "x.yaml")


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="export spec not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("customers: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml: not valid YAML \(line"):
        load_spec(bad)


def test_literal_percent_is_allowed_when_doubled() -> None:
    text = VALID.replace(
        "SELECT * FROM invoices WHERE", "SELECT * FROM invoices WHERE note LIKE 'a%%' AND"
    )
    spec = parse_spec(text)
    assert "'a%%'" in (spec.datasets["invoices"].sql or "")


def test_export_history_is_an_opt_in_boolean() -> None:
    assert parse_spec(VALID).customers.export_history is False
    on = VALID.replace("  key_column: id\n", "  key_column: id\n  export_history: true\n", 1)
    assert parse_spec(on).customers.export_history is True
    bad = VALID.replace("  key_column: id\n", "  key_column: id\n  export_history: yes-please\n", 1)
    with pytest.raises(SpecError, match=r"customers\.export_history: must be true or false"):
        parse_spec(bad, "exports.yaml")


def test_parquet_row_groups_are_set_per_dataset() -> None:
    spec = parse_spec(
        "customers: {table: c, key_column: id}\nmonths: {start: '2025-01'}\n"
        "datasets:\n  wide:\n    table: t\n    customer_column: c\n    time_column: at\n"
        "    format: parquet\n    row_group_rows: 50000\n    row_group_bytes: 16777216\n"
    )
    wide = spec.datasets["wide"]
    assert (wide.row_group_rows, wide.row_group_bytes) == (50_000, 16_777_216)
    stream = partition_stream(SourceConfig("postgresql://x@127.0.0.1/x"), wide, "1", Month(2025, 3))
    assert stream.tuning.parquet_row_group_rows == 50_000
    assert stream.tuning.parquet_row_group_bytes == 16_777_216


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("    format: csv\n    row_group_rows: 100\n", "only applies to `format: parquet`"),
        ("    format: parquet\n    row_group_bytes: 0\n", "must be a positive whole number"),
        ("    format: parquet\n    row_group_rows: many\n", "must be a positive whole number"),
    ],
)
def test_row_group_settings_are_checked(lines: str, message: str) -> None:
    text = (
        "customers: {table: c, key_column: id}\nmonths: {start: '2025-01'}\n"
        "datasets:\n  d:\n    table: t\n    customer_column: c\n    time_column: at\n" + lines
    )
    with pytest.raises(SpecError, match=message):
        parse_spec(text, source="exports.yaml")
