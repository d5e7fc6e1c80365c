"""Signed webhook delivery (Standard Webhooks), with a few retries."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from standardwebhooks import Webhook

from app.sandbox.records import new_id, rfc3339, utcnow

log = structlog.get_logger("app.sandbox.webhooks")


def new_event(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event envelope; its id is the `webhook-id` of every delivery of it."""
    return {"id": new_id("evt"), "type": event_type, "created_at": rfc3339(utcnow()), "data": data}


@dataclass(frozen=True, slots=True)
class Delivery:
    event_id: str
    event_type: str
    refund_id: str | None
    attempts: int
    status_code: int | None
    delivered: bool
    dispute_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.event_type,
            "refund_id": self.refund_id,
            "dispute_id": self.dispute_id,
            "attempts": self.attempts,
            "status_code": self.status_code,
            "delivered": self.delivered,
        }


class WebhookSender:
    """POSTs events to one URL. The httpx client is created on first use, so an
    app that never sends a webhook never opens one."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout_seconds: float,
        max_attempts: int,
        backoff_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._signer = Webhook(secret)
        self._timeout = timeout_seconds
        self._max_attempts = max_attempts
        self._backoff = backoff_seconds
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, timeout=self._timeout)
        return self._client

    def signed_headers(self, event_id: str, body: str) -> dict[str, str]:
        # Signed anew at each attempt: receivers check that the timestamp is recent.
        now = utcnow()
        return {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(msg_id=event_id, timestamp=now, data=body),
        }

    async def deliver(self, event: dict[str, Any]) -> Delivery:
        body = json.dumps(event, separators=(",", ":"))
        data = event.get("data")
        subject = data.get("id") if isinstance(data, dict) else None
        is_dispute = str(event.get("type", "")).startswith("dispute.")
        refund_id, dispute_id = (None, subject) if is_dispute else (subject, None)
        status_code: int | None = None
        attempt = 0
        for attempt in range(1, self._max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 2))
            try:
                response = await self._http().post(
                    self._url, content=body, headers=self.signed_headers(event["id"], body)
                )
            except httpx.HTTPError as exc:
                status_code = None
                log.warning(
                    "sandbox.webhook.error",
                    event_id=event["id"],
                    attempt=attempt,
                    error=type(exc).__name__,
                )
                continue
            status_code = response.status_code
            if response.is_success:
                return Delivery(
                    event["id"], event["type"], refund_id, attempt, status_code, True, dispute_id
                )
            log.warning(
                "sandbox.webhook.rejected",
                event_id=event["id"],
                attempt=attempt,
                status_code=status_code,
            )
        log.error("sandbox.webhook.gave_up", event_id=event["id"], attempts=attempt)
        return Delivery(
            event["id"], event["type"], refund_id, attempt, status_code, False, dispute_id
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
