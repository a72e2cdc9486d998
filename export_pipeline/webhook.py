"""Signed JSON webhooks with bounded retries; stdlib only, no Dagster.

The receiver verifies `X-Export-Signature: sha256=<hex>`, the HMAC-SHA256 with the shared
secret of `<X-Export-Timestamp>.<body>` (the timestamp, a dot, the exact body bytes), and
rejects old timestamps to stop replays. Messages never contain the secret or the URL's path
or query (chat webhooks carry tokens there), only its scheme and host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from export_pipeline.errors import ExportError

SIGNATURE_HEADER = "X-Export-Signature"
TIMESTAMP_HEADER = "X-Export-Timestamp"


class WebhookConfigError(ExportError, ValueError):
    """The webhook is half-configured (a URL without a secret, say)."""


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 10.0

    def __repr__(self) -> str:
        return f"WebhookConfig(url={safe_url(self.url)!r}, secret='***', ...)"


@dataclass(frozen=True)
class PostOutcome:
    ok: bool
    attempts: int
    detail: str  # "HTTP 200", "HTTP 400", "connection error: ...": no secrets
    status: int | None = None  # the last HTTP status answered; None if none was


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


def post(
    config: WebhookConfig,
    payload: Mapping[str, Any],
    sleep: Callable[[float], None] = time.sleep,
) -> PostOutcome:
    """POST the payload; retry 5xx and connection errors with exponential backoff (bounded by
    max_attempts and max_backoff_seconds); never retry other statuses."""
    body = encode(payload)
    detail, status = "not sent", None
    for attempt in range(1, max(1, config.max_attempts) + 1):
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            config.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "export_pipeline-alerts",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(config.secret, timestamp, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_seconds) as response:
                return PostOutcome(True, attempt, f"HTTP {response.status}", response.status)
        except urllib.error.HTTPError as exc:
            detail, status = f"HTTP {exc.code}", exc.code
            if exc.code < 500:
                return PostOutcome(False, attempt, detail, status)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            detail, status = f"connection error: {type(reason).__name__}", None
        if attempt < config.max_attempts:
            sleep(min(config.backoff_seconds * 2 ** (attempt - 1), config.max_backoff_seconds))
    return PostOutcome(False, max(1, config.max_attempts), detail, status)
