"""Configuration from the environment, chosen in this one place and only when called.

Secrets and deployment settings reach resources as `dg.EnvVar`, so Dagster resolves them in
the run process and never shows their values in run config or the UI. Optional variables that
are unset are left out, so the resource defaults apply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg

from export_pipeline.errors import ExportError
from export_pipeline.io_managers.exports import EXPORTS_IO_MANAGER_KEY, ExportIOManager
from export_pipeline.resources.alerts import AlertWebhookResource
from export_pipeline.resources.delivery import DeliveryWebhookResource
from export_pipeline.resources.s3 import ExportS3Resource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.resources.storage import (
    EXPORT_STORAGE_KEY,
    ExportStorageResource,
    LocalExportStorageResource,
    S3ExportStorageResource,
)
from export_pipeline.storage.keys import StorageConfigError

# The defaults shipped inside the package (package data). In a checkout the files there are
# symlinks to the repository's own `exports.yaml` and `deploy/dagster.yaml`, so editing those is
# enough; a wheel or image carries copies of them as they were when it was built.
DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"
DEFAULT_SPEC = DEFAULTS_DIR / "exports.yaml"

SOURCE_DSN = "EXPORT_SOURCE_DSN"
SPEC = "EXPORT_SPEC"
S3_BUCKET = "EXPORT_S3_BUCKET"
S3_PREFIX = "EXPORT_S3_PREFIX"
S3_ENDPOINT_URL = "EXPORT_S3_ENDPOINT_URL"
STORAGE_DIR = "EXPORT_STORAGE_DIR"
LINK_TTL_SECONDS = "EXPORT_LINK_TTL_SECONDS"
S3_MAX_BUFFER_BYTES = "EXPORT_S3_MAX_BUFFER_BYTES"
RECORD_DOWNLOAD_LINKS = "EXPORT_RECORD_DOWNLOAD_LINKS"
SCHEDULE_HOUR = "EXPORT_SCHEDULE_HOUR"
SCHEDULE_TIMEZONE = "EXPORT_SCHEDULE_TIMEZONE"
STATE_DSN = "EXPORT_STATE_DSN"
ALERT_WEBHOOK_URL = "EXPORT_ALERT_WEBHOOK_URL"
ALERT_WEBHOOK_SECRET = "EXPORT_ALERT_WEBHOOK_SECRET"
DELIVERY_WEBHOOK_URL = "EXPORT_DELIVERY_WEBHOOK_URL"
DELIVERY_WEBHOOK_SECRET = "EXPORT_DELIVERY_WEBHOOK_SECRET"
DELIVERY_WEBHOOK_KEY = "delivery_webhook"


def spec_path(env: Mapping[str, str] | None = None) -> Path:
    """EXPORT_SPEC, else the default spec: `exports.yaml` at the repository root in a checkout,
    the copy shipped in the package (export_pipeline/defaults/exports.yaml) in a wheel or image."""
    env = os.environ if env is None else env
    value = env.get(SPEC, "").strip()
    return Path(value).expanduser() if value else DEFAULT_SPEC.resolve()


@dataclass(frozen=True)
class ScheduleSettings:
    hour: int = 2
    timezone: str = "UTC"


def schedule_settings(env: Mapping[str, str] | None = None) -> ScheduleSettings:
    """When the monthly schedule runs on the 1st: EXPORT_SCHEDULE_HOUR (0-23, default 2) in
    EXPORT_SCHEDULE_TIMEZONE (an IANA name, default UTC). Read when the code loads, since the
    cron string is part of the definition."""
    env = os.environ if env is None else env
    hour_text = env.get(SCHEDULE_HOUR, "").strip() or "2"
    if not hour_text.isdigit() or not 0 <= int(hour_text) <= 23:
        raise SettingsError(f"{SCHEDULE_HOUR} must be an hour from 0 to 23, got {hour_text!r}")
    timezone = env.get(SCHEDULE_TIMEZONE, "").strip() or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"{SCHEDULE_TIMEZONE} {timezone!r} is not an IANA time zone (e.g. Europe/Berlin)"
        ) from None
    return ScheduleSettings(int(hour_text), timezone)


class SettingsError(ExportError, ValueError):
    """An EXPORT_* variable has a value that cannot be used."""


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resources every export needs, wired to environment variables.

    Storage is explicit: EXPORT_S3_BUCKET means S3, EXPORT_STORAGE_DIR a local folder. With
    neither (or both) this raises, so a deployment that lost its bucket variable fails at load
    instead of writing to a container's disk and reporting success.
    """
    env = os.environ if env is None else env
    storage = export_storage(env)
    return {
        "source": PostgresSourceResource(dsn=dg.EnvVar(SOURCE_DSN)),
        EXPORT_STORAGE_KEY: storage,
        EXPORTS_IO_MANAGER_KEY: ExportIOManager(storage=storage),
        DELIVERY_WEBHOOK_KEY: delivery_webhook(env),
        **state_resources(env),
    }


