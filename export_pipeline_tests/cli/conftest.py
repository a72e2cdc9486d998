"""The `export-pipeline` command, as a subprocess or in this process, against a Dagster instance
of its own."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest

from export_pipeline.cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKEN_DATASET = """
  broken:
    table: public.no_such_table
    customer_column: customer_id
    time_column: occurred_at
    format: csv
    compression: none
"""


@dataclass
class Cli:
    """`python -m export_pipeline.cli ARGS` with this environment; `instance()` reads its home."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "export_pipeline.cli", *args],
            env={**self.env, **(env or {})},
            cwd=self.home.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def call(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The same command in this process (`main(argv)`, as the console script calls it,
        with this environment in `os.environ` meanwhile): no interpreter start-up and imports,
        about 3 s of CPU a command. For what needs no process of its own: errors, `status`,
        `link`, `requests`; `run` (a child process, signals) and the .env of the current
        directory go through `__call__`."""
        out, err = io.StringIO(), io.StringIO()
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update({**self.env, **(env or {})})
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(list(args))
                except SystemExit as exc:  # argparse's usage errors
                    code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))


def make_cli(root: Path, customers: list[str], **variables: str) -> Cli:
    """A fresh DAGSTER_HOME (SQLite storage) with `customers` registered as partitions."""
    home = root / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    if customers:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions("customers", customers)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("EXPORT_", "DAGSTER_"))
    }
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        DAGSTER_HOME=str(home),
        EXPORT_SPEC=str(REPO_ROOT / "exports.yaml"),
    )
    env.update(variables)
    return Cli(home, env)


def spec_with_broken_dataset(root: Path) -> Path:
    """exports.yaml plus a dataset whose table does not exist: its exports fail, permanently."""
    path = root / "exports.yaml"
    path.write_text((REPO_ROOT / "exports.yaml").read_text() + BROKEN_DATASET)
    return path


@pytest.fixture(scope="module")
def s3_bucket(s3_endpoint: str) -> str:
    name = f"cli-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def s3_cli(
    tmp_path_factory: pytest.TempPathFactory, demo_dsn: str, s3_endpoint: str, s3_bucket: str
) -> Cli:
    """Demo source, S3 through the SigV4-checking proxy, customers 1-5 registered."""
    root = tmp_path_factory.mktemp("cli")
    return make_cli(
        root,
        ["1", "2", "3", "4", "5"],
        EXPORT_SOURCE_DSN=demo_dsn,
        EXPORT_SPEC=str(spec_with_broken_dataset(root)),
        EXPORT_S3_BUCKET=s3_bucket,
        EXPORT_S3_ENDPOINT_URL=s3_endpoint,
        EXPORT_LINK_TTL_SECONDS="3600",
    )


def one_line(text: str) -> str:
    """The text, asserted to be exactly one line (a one-line error)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def s3_object(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def s3_client_module(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint)
