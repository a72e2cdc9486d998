#!/usr/bin/env bash
# Set up and run the checks: ruff, mypy, then the test suite. Extra arguments go to pytest.
# PostgreSQL: EXPORT_TEST_PG_DSN if set, else the suite starts an embedded server itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check export_pipeline export_pipeline_tests bench
.venv/bin/mypy
# On every core, plus one worker: much of the suite waits on Dagster's processes (pytest-xdist;
# one test file per worker, so a file's module fixtures, a webserver or a daemon, start once).
# EXPORT_TEST_WORKERS sets the count (0: everything in this process).
workers="${EXPORT_TEST_WORKERS:-$(.venv/bin/python -c 'import os; print((os.cpu_count() or 1) + 1)')}"
.venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
