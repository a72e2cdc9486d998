#!/usr/bin/env bash
# Local development: install, start an embedded PostgreSQL with demo data, run the Dagster UI.
# Usage: bash scripts/dev.sh [--rows N] [--customers N]    (flags apply to the first seed only)
# Instance: deploy/dagster.yaml (Postgres storage), copied into .local/dagster_home by localdev.
# While it runs, .env in the repo root holds the demo's variables, so `dagster dev`, `dg ...`
# and `export-pipeline ...` typed in another shell in the repo root use the same instance.
# Env: DAGSTER_DEV_HOST (127.0.0.1), DAGSTER_DEV_PORT (3000). Ctrl-C stops Dagster and
# PostgreSQL within a few seconds and removes .env; the data stays in .local/ (delete that
# folder to start from scratch).
set -euo pipefail
set -m # job control: dagster dev gets its own process group, so it can be stopped as a whole
cd "$(dirname "$0")/.."

bash scripts/setup.sh

dagster_pid=""
cleanup() {
  trap '' INT TERM # a second Ctrl-C must not cut the cleanup short: it is bounded anyway
  trap - EXIT
  group=""
  if [ -n "$dagster_pid" ] && kill -0 -- "-$dagster_pid" 2>/dev/null; then
    # SIGINT, what Ctrl-C sends, to dagster dev, its webserver, daemon and code servers at once;
    # `down --after-group` stops PostgreSQL once they are gone or had 1 s, and SIGKILLs what is
    # left of them at 2 s.
    kill -INT -- "-$dagster_pid" 2>/dev/null || true
    group="$dagster_pid"
  fi
  .venv/bin/python -m export_pipeline.localdev down ${group:+--after-group "$group"} || true
  if [ -n "$group" ]; then
    kill -KILL -- "-$group" 2>/dev/null || true # in case `down` could not run at all
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# An assignment, not `eval "$(...)"` directly, so that a failing `up` stops the script.
env_lines="$(.venv/bin/python -m export_pipeline.localdev up "$@")"
eval "$env_lines"

host="${DAGSTER_DEV_HOST:-127.0.0.1}"
port="${DAGSTER_DEV_PORT:-3000}"
.venv/bin/dagster dev -w workspace.yaml -h "$host" -p "$port" &
dagster_pid=$!
echo "Dagster UI: http://$host:$port  (Ctrl-C stops it; in another shell in this folder," \
  "dagster, dg and export-pipeline use the demo through .env)"
wait "$dagster_pid"
