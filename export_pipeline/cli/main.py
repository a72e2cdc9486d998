"""The `export-pipeline` command: arguments, dispatch, exit codes, one-line errors.

Parsing needs no Dagster: a command's module is imported only when that command runs, so
`run` starts its child process before this process pays for importing Dagster (about a
second of CPU, which the child pays too; they overlap).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from export_pipeline.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from export_pipeline.errors import ExportError

DESCRIPTION = """\
Export customer-months from PostgreSQL and follow them, through the Dagster instance of
$DAGSTER_HOME (the one the UI and the daemon use). Configuration: the EXPORT_* variables,
and, as for Dagster's own commands, a .env file in the current directory (scripts/dev.sh
writes one for the local demo).
"""
EPILOG = """\
examples:
  export-pipeline seed-demo                    demo data, customers registered as partitions
  export-pipeline run 3 2025-03                export one customer-month, with a progress bar
  export-pipeline status 3 --month 2025-03     what each dataset of it looks like now
  export-pipeline link 3 2025-03 orders --ttl 3600
  export-pipeline requests --status failed

exit codes: 0 ok, 1 the export or command failed, 2 usage error, 3 not found, 130 interrupted
(docs/cli.md). --verbose keeps the cause of an error (traceback) on stderr.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line on stderr and exit 2 (argparse prints the whole usage first)."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _command(module: str) -> Callable[[argparse.Namespace], int]:
    """The `command` function of export_pipeline.cli.<module>, imported when it runs."""

    def handler(args: argparse.Namespace) -> int:
        return int(importlib.import_module(f"export_pipeline.cli.{module}").command(args))

    return handler


def _add(commands: Any, name: str, module: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )
    parser.set_defaults(handler=_command(module))
    return parser


def _add_run(commands: Any) -> None:
    parser = _add(
        commands,
        "run",
        "run",
        help="export one customer-month now, with a progress bar",
        description="Export one customer-month (all datasets, or those named) through "
        "`dagster asset materialize`, recording the run and its materializations in the "
        "instance of $DAGSTER_HOME, as the UI would. Without --dataset the delivery manifest "
        "is written too.",
        epilog="examples:\n"
        "  export-pipeline run 3 2025-03\n"
        "  export-pipeline run 3 2025-03 --dataset orders --dataset invoices\n"
        "  export-pipeline run 3 2025-03 --json > delivered.json",
    )
    parser.add_argument("customer", help="a customer key (a 'customers' partition)")
    parser.add_argument("month", help="YYYY-MM")
    parser.add_argument(
        "--dataset", action="append", dest="datasets", metavar="NAME", help="repeatable"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_status(commands: Any) -> None:
    parser = _add(
        commands,
        "status",
        "status",
        help="each dataset's state: never run, queued, running, done or failed",
        description="Each dataset's state per customer-month, read from the Dagster instance: "
        "the partitions' status (what the UI's partition view shows), their latest "
        "materialization, and the runs that cover them, one partition or a range. Without "
        "--month, every month since months.start is looked at and datasets never run are left "
        "out; with --month they are listed as 'never run'.",
        epilog="examples:\n"
        "  export-pipeline status 3 --month 2025-03\n"
        "  export-pipeline status 3\n"
        "  export-pipeline status --month 2025-03 --json | jq '.[] | select(.state==\"failed\")'",
    )
    parser.add_argument("customer", nargs="?", help="a customer key (default: every customer)")
    parser.add_argument("--month", help="YYYY-MM (default: every month)")
    parser.add_argument("--json", action="store_true", help="print a JSON list for scripts")


def _add_link(commands: Any) -> None:
    parser = _add(
        commands,
        "link",
        "link",
        help="sign a fresh download link for a finished export",
        description="Sign a fresh presigned GET link for the latest delivered file of a "
        "customer-month dataset, without exporting again. With local storage, print the "
        "file's path instead.",
        epilog="examples:\n"
        "  export-pipeline link 3 2025-03 orders\n"
        '  curl -fo orders.jsonl "$(export-pipeline link 3 2025-03 orders --ttl 600)"',
    )
    parser.add_argument("customer")
    parser.add_argument("month", help="YYYY-MM")
    parser.add_argument("dataset")
    parser.add_argument(
        "--ttl",
        type=int,
        metavar="SECONDS",
        help="lifetime, at most 7 days, the SigV4 maximum (default: EXPORT_LINK_TTL_SECONDS, "
        "else 7 days)",
    )
    parser.add_argument("--json", action="store_true", help="print uri, url and expiry as JSON")


def _add_requests(commands: Any) -> None:
    parser = _add(
        commands,
        "requests",
        "requests",
        help="list on-demand export requests and their outcome",
        description="List the rows of export_requests (EXPORT_STATE_DSN), newest first: "
        "pending, queued, running, succeeded (with the files) or failed (with the error). "
        "Submit one with `python -m export_pipeline.state.requests submit` or an INSERT "
        "(docs/requests-and-alerts.md).",
        epilog="examples:\n"
        "  export-pipeline requests\n"
        "  export-pipeline requests --status failed --status pending\n"
        "  export-pipeline requests --customer 3 --json",
    )
    parser.add_argument(
        "--status",
        action="append",
        dest="statuses",
        type=_request_status,
        metavar="STATUS",
        help="pending, queued, running, succeeded or failed; repeatable",
    )
    parser.add_argument("--customer", help="only this customer's requests")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--json", action="store_true", help="print a JSON list for scripts")


def _request_status(text: str) -> str:
    """A status of export_requests (checked here: the parser imports no database driver)."""
    from export_pipeline.state.requests import STATUSES

    if text not in STATUSES:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(STATUSES)})"
        )
    return text


