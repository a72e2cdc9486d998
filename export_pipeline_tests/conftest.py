from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from export_pipeline.demo.seed import seed_demo
from export_pipeline.extract.connection import SourceConfig
from export_pipeline.spec import ExportSpec, load_spec
from export_pipeline.storage.local import LocalObjectStore
from export_pipeline.storage.s3 import MIN_PART_SIZE, S3Config, S3ObjectStore
from export_pipeline_tests.services import postgres_server, s3_server, scratch_database
from export_pipeline_tests.sigv4_proxy import Faults, sigv4_proxy

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_ROWS = 20_000
DEMO_CUSTOMERS = 5
AWS_TEST_KEY_ID = "testing-key-id"
AWS_TEST_SECRET = "testing-secret-key"


@pytest.fixture(scope="session", autouse=True)
def _aws_test_credentials() -> Iterator[None]:
    """Credentials for the local S3 server, so nothing can reach a real account; and the
    environment the image gives runs."""
    mp = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ACCESS_KEY_ID": AWS_TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": AWS_TEST_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        # As the image sets it (deploy/Dockerfile): a ranged run's materializations are
        # written in batches, and the tests run the same way.
        "DAGSTER_EVENT_BATCH_SIZE": "100",
    }.items():
        mp.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(name, raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def demo_dsn(pg_server: str) -> Iterator[str]:
    """A database seeded with the demo data (5 customers, 2025). Tests must not change it."""
    with scratch_database(pg_server, "demo") as dsn:
        seed_demo(dsn, rows=DEMO_ROWS, customers=DEMO_CUSTOMERS, year=2025)
        yield dsn


@pytest.fixture
def scratch_dsn(pg_server: str) -> Iterator[str]:
    """An empty database of the test's own."""
    with scratch_database(pg_server, "scratch") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def demo_source(demo_dsn: str) -> SourceConfig:
    return SourceConfig(demo_dsn, statement_timeout_seconds=60)


@pytest.fixture(scope="session")
def demo_spec() -> ExportSpec:
    return load_spec(REPO_ROOT / "exports.yaml")


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint(moto_url: str) -> Iterator[str]:
    """moto's S3 server behind a proxy that rejects requests without a valid SigV4 signature."""
    with sigv4_proxy(moto_url, {AWS_TEST_KEY_ID: AWS_TEST_SECRET}) as checked:
        yield checked


@pytest.fixture
def s3_faults(moto_url: str) -> Iterator[tuple[str, Faults]]:
    """A second SigV4-checking endpoint over the same server, whose answers a test can break."""
    faults = Faults()
    with sigv4_proxy(moto_url, {AWS_TEST_KEY_ID: AWS_TEST_SECRET}, faults) as url:
        try:
            yield url, faults
        finally:
            faults.release()  # end held requests before the proxy stops


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"exports-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_config(s3_endpoint: str, bucket: str) -> S3Config:
    return S3Config(bucket=bucket, endpoint_url=s3_endpoint, part_size=MIN_PART_SIZE)


@pytest.fixture
def s3_store(s3_config: S3Config) -> S3ObjectStore:
    return S3ObjectStore(s3_config)


@pytest.fixture
def s3_client(s3_config: S3Config) -> Any:
    return s3_config.client()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "storage")
