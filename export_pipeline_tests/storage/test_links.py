"""Download links against a server that checks SigV4: exact bytes, and refusals (issue 8.10).

Temporary credentials come from moto's STS (AssumeRole) through botocore's own assume-role
fetcher and refreshable credentials, as a role-based deployment gets them.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    Credentials,
    DeferredRefreshableCredentials,
)

from export_pipeline.storage.s3 import S3Config, S3ObjectStore, credentials_expiry
from export_pipeline.storage.writer import ObjectHeaders
from export_pipeline_tests.conftest import AWS_TEST_KEY_ID, AWS_TEST_SECRET
from export_pipeline_tests.sigv4_proxy import sigv4_proxy

HEADERS = ObjectHeaders("text/csv", "d.csv")
KEY = "exports/3/2025-03/orders.csv"
DATA = b"id,amount\n" + b"".join(f"{i},{i * 3}.50\n".encode() for i in range(5000))
ROLE_SECONDS = 1200  # shorter than any sensible link TTL, longer than botocore's refresh window


class Clock:
    """The proxy's idea of now: real time unless a test pins it."""

    def __init__(self) -> None:
        self.pinned: datetime | None = None

    def __call__(self) -> datetime:
        return self.pinned or datetime.now(UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def secrets() -> dict[str, str]:
    return {AWS_TEST_KEY_ID: AWS_TEST_SECRET}


@pytest.fixture
def tokens() -> dict[str, str]:
    return {}


@pytest.fixture
def endpoint(
    moto_url: str, secrets: dict[str, str], tokens: dict[str, str], clock: Clock
) -> Iterator[str]:
    """A SigV4-checking endpoint of this test's own (its clock can be pinned, and it learns
    the temporary keys the test obtains)."""
    with sigv4_proxy(moto_url, secrets, clock=clock, tokens=tokens) as url:
        yield url


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"links-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def _store(endpoint: str, bucket: str, session: boto3.session.Session | None = None) -> Any:
    store = S3ObjectStore(S3Config(bucket=bucket, endpoint_url=endpoint), session=session)
    return store


def _put(store: S3ObjectStore) -> None:
    with store.open_writer(KEY, HEADERS) as writer:
        writer.write(DATA)
        writer.commit()


def _request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request) as response:  # the local test endpoint
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def _replace_query(url: str, name: str, value: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [(k, value if k == name else v) for k, v in urllib.parse.parse_qsl(parts.query)]
    return parts._replace(query=urllib.parse.urlencode(query)).geturl()


def test_link_returns_the_exact_bytes_and_tampering_is_refused(endpoint: str, bucket: str) -> None:
    store = _store(endpoint, bucket)
    _put(store)
    link = store.download_link(KEY)
    status, body = _request(link.url)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(DATA).digest()

    signature = _query(link.url)["X-Amz-Signature"]
    flipped = ("0" if signature[10] != "0" else "1").join((signature[:10], signature[11:]))
    assert _request(_replace_query(link.url, "X-Amz-Signature", flipped))[0] == 403
    other_key = link.url.replace("orders.csv", "invoices.csv")
    assert other_key != link.url and _request(other_key)[0] == 403
    short = store.download_link(KEY, ttl_seconds=60).url
    assert _request(short) == (200, DATA)
    assert _request(_replace_query(short, "X-Amz-Expires", "604800"))[0] == 403
    # The link is a GET: it does not let its holder overwrite the object.
    status, _ = _request(link.url, "PUT", b"overwritten")
    assert status == 403
    assert _request(link.url) == (200, DATA)


def test_an_expired_link_is_refused(endpoint: str, bucket: str, clock: Clock) -> None:
    store = _store(endpoint, bucket)
    _put(store)
    link = store.download_link(KEY, ttl_seconds=1)
    signed_at = datetime.strptime(_query(link.url)["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=UTC
    )
    assert _query(link.url)["X-Amz-Expires"] == "1"
    clock.pinned = signed_at + timedelta(milliseconds=500)
    assert _request(link.url) == (200, DATA)
    clock.pinned = signed_at + timedelta(seconds=2)
    status, body = _request(link.url)
    assert status == 403 and b"expired" in body


def test_static_credentials_have_no_expiry_so_the_ttl_decides(endpoint: str, bucket: str) -> None:
    store = _store(endpoint, bucket)
    _put(store)
    before = datetime.now(UTC)
    link = store.download_link(KEY, ttl_seconds=3600)
    assert credentials_expiry(boto3.session.Session()) is None
    assert before + timedelta(seconds=3600) <= link.expires_at
    assert link.expires_at <= datetime.now(UTC) + timedelta(seconds=3600)


class _AssumedRole(CredentialProvider):  # type: ignore[misc]
    """botocore's assume-role machinery (what a `role_arn` profile uses), pointed at moto."""

    METHOD = "assume-role-test"
    CANONICAL_NAME = "AssumeRoleTest"

    def __init__(self, sts_url: str) -> None:
        self._sts_url = sts_url
        self.fetches = 0

    def _client(self, service: str, **kwargs: Any) -> Any:
        return botocore.session.get_session().create_client(
            service, endpoint_url=self._sts_url, region_name="us-east-1", **kwargs
        )

    def load(self) -> DeferredRefreshableCredentials:
        fetcher = AssumeRoleCredentialFetcher(
            self._client,
            Credentials(AWS_TEST_KEY_ID, AWS_TEST_SECRET),
            "arn:aws:iam::123456789012:role/exporter",
            extra_args={"RoleSessionName": "export-links", "DurationSeconds": ROLE_SECONDS},
        )

        def refresh() -> dict[str, Any]:
            self.fetches += 1
            return fetcher.fetch_credentials()

        return DeferredRefreshableCredentials(refresh_using=refresh, method=self.METHOD)


def test_recorded_expiry_is_the_temporary_credentials_expiry_when_sooner(
    moto_url: str,
    endpoint: str,
    bucket: str,
    secrets: dict[str, str],
    tokens: dict[str, str],
) -> None:
    provider = _AssumedRole(moto_url)
    core = botocore.session.get_session()
    core.get_component("credential_provider").insert_before("env", provider)
    session = boto3.session.Session(botocore_session=core, region_name="us-east-1")
    frozen = session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]
    assert frozen.access_key != AWS_TEST_KEY_ID and frozen.token
    secrets[frozen.access_key] = frozen.secret_key  # the S3 endpoint now knows the role
    tokens[frozen.access_key] = frozen.token
    expiry = credentials_expiry(session)
    assert expiry is not None
    now = datetime.now(UTC)
    assert now + timedelta(seconds=ROLE_SECONDS - 60) < expiry
    assert expiry <= now + timedelta(seconds=ROLE_SECONDS)

    store = _store(endpoint, bucket, session)
    _put(store)  # uploaded with the role's credentials
    link = store.download_link(KEY)  # the default TTL: 7 days
    assert _query(link.url)["X-Amz-Expires"] == "604800"
    assert _query(link.url)["X-Amz-Credential"].startswith(frozen.access_key + "/")
    assert _query(link.url)["X-Amz-Security-Token"] == frozen.token
    assert link.expires_at == expiry  # not 7 days: the link dies with the role session
    assert _request(link.url) == (200, DATA)
    assert provider.fetches == 1  # one AssumeRole; nothing refreshed behind the test's back
    # The proxy insists on the session token, as S3 does for temporary keys.
    without_token = link.url.replace(
        "X-Amz-Security-Token=" + urllib.parse.quote(frozen.token, safe=""), "X-Amz-Foo=1"
    )
    assert without_token != link.url and _request(without_token)[0] == 403