def export_storage(env: Mapping[str, str]) -> ExportStorageResource:
    bucket, local_dir = env.get(S3_BUCKET, "").strip(), env.get(STORAGE_DIR, "").strip()
    if bucket and local_dir:
        raise StorageConfigError(
            f"both {S3_BUCKET} and {STORAGE_DIR} are set: set {S3_BUCKET} for S3 or "
            f"{STORAGE_DIR} for a local folder, not both"
        )
    if not bucket and not local_dir:
        raise StorageConfigError(
            f"no export storage configured: set {S3_BUCKET} (S3) or {STORAGE_DIR} (a local folder)"
        )
    common: dict[str, Any] = {"prefix": dg.EnvVar(S3_PREFIX)} if env.get(S3_PREFIX) else {}
    if local_dir:
        record_download_links(env)  # validated everywhere; local files have no links
        return LocalExportStorageResource(base_dir=dg.EnvVar(STORAGE_DIR), **common)
    s3: dict[str, Any] = {}
    if env.get(S3_ENDPOINT_URL):
        s3["endpoint_url"] = dg.EnvVar(S3_ENDPOINT_URL)
    # boto3 reads only AWS_DEFAULT_REGION itself; AWS_REGION (what the AWS CLI v2 and most
    # SDKs use) wins when both are set.
    region = next((var for var in ("AWS_REGION", "AWS_DEFAULT_REGION") if env.get(var)), None)
    if region:
        s3["region_name"] = dg.EnvVar(region)
    if env.get(LINK_TTL_SECONDS):
        common["link_ttl_seconds"] = dg.EnvVar.int(LINK_TTL_SECONDS)
    if env.get(S3_MAX_BUFFER_BYTES):
        common["max_buffer_bytes"] = dg.EnvVar.int(S3_MAX_BUFFER_BYTES)
    record_links = record_download_links(env)
    if record_links is not None:
        common["record_download_links"] = record_links
    return S3ExportStorageResource(s3=ExportS3Resource(**s3), bucket=dg.EnvVar(S3_BUCKET), **common)


def record_download_links(env: Mapping[str, str]) -> bool | None:
    """EXPORT_RECORD_DOWNLOAD_LINKS: true (the default) or false; None when unset."""
    text = env.get(RECORD_DOWNLOAD_LINKS, "").strip().lower()
    if not text:
        return None
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise SettingsError(
        f"{RECORD_DOWNLOAD_LINKS} must be true or false, got {text!r} (false keeps presigned "
        "links out of the materialization metadata; see SECURITY.md)"
    )


def state_resources(env: Mapping[str, str]) -> dict[str, Any]:
    """The requests/alerts resources. Always registered, so the sensors load; with
    EXPORT_STATE_DSN unset their ticks fail with a message naming it (never skip silently)."""
    state: dict[str, Any] = {"dsn": dg.EnvVar(STATE_DSN)} if env.get(STATE_DSN) else {}
    alerts: dict[str, Any] = {
        field: dg.EnvVar(var)
        for field, var in (("url", ALERT_WEBHOOK_URL), ("secret", ALERT_WEBHOOK_SECRET))
        if env.get(var)
    }
    return {"state": ExportStateResource(**state), "alerts": AlertWebhookResource(**alerts)}


def delivery_webhook(env: Mapping[str, str]) -> DeliveryWebhookResource:
    """The optional completion webhook (docs/manifest.md); unset variables: no webhook."""
    settings: dict[str, Any] = {
        field: dg.EnvVar(var)
        for field, var in (("url", DELIVERY_WEBHOOK_URL), ("secret", DELIVERY_WEBHOOK_SECRET))
        if env.get(var)
    }
    return DeliveryWebhookResource(**settings)