def _add_seed(commands: Any) -> None:
    parser = _add(
        commands,
        "seed-demo",
        "seed",
        help="create the demo source data and register its customers as partitions",
        description="Create and fill the demo tables (customers, events, orders, invoices) in "
        "the database of EXPORT_SOURCE_DSN, unless they exist (--reseed recreates them), then "
        "add every customer as a 'customers' partition of the instance of $DAGSTER_HOME. "
        "The source must be writable for this; use a scratch database, never a replica.",
        epilog="examples:\n"
        "  export-pipeline seed-demo\n"
        "  export-pipeline seed-demo --dsn postgresql://postgres@127.0.0.1/demo --rows 1000000",
    )
    parser.add_argument("--dsn", help="database to seed (default: EXPORT_SOURCE_DSN)")
    parser.add_argument("--rows", type=int, default=50_000, help="demo events (default 50000)")
    parser.add_argument("--customers", type=int, default=10, help="demo customers (default 10)")
    parser.add_argument(
        "--year", type=int, help="the demo's year (default: the one scripts/dev.sh seeds)"
    )
    parser.add_argument("--reseed", action="store_true", help="drop and recreate the demo data")


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
    for add in (_add_run, _add_status, _add_link, _add_requests, _add_seed):
        add(commands)
    for sub in commands.choices.values():  # also after the command: `run 3 2025-03 -v`
        sub.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="as above"
        )
    return parser


def load_dotenv(directory: Path) -> list[str]:
    """Read `directory`/.env into the environment, its values winning, as Dagster's own
    commands do (`dagster dev`, and `dagster asset materialize`, which `run` starts): the
    command and its child then always see the same instance and storage. Returns the names
    set."""
    path = directory / ".env"
    if not path.is_file():
        return []
    from dotenv import dotenv_values  # python-dotenv, which Dagster reads .env with

    values = {name: value for name, value in dotenv_values(path).items() if value is not None}
    os.environ.update(values)
    return list(values)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script. With `argv` None (a real command line) it reads the current
    directory's .env first; a caller passing `argv` keeps its environment as it is."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="export-pipeline: %(message)s",
    )
    try:
        if argv is None:
            loaded = load_dotenv(Path.cwd())
            if loaded:
                logging.getLogger(__name__).info("read .env: %s", ", ".join(loaded))
        return int(args.handler(args))
    except CliError as exc:
        return _fail(args, exc, str(exc), exc.code)
    except ExportError as exc:
        return _fail(args, exc, str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        sys.stderr.write("export-pipeline: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # anything else (S3, the instance, a bug): still one line
        return _fail(args, exc, f"{type(exc).__name__}: {exc} (-v shows the cause)", EXIT_FAILED)


def _fail(args: argparse.Namespace, exc: BaseException, message: str, code: int) -> int:
    if args.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    lines = [line for line in message.splitlines() if line.strip()]
    sys.stderr.write(f"export-pipeline {args.command}: {lines[0] if lines else 'failed'}\n")
    return code
