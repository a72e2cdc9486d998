"""The failure webhook, as a Dagster resource."""

from __future__ import annotations

from typing import ClassVar

import dagster as dg
from pydantic import Field

from export_pipeline.webhook import WebhookConfig, WebhookConfigError, safe_url


class AlertWebhookResource(dg.ConfigurableResource):
    """Where failed export runs are POSTed, signed with HMAC-SHA256. No URL: no webhook."""

    # The variables that set url and secret, named in errors (DeliveryWebhookResource has its own).
    url_variable: ClassVar[str] = "EXPORT_ALERT_WEBHOOK_URL"
    secret_variable: ClassVar[str] = "EXPORT_ALERT_WEBHOOK_SECRET"

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
        return f"{type(self).__name__}(url={safe_url(self.url) if self.url else None!r}, ...)"

    def webhook_config(self) -> WebhookConfig | None:
        if not self.url:
            return None
        if not self.secret:
            raise WebhookConfigError(
                f"{self.url_variable} is set but {self.secret_variable} is not: "
                "webhooks are only sent signed"
            )
        return WebhookConfig(
            self.url,
            self.secret,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )
