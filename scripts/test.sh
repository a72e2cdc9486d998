#!/usr/bin/env bash
# Set up and run the checks: ruff, mypy, then the test suite. Extra arguments go to pytest.
# PostgreSQL: EXPORT_TEST_PG_DSN if set, else the suite starts an embedded server itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check export_pipeline export_pipeline_tests bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
