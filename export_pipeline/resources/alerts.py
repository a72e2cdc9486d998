"""The failure webhook, as a Dagster resource."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from export_pipeline.webhook import WebhookConfig, WebhookConfigError, safe_url


class AlertWebhookResource(dg.ConfigurableResource):
    """Where failed export runs are POSTed, signed with HMAC-SHA256. No URL: no webhook."""

    url: str | None = Field(
        default=None, description="Webhook URL (EXPORT_ALERT_WEBHOOK_URL); unset disables it."
    )
    secret: str | None = Field(
        default=None, description="HMAC-SHA256 signing secret (EXPORT_ALERT_WEBHOOK_SECRET)."
    )
    max_attempts: int = Field(default=5, description="Attempts on 5xx or connection errors.")
    backoff_seconds: float = Field(
        default=1.0, description="First retry delay; doubles each attempt, at most 30 s."
    )

    def __repr__(self) -> str:
        return f"AlertWebhookResource(url={safe_url(self.url) if self.url else None!r}, ...)"

    def webhook_config(self) -> WebhookConfig | None:
        if not self.url:
            return None
        if not self.secret:
            raise WebhookConfigError(
                "EXPORT_ALERT_WEBHOOK_URL is set but EXPORT_ALERT_WEBHOOK_SECRET is not: "
                "alerts are only sent signed"
            )
        return WebhookConfig(
            self.url,
            self.secret,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )
