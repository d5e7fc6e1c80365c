"""Events delivered to a real HTTP receiver on loopback that verifies every
signature with the `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import UTC, datetime

import pytest
import uvicorn
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.sandbox.config import new_webhook_secret
from tests.api.helpers import refund, register
from tests.e2e.test_chaos import free_port

SECRET = new_webhook_secret()
OLD_SECRET = new_webhook_secret()


class Receiver:
    """A store backend: verifies, records, and can be told to fail or be slow."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.received: list[dict] = []
        self.webhook_ids: list[str] = []
        self.failing = False
        self.delay = 0.0
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []
        self.rejected = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/refunds"
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task | None = None

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        webhook_id = request.headers.get("webhook-id", "")
        if webhook_id in self.in_flight:
            self.overlaps.append(webhook_id)
        self.in_flight.add(webhook_id)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.failing:
                return Response("unavailable", 503)
            try:
                payload = self.verifier.verify(body, dict(request.headers))
            except Exception:
                self.rejected += 1
                return Response("bad signature", 400)
            self.received.append(payload)
            self.webhook_ids.append(webhook_id)
            return Response(status_code=204)
        finally:
            self.in_flight.discard(webhook_id)

    async def start(self) -> None:
        app = Starlette(routes=[Route("/hooks/refunds", self.handle, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:  # noqa: ASYNC110 - uvicorn exposes a flag only
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task
            self.server = None


@pytest.fixture
async def receiver():
    r = Receiver(SECRET)
    await r.start()
    yield r
    await r.stop()


def hook_settings(url: str, **extra) -> dict:
    return {
        "url": url,
        "secret": SECRET,
        "backoff_initial_seconds": 1,
        "backoff_max_seconds": 8,
        **extra,
    }


async def real_time_api(make_api, url: str, **extra):
    api = await make_api(store_webhook=hook_settings(url, **extra))
    # Receivers check webhook-timestamp against their own clock.
    api.clock.set(datetime.now(UTC).replace(microsecond=0))
    return api


async def deliver_all(api, rounds: int = 20) -> None:
    for _ in range(rounds):
        if await api.container.deliveries.deliver_due() == 0:
            return


async def test_events_reach_the_store_signed_in_order_with_stable_ids(make_api, receiver):
    api = await real_time_api(make_api, receiver.url)
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    await deliver_all(api)
    assert receiver.rejected == 0
    types = [p["type"] for p in receiver.received]
    assert types == ["refund.created", "refund.approved", "refund.submitted", "refund.pending"]
    assert all(p["refund_id"] == created["id"] for p in receiver.received)
    assert receiver.received[-1]["data"]["status"] == "pending"
    assert receiver.webhook_ids == [p["id"] for p in receiver.received]
    event_id = receiver.webhook_ids[0]
    event = (await api.client.get(f"/v1/events/{event_id}", headers=api.auth("store"))).json()
    assert event["delivery"]["status"] == "delivered" and event["delivery"]["attempts"] == 1
    attempts = (
        await api.client.get(f"/v1/events/{event_id}/deliveries", headers=api.auth("ops"))
    ).json()
    assert len(attempts) == 1
    assert attempts[0]["status_code"] == 204 and attempts[0]["delivered"] is True
    assert attempts[0]["url"] == receiver.url


async def test_a_receiver_down_for_a_while_loses_nothing_and_keeps_each_refunds_order(
    make_api, receiver
):
    api = await real_time_api(make_api, receiver.url)
    payments = [await register(api) for _ in range(3)]
    receiver.failing = True
    refund_ids = []
    for payment in payments:
        for _ in range(2):
            refund_ids.append((await refund(api, payment["id"], 500)).json()["id"])
    await api.settle()
    for _ in range(4):  # a few failed rounds, backing off
        await api.container.deliveries.deliver_due()
        api.clock.advance(seconds=10)
    await receiver.stop()  # then gone entirely: connection refused
    await api.container.deliveries.deliver_due()
    api.clock.advance(seconds=10)
    await api.container.deliveries.deliver_due()
    first_event = (
        await api.client.get(
            "/v1/events", params={"type": "refund.created"}, headers=api.auth("ops")
        )
    ).json()["data"][-1]
    assert first_event["delivery"]["status"] == "pending"
    assert first_event["delivery"]["attempts"] >= 3
    assert first_event["delivery"]["last_error"]
    await receiver.start()
    receiver.failing = False
    for _ in range(30):
        api.clock.advance(seconds=10)
        await api.container.deliveries.deliver_due()
    per_refund = defaultdict(list)
    for payload in receiver.received:
        per_refund[payload["refund_id"]].append(payload["type"])
    assert set(per_refund) == set(refund_ids)
    for types in per_refund.values():
        assert types == ["refund.created", "refund.approved", "refund.submitted", "refund.pending"]
    assert len(receiver.received) == len(set(receiver.webhook_ids)) == 24
    attempts = (
        await api.client.get(f"/v1/events/{first_event['id']}/deliveries", headers=api.auth("ops"))
    ).json()
    assert [a["delivered"] for a in attempts][-1] is True
    assert any(a["status_code"] == 503 for a in attempts)
    assert any(a["status_code"] is None and a["error"] for a in attempts)


async def test_after_the_retry_window_an_event_fails_visibly_and_can_be_redelivered(
    make_api, receiver
):
    api = await real_time_api(make_api, receiver.url, retry_for_hours=0.01)  # 36 s
    payment = await register(api)
    created = (await refund(api, payment["id"], 500)).json()
    receiver.failing = True
    rounds = 0
    while True:
        await api.container.deliveries.deliver_due()
        events = (
            await api.client.get(
                "/v1/events", params={"refund_id": created["id"]}, headers=api.auth("ops")
            )
        ).json()["data"]
        first = events[-1]
        if first["delivery"]["status"] == "failed":
            break
        api.clock.advance(seconds=10)
        rounds += 1
        assert rounds < 10
    assert first["type"] == "refund.created"
    assert rounds >= 3  # retried across the whole window, not given up at once
    assert all(e["delivery"]["attempts"] == 0 for e in events[:-1])
    # A failed event no longer holds back the refund's later events.
    receiver.failing = False
    api.clock.advance(seconds=60)
    await deliver_all(api)
    assert receiver.received[0]["type"] == "refund.approved"
    r = await api.client.post(f"/v1/events/{first['id']}/redeliver", headers=api.auth("ops"))
    assert r.status_code == 200 and r.json()["delivery"]["status"] == "pending"
    r = await api.client.post(f"/v1/events/{first['id']}/redeliver", headers=api.auth("store"))
    assert r.status_code == 403
    await deliver_all(api)
    assert receiver.received[-1]["id"] == first["id"]


async def test_two_workers_delivering_at_once_never_send_an_event_twice_at_the_same_time(
    make_api, receiver
):
    api = await real_time_api(make_api, receiver.url)
    other = await make_api(store_webhook=hook_settings(receiver.url))
    payments = [await register(api) for _ in range(5)]
    for payment in payments:
        for _ in range(2):
            await refund(api, payment["id"], 100)
    await api.settle()
    receiver.delay = 0.02
    for _ in range(8):
        await asyncio.gather(
            api.container.deliveries.deliver_due(), other.container.deliveries.deliver_due()
        )
    assert receiver.overlaps == []
    assert len(receiver.webhook_ids) == len(set(receiver.webhook_ids)) == 40


async def test_during_a_rotation_both_secrets_sign(make_api, receiver):
    api = await real_time_api(make_api, receiver.url, secrets_previous=[OLD_SECRET])
    old_only = Webhook(OLD_SECRET)
    seen: list[bool] = []
    original = receiver.handle

    async def check_old_secret_too(request: Request) -> Response:
        body = await request.body()
        try:
            old_only.verify(body, dict(request.headers))
            seen.append(True)
        except Exception:
            seen.append(False)
        return await original(request)

    receiver.handle = check_old_secret_too  # type: ignore[method-assign]
    await receiver.stop()
    await receiver.start()
    payment = await register(api)
    await refund(api, payment["id"], 100)
    await api.settle()
    await deliver_all(api)
    assert seen and all(seen)
    assert receiver.rejected == 0 and len(receiver.received) == 4
    signature = json.dumps(receiver.received[0])  # received with the new secret too
    assert signature


async def test_without_a_store_webhook_events_are_only_in_the_feed(api):
    payment = await register(api)
    await refund(api, payment["id"], 100)
    await api.settle()
    assert await api.container.deliveries.deliver_due() == 0
    data = (await api.client.get("/v1/events", headers=api.auth("store"))).json()["data"]
    assert data and {e["delivery"]["status"] for e in data} == {"none"}
