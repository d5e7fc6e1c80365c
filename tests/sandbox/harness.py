"""In-process plumbing for tests that drive the sandbox PSE without a port.

The fixtures at the end (`receiver`, `config`, `sandbox`, `client`) are a
running sandbox and a client signed in to it: the sandbox's tests have them
from their conftest, a test module elsewhere takes them by name
(`client = harness.client`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from standardwebhooks import Webhook

from app.sandbox import Faults, SandboxConfig, SandboxState, create_sandbox_app, new_webhook_secret

API_KEY = "sk_sandbox_test"
BASE_URL = "http://sandbox.test"
WEBHOOK_URL = "http://service.test/v1/webhooks/sandbox"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Far above what the small settle delays need; only reached when something is wrong.
WAIT_SECONDS = 3.0


@dataclass(frozen=True)
class ReceivedWebhook:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class WebhookReceiver:
    """Stands in for the service's webhook endpoint. `answers` are the status codes
    to give, in order, before it accepts everything with 204; `refusals` refuses
    the first n deliveries of an event type with 503."""

    answers: list[int] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    attempts: list[ReceivedWebhook] = field(default_factory=list)
    accepted: list[ReceivedWebhook] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        received = ReceivedWebhook(dict(request.headers), await request.aread())
        self.attempts.append(received)
        event_type = received.event.get("type", "")
        if self.refusals.get(event_type, 0) > 0:
            self.refusals[event_type] -= 1
            status = 503
        else:
            status = self.answers.pop(0) if self.answers else 204
        if 200 <= status < 300:
            self.accepted.append(received)
            async with self._arrived:
                self._arrived.notify_all()
        return httpx.Response(status)

    def types(self) -> list[str]:
        return [w.event["type"] for w in self.accepted]

    async def wait_for(self, count: int) -> list[ReceivedWebhook]:
        """The accepted webhooks once there are `count` of them."""
        try:
            async with asyncio.timeout(WAIT_SECONDS), self._arrived:
                await self._arrived.wait_for(lambda: len(self.accepted) >= count)
        except TimeoutError:
            raise AssertionError(
                f"expected {count} webhooks, got {len(self.accepted)}: {self.types()}"
            ) from None
        return self.accepted


class DeadlineTransport(httpx.AsyncBaseTransport):
    """ASGITransport ignores timeouts; this applies the request's read timeout the
    way a socket would, so a hanging sandbox makes the client time out."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            return await asyncio.wait_for(self._inner.handle_async_request(request), timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("read timed out", request=request) from None


def make_config(**overrides: Any) -> SandboxConfig:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "webhook_url": WEBHOOK_URL,
        "webhook_secret": new_webhook_secret(),
        "settle_delay_seconds": 0.02,
        "seed": 7,
        "webhook_backoff_seconds": 0.001,
    }
    values.update(overrides)
    return SandboxConfig(**values)


@asynccontextmanager
async def running_sandbox(
    receiver: WebhookReceiver, config: SandboxConfig | None = None, faults: Faults | None = None
) -> AsyncIterator[FastAPI]:
    app = create_sandbox_app(
        config or make_config(), faults, webhook_transport=httpx.MockTransport(receiver.handle)
    )
    try:
        yield app
    finally:
        await sandbox_state(app).aclose()


def sandbox_state(app: FastAPI) -> SandboxState:
    state: SandboxState = app.state.sandbox
    return state


async def settle(app: FastAPI) -> None:
    """Wait until every settlement and webhook of the sandbox is done."""
    async with asyncio.timeout(WAIT_SECONDS):
        await sandbox_state(app).wait_idle()


def sign_webhook(secret: str, msg_id: str, sent_at: datetime, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers, signed independently of the code under test."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, sent_at, body.decode()),
    }


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture
def receiver() -> WebhookReceiver:
    return WebhookReceiver()


@pytest.fixture
def config() -> SandboxConfig:
    return make_config()


@pytest.fixture
async def sandbox(receiver: WebhookReceiver, config: SandboxConfig) -> AsyncIterator[FastAPI]:
    async with running_sandbox(receiver, config) as app:
        yield app


@pytest.fixture
async def client(sandbox: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=sandbox)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as c:
        yield c
