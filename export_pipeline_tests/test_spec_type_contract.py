"""Spec keys of the type contract: `unrepresentable` and `csv_formula_guard`."""

from __future__ import annotations

import pytest

from export_pipeline.spec import SpecError, Unrepresentable, parse_spec

SPEC = """
customers: {{table: customers, key_column: id}}
months: {{start: "2024-01"}}
datasets:
  orders:
    table: orders
    time_column: created_at
    customer_column: customer_id
    format: {fmt}
{extra}
"""


def _dataset(fmt: str = "csv", **keys: str) -> object:
    extra = "".join(f"    {k}: {v}\n" for k, v in keys.items())
    return parse_spec(SPEC.format(fmt=fmt, extra=extra)).datasets["orders"]


def test_defaults_are_the_strict_contract() -> None:
    dataset = _dataset()
    assert dataset.unrepresentable is Unrepresentable.FAIL  # type: ignore[attr-defined]
    assert dataset.csv_formula_guard is False  # type: ignore[attr-defined]


def test_opt_ins_parse() -> None:
    dataset = _dataset(unrepresentable="text", csv_formula_guard="true")
    assert dataset.unrepresentable is Unrepresentable.TEXT  # type: ignore[attr-defined]
    assert dataset.csv_formula_guard is True  # type: ignore[attr-defined]
    parquet = _dataset("parquet", unrepresentable="TEXT")
    assert parquet.unrepresentable is Unrepresentable.TEXT  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fmt", "keys", "message"),
    [
        ("csv", {"unrepresentable": "null"}, "datasets.orders.unrepresentable"),
        ("csv", {"unrepresentable": "lossy"}, "'lossy' is not one of fail, text"),
        ("csv", {"csv_formula_guard": "yes please"}, "must be true or false"),
        ("json", {"csv_formula_guard": "true"}, "only applies to `format: csv`"),
    ],
)
def test_bad_values_are_rejected(fmt: str, keys: dict[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("`", "\\`")):
        _dataset(fmt, **keys)
