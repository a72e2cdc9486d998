#!/usr/bin/env bash
# The benchmark (not part of the tests): bash scripts/bench.sh [--rows N] [--rounds N] [--dsn DSN]
# What costs the engine ratios (issue 16): ... --rows 3000000 --ratio-costs (bench/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/run.py "$@"
