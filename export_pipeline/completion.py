"""The completion webhook: "customer C's month M is delivered", sent after `_SUCCESS`.

Signed and retried by `webhook.post` (HMAC-SHA256 over timestamp and body; 5xx and connection
errors retried with backoff, 4xx never). Its outcome is reported, never raised: the delivery is
complete and correct whether or not the receiver heard of it (docs/manifest.md says why).
No Dagster here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from export_pipeline.manifest import WrittenManifest
from export_pipeline.webhook import PostOutcome, WebhookConfig, post

COMPLETION_EVENT = "export.delivery_complete"


def completion_payload(delivery: WrittenManifest, run_id: str | None) -> dict[str, Any]:
    """What the receiver gets: where the manifest is, its sha256 (the `_SUCCESS` content) and
    the manifest itself, so it need not read the bucket to know what arrived."""
    return {
        "event": COMPLETION_EVENT,
        "customer": delivery.customer,
        "month": str(delivery.month),
        "manifest_uri": delivery.manifest.uri,
        "manifest_sha256": delivery.manifest.sha256,
        "success_uri": delivery.success.uri,
        "manifest": delivery.document,
        "run_id": run_id,
        "sent_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class CompletionNotifier:
    """Sends the completion webhooks of one run, each with `webhook.post`'s retries.

    A run that delivers many customer-months (a ranged run) stops posting after
    `max_failures_in_a_row` deliveries in a row failed with a 5xx or no answer: with 5 attempts
    and backoff, each costs about 15 s or more, so a receiver that is down would otherwise hold
    a 1,000-customer run for hours. Those not sent are reported as such (attempts 0).
    """

    def __init__(
        self,
        config: WebhookConfig,
        max_failures_in_a_row: int = 3,
        send: Callable[[WebhookConfig, Mapping[str, Any]], PostOutcome] = post,
    ) -> None:
        self.config = config
        self.max_failures_in_a_row = max_failures_in_a_row
        self._send = send
        self._failures_in_a_row = 0

    def notify(self, payload: Mapping[str, Any]) -> PostOutcome:
        if self._failures_in_a_row >= self.max_failures_in_a_row:
            return PostOutcome(
                False,
                0,
                f"not sent: the last {self._failures_in_a_row} completion webhooks of this run "
                "got no answer or a 5xx",
            )
        delivery = self._send(self.config, payload)
        receiver_down = not delivery.ok and (delivery.status is None or delivery.status >= 500)
        self._failures_in_a_row = self._failures_in_a_row + 1 if receiver_down else 0
        return delivery
