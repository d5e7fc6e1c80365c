"""Events to the store backend's webhook, signed per Standard Webhooks.

`webhook-id` is the event id, the same on every retry, so a receiver can
drop repeats; `webhook-signature` carries one `v1,<base64>` signature per
configured secret (space-separated): during a rotation the store verifies
with either its old or its new secret.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from app.domain.ports import (
    Clock,
    EventPublisher,
)
from app.domain.records import DeliveryAttempt, OutboxEvent
from app.services.views import event_payload

_ERROR_CHARS = 300


class StoreWebhookPublisher(EventPublisher):
    def __init__(
        self,
        url: str,
        secrets: Sequence[str],
        http: httpx.AsyncClient,
        clock: Clock,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not secrets:
            raise ValueError("a store webhook needs at least one secret")
        self.url = url
        self._signers = [Webhook(secret) for secret in secrets]
        self._http = http
        self._clock = clock
        self._timeout = timeout_seconds

    def sign(self, event_id: str, at: datetime, body: str) -> str:
        return " ".join(signer.sign(event_id, at, body) for signer in self._signers)

    async def publish(self, event: OutboxEvent, attempt: int) -> DeliveryAttempt:
        now = self._clock.now()
        body = json.dumps(event_payload(event), separators=(",", ":"), ensure_ascii=False)
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now.astimezone(UTC).timestamp())),
            "webhook-signature": self.sign(event.id, now, body),
        }
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            response = await self._http.post(
                self.url, content=body.encode(), headers=headers, timeout=self._timeout
            )
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}: {response.text[:_ERROR_CHARS]}"
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {str(exc)[:_ERROR_CHARS]}"
        return DeliveryAttempt(
            event_id=event.id,
            attempt=attempt,
            at=now,
            url=self.url,
            status_code=status_code,
            duration_ms=round((time.perf_counter() - started) * 1000),
            error=error,
        )
