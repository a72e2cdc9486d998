"""`export-pipeline`: the command line of the Dagster layer (run, status, link, requests,
seed-demo). `main.py` parses and dispatches; one module per command; `common.py` holds what
they share (exit codes, the instance, partition checks)."""

import warnings

# Importing Dagster warns where XDG_RUNTIME_DIR is unset (cron, containers); keep the
# command's stderr to its own one-line messages.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", category=UserWarning)
