#!/usr/bin/env bash
# Local development: install, start an embedded PostgreSQL with demo data, run the Dagster UI.
# Usage: bash scripts/dev.sh [--rows N] [--customers N]    (flags apply to the first seed only)
# Instance: deploy/dagster.yaml (Postgres storage), copied into .local/dagster_home by localdev.
# Env: DAGSTER_DEV_HOST (127.0.0.1), DAGSTER_DEV_PORT (3000). Ctrl-C stops Dagster and PostgreSQL;
# the data stays in .local/ (delete that folder to start from scratch).
set -euo pipefail
set -m # job control: dagster gets its own process group, so it can be stopped as a whole
cd "$(dirname "$0")/.."

bash scripts/setup.sh

dagster_pid=""
cleanup() {
  trap - INT TERM EXIT
  if [ -n "$dagster_pid" ] && kill -0 -- "-$dagster_pid" 2>/dev/null; then
    kill -TERM -- "-$dagster_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 -- "-$dagster_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$dagster_pid" 2>/dev/null || true
  fi
  .venv/bin/python -m export_pipeline.localdev down || true
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
echo "Dagster UI: http://$host:$port  (Ctrl-C stops it; env for another shell:" \
  "eval \"\$(.venv/bin/python -m export_pipeline.localdev env)\")"
wait "$dagster_pid"
