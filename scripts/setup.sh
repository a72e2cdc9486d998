#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its exact, tested dependency set.
# Usage: bash scripts/setup.sh            (runtime + dev/test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
# The first Python 3.11+ found (or $PYTHON): python3 may be older where python3.11 exists.
if [ -z "${PYTHON:-}" ]; then
  for candidate in python3 python3.11 python3.12 python3.13 python3.14; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON="$candidate"
      break
    fi
  done
fi
if [ -z "${PYTHON:-}" ]; then
  echo "setup: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.export_pipeline_installed
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # uv installs the same pinned set as pip would, in about 15 s instead of 40 s; pip only
  # installs uv itself (one wheel from PyPI). --compile-bytecode, as pip does: where
  # PYTHONDONTWRITEBYTECODE is set, nothing else would ever write the .pyc files.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.8"
  .venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python \
    -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
