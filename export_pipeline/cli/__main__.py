"""`python -m export_pipeline.cli ...`: the same as the `export-pipeline` console script."""

import sys

from export_pipeline.cli.main import main

sys.exit(main())
