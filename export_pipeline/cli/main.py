"""The `export-pipeline` command: argument parsing, dispatch, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from export_pipeline.cli import link, requests, run, seed, status
from export_pipeline.cli.common import EXIT_FAILED, EXIT_USAGE, CliError
from export_pipeline.errors import ExportError

DESCRIPTION = """\
Export customer-months from PostgreSQL and follow them, through the Dagster instance of
$DAGSTER_HOME (the one the UI and the daemon use). Configuration: the EXPORT_* variables.
"""
EPILOG = """\
examples:
  export-pipeline seed-demo                    demo data, customers registered as partitions
  export-pipeline run 3 2025-03                export one customer-month, with a progress bar
  export-pipeline status 3 --month 2025-03     what each dataset of it looks like now
  export-pipeline link 3 2025-03 orders --ttl 3600
  export-pipeline requests --status failed

exit codes: 0 ok, 1 the export or command failed, 2 usage error, 3 not found
(docs/cli.md). --verbose keeps the cause of an error (traceback) on stderr.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line on stderr and exit 2 (argparse prints the whole usage first)."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="export-pipeline",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show causes and Dagster's own output"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, status, link, requests, seed):
        module.add_parser(commands)
    for sub in commands.choices.values():  # also after the command: `run 3 2025-03 -v`
        sub.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as above"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="export-pipeline: %(message)s",
    )
    try:
        return int(args.handler(args))
    except CliError as exc:
        return _fail(args, exc, str(exc), exc.code)
    except ExportError as exc:
        return _fail(args, exc, str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        sys.stderr.write("export-pipeline: interrupted\n")
        return 130
    except Exception as exc:  # anything else (S3, the instance, a bug): still one line
        return _fail(args, exc, f"{type(exc).__name__}: {exc} (-v shows the cause)", EXIT_FAILED)


def _fail(args: argparse.Namespace, exc: BaseException, message: str, code: int) -> int:
    if args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    lines = [line for line in message.splitlines() if line.strip()]
    sys.stderr.write(f"export-pipeline {args.command}: {lines[0] if lines else 'failed'}\n")
    return code
