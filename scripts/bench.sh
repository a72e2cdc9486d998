#!/usr/bin/env bash
# The benchmark (not part of the tests): bash scripts/bench.sh [--rows N] [--rounds N] [--dsn DSN]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/run.py "$@"
