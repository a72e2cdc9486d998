"""Configuration from the environment, chosen in this one place and only when called.

Secrets and deployment settings reach resources as `dg.EnvVar`, so Dagster resolves them in
the run process and never shows their values in run config or the UI. Optional variables that
are unset are left out, so the resource defaults apply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from export_pipeline.resources.alerts import AlertWebhookResource
from export_pipeline.resources.source import PostgresSourceResource
from export_pipeline.resources.state import ExportStateResource
from export_pipeline.resources.storage import DEFAULT_LOCAL_DIR, ExportStorageResource

REPO_ROOT = Path(__file__).resolve().parents[1]

SOURCE_DSN = "EXPORT_SOURCE_DSN"
SPEC = "EXPORT_SPEC"
S3_BUCKET = "EXPORT_S3_BUCKET"
S3_PREFIX = "EXPORT_S3_PREFIX"
S3_ENDPOINT_URL = "EXPORT_S3_ENDPOINT_URL"
STORAGE_DIR = "EXPORT_STORAGE_DIR"
LINK_TTL_SECONDS = "EXPORT_LINK_TTL_SECONDS"
STATE_DSN = "EXPORT_STATE_DSN"
ALERT_WEBHOOK_URL = "EXPORT_ALERT_WEBHOOK_URL"
ALERT_WEBHOOK_SECRET = "EXPORT_ALERT_WEBHOOK_SECRET"

# resource field -> environment variable, for the storage resource's optional settings
_STORAGE_STR_FIELDS = {
    "bucket": S3_BUCKET,
    "prefix": S3_PREFIX,
    "endpoint_url": S3_ENDPOINT_URL,
    "local_dir": STORAGE_DIR,
}
_STORAGE_INT_FIELDS = {"link_ttl_seconds": LINK_TTL_SECONDS}


def spec_path(env: Mapping[str, str] | None = None) -> Path:
    """EXPORT_SPEC, or `exports.yaml` at the repository root."""
    env = os.environ if env is None else env
    value = env.get(SPEC, "").strip()
    return Path(value).expanduser() if value else REPO_ROOT / "exports.yaml"


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resources every export needs, wired to environment variables."""
    env = os.environ if env is None else env
    storage: dict[str, Any] = {
        field: dg.EnvVar(var) for field, var in _STORAGE_STR_FIELDS.items() if env.get(var)
    }
    storage.update(
        {field: dg.EnvVar.int(var) for field, var in _STORAGE_INT_FIELDS.items() if env.get(var)}
    )
    # boto3 reads only AWS_DEFAULT_REGION itself; AWS_REGION (what the AWS CLI v2 and most
    # SDKs use) wins when both are set.
    region = next((var for var in ("AWS_REGION", "AWS_DEFAULT_REGION") if env.get(var)), None)
    if region:
        storage["region_name"] = dg.EnvVar(region)
    if not env.get(STORAGE_DIR):
        storage["local_dir"] = str(REPO_ROOT / DEFAULT_LOCAL_DIR)
    return {
        "source": PostgresSourceResource(dsn=dg.EnvVar(SOURCE_DSN)),
        "storage": ExportStorageResource(**storage),
        **state_resources(env),
    }


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
