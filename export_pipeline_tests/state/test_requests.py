from __future__ import annotations

import psycopg
import pytest

from export_pipeline.errors import ExportError
from export_pipeline.state import requests
from export_pipeline.state.db import StateDatabaseError, connect, ensure_schema
from export_pipeline.state.requests import claim_pending, get_request, submit_request


def test_submit_records_a_pending_request(scratch_dsn: str) -> None:
    first = submit_request(scratch_dsn, "3", "2025-03", ["events", "events"], "billing-app")
    second = submit_request(scratch_dsn, "acme", "2025-04-01")
    assert second > first
    request = get_request(scratch_dsn, first)
    assert request is not None
    assert (request.customer, request.month, request.datasets) == ("3", "2025-03", ["events"])
    assert (request.requester, request.status, request.run_key) == ("billing-app", "pending", None)
    other = get_request(scratch_dsn, second)
    assert other is not None and other.month == "2025-04" and other.datasets is None


@pytest.mark.parametrize(
    ("customer", "month", "datasets", "requester", "message"),
    [
        ("../etc", "2025-03", None, "", "customer key '../etc' is not allowed"),
        ("3", "2025-13", None, "", "month '2025-13' is not a month"),
        ("3", "March", None, "", "month 'March' is not a month"),
        ("3", "2025-03", [], "", "datasets must not be empty"),
        ("3", "2025-03", ["ev ents"], "", "dataset name 'ev ents' is not a valid"),
        ("3", "2025-03", None, "a\nb", "requester must be"),
    ],
)
def test_bad_input_is_one_clear_error_and_stores_nothing(
    scratch_dsn: str,
    customer: str,
    month: str,
    datasets: list[str] | None,
    requester: str,
    message: str,
) -> None:
    with pytest.raises(ExportError, match=message):
        submit_request(scratch_dsn, customer, month, datasets, requester)
    with connect(scratch_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM export_requests").fetchone() == (0,)


def test_schema_creation_is_idempotent(scratch_dsn: str) -> None:
    submit_request(scratch_dsn, "3", "2025-03")
    with psycopg.connect(scratch_dsn) as conn:
        ensure_schema(conn)
        ensure_schema(conn)
        assert conn.execute("SELECT count(*) FROM export_requests").fetchone() == (1,)


def test_a_claimed_request_is_never_claimed_again(scratch_dsn: str) -> None:
    ids = [submit_request(scratch_dsn, str(c), "2025-03") for c in range(1, 4)]
    queued, failed = claim_pending(scratch_dsn, lambda r: "no" if r.customer == "2" else None)
    assert [r.id for r in queued] == [ids[0], ids[2]]
    assert [(r.id, r.error) for r in failed] == [(ids[1], "no")]
    assert claim_pending(scratch_dsn, lambda r: None) == ([], [])
    stored = get_request(scratch_dsn, ids[0])
    assert stored is not None
    assert (stored.status, stored.run_key) == ("queued", f"export-request-{ids[0]}")


def test_unreachable_database_is_a_clear_error_without_password() -> None:
    with pytest.raises(StateDatabaseError, match="cannot connect to the state database") as info:
        submit_request("postgresql://u:pw-state-9@127.0.0.1:1/x", "3", "2025-03")
    assert "pw-state-9" not in str(info.value)
    with pytest.raises(StateDatabaseError, match="EXPORT_STATE_DSN is not set"):
        submit_request("", "3", "2025-03")


def test_cli_submits_and_shows(
    scratch_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXPORT_STATE_DSN", scratch_dsn)
    assert (
        requests.main(["submit", "7", "2025-02", "--dataset", "orders", "--requester", "me"]) == 0
    )
    request_id = int(capsys.readouterr().out)
    assert requests.main(["show", str(request_id)]) == 0
    assert '"status": "pending"' in capsys.readouterr().out
    assert requests.main(["submit", "7", "2025-2"]) == 2
    assert "is not a month" in capsys.readouterr().err
