"""The completion webhook, as a Dagster resource: the failure webhook's settings, its own URL."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from export_pipeline.resources.alerts import AlertWebhookResource


class DeliveryWebhookResource(AlertWebhookResource):
    """Where completed deliveries (manifest and `_SUCCESS` written) are POSTed, signed with
    HMAC-SHA256 like the failure alerts. No URL: no webhook."""

    url_variable: ClassVar[str] = "EXPORT_DELIVERY_WEBHOOK_URL"
    secret_variable: ClassVar[str] = "EXPORT_DELIVERY_WEBHOOK_SECRET"

    url: str | None = Field(
        default=None, description="Webhook URL (EXPORT_DELIVERY_WEBHOOK_URL); unset disables it."
    )
    secret: str | None = Field(
        default=None, description="HMAC-SHA256 signing secret (EXPORT_DELIVERY_WEBHOOK_SECRET)."
    )
    max_failures_in_a_row: int = Field(
        default=3,
        description="A run that delivers many customer-months stops posting after this many "
        "deliveries in a row got a 5xx or no answer (after their retries).",
    )
