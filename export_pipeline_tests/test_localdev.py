from __future__ import annotations

from pathlib import Path

from export_pipeline.localdev import STATE_DB, environment


def test_local_environment_points_the_state_at_its_own_writable_database() -> None:
    env = environment(Path("/tmp/pg-sock"))
    assert env["EXPORT_STATE_DSN"] == "postgresql://postgres@/export_state?host=/tmp/pg-sock"
    assert STATE_DB not in env["EXPORT_SOURCE_DSN"]
