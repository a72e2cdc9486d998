"""`export-pipeline`: the command line of the Dagster layer (run, status, link, requests,
seed-demo). `main.py` parses and dispatches, importing a command's module only when it runs;
one module per command (`run.py` starts the child, `follow.py` follows its run); `common.py`
holds what they share without Dagster (exit codes, argument checks), `context.py` the spec
and the instance, `progress.py` the reader of a run's progress events."""

import warnings

# Importing Dagster warns where XDG_RUNTIME_DIR is unset (cron, containers); keep the
# command's stderr to its own one-line messages.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", category=UserWarning)
