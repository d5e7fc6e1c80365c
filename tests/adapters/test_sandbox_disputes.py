"""SandboxGateway: the sandbox's `dispute.*` webhooks, raised through its control API
and received in-process, translated into DisputeReport."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.adapters.pse.base import PseAccount
from app.adapters.pse.sandbox import SandboxGateway
from app.domain.disputes import DisputeStatus
from app.domain.money import Money
from app.domain.pse import InvalidWebhookPayload, InvalidWebhookSignature
from app.sandbox import SandboxConfig, new_webhook_secret
from tests.sandbox import harness
from tests.sandbox.harness import (
    API_KEY,
    BASE_URL,
    WebhookReceiver,
    settle,
    sign_webhook,
)

receiver = harness.receiver
config = harness.config
sandbox = harness.sandbox
client = harness.client


@pytest.fixture
def gateway(config: SandboxConfig, client: httpx.AsyncClient) -> SandboxGateway:
    account = PseAccount(
        name="sandbox",
        provider="sandbox",
        api_key=API_KEY,
        base_url=BASE_URL,
        webhook_secrets=(config.webhook_secret,),
    )
    return SandboxGateway(account, client)


async def raise_dispute(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/_control/disputes", json={"payment_id": "pay_1", **body})
    assert response.is_success, response.text
    answer: dict[str, Any] = response.json()
    return answer


def now() -> datetime:
    return datetime.now(UTC)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
async def payment(client: httpx.AsyncClient) -> None:
    body = {"id": "pay_1", "amount": 5000, "currency": "JPY"}
    assert (await client.post("/v1/payments", json=body)).status_code == 201


async def test_a_sandbox_dispute_webhook_becomes_a_dispute_report(
    gateway: SandboxGateway, client: httpx.AsyncClient, receiver: WebhookReceiver, payment: None
) -> None:
    answer = await raise_dispute(client, status="open", amount=4000, reason="fraudulent")

    (webhook,) = await receiver.wait_for(1)
    event = gateway.parse_webhook(webhook.headers, webhook.body, now())

    assert event.event_type == "dispute.opened"
    assert event.event_id == webhook.headers["webhook-id"]
    assert event.refund is None
    report = event.dispute
    assert report is not None
    assert report.pse_dispute_id == answer["id"]
    assert report.status is DisputeStatus.OPEN
    assert report.amount == Money(4000, "JPY")
    assert report.reason == "fraudulent"
    assert report.pse_payment_ids == ("pay_1",)
    assert report.opened_at == moment(answer["created_at"])
    assert report.evidence_due_by == moment(answer["evidence_due_by"])
    assert report.evidence_due_by == report.opened_at + timedelta(days=7)


async def test_every_status_the_sandbox_sends_reaches_the_report(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    sandbox: FastAPI,
    receiver: WebhookReceiver,
    payment: None,
) -> None:
    dispute_id = (await raise_dispute(client, status="open"))["id"]
    for status in ("open", "lost", "won", "closed"):
        await raise_dispute(client, dispute_id=dispute_id, status=status)
    await settle(sandbox)

    events = [gateway.parse_webhook(w.headers, w.body, now()) for w in receiver.accepted]

    assert [(e.event_type, e.dispute.status) for e in events] == [
        ("dispute.opened", DisputeStatus.OPEN),
        ("dispute.updated", DisputeStatus.OPEN),
        ("dispute.closed", DisputeStatus.LOST),
        ("dispute.closed", DisputeStatus.WON),
        ("dispute.closed", DisputeStatus.CLOSED),
    ]
    assert {e.dispute.pse_dispute_id for e in events} == {dispute_id}
    # A dispute for the whole payment when no amount is given.
    assert {e.dispute.amount for e in events} == {Money(5000, "JPY")}


async def test_a_dispute_webhook_signed_with_another_secret_is_refused(
    gateway: SandboxGateway, client: httpx.AsyncClient, receiver: WebhookReceiver, payment: None
) -> None:
    await raise_dispute(client, status="lost")
    (webhook,) = await receiver.wait_for(1)
    forged = sign_webhook(new_webhook_secret(), webhook.headers["webhook-id"], now(), webhook.body)

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(forged, webhook.body, now())
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(webhook.headers, webhook.body.replace(b'"lost"', b'"won"'), now())
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook({}, webhook.body, now())


def _dispute(**overrides: Any) -> dict[str, Any]:
    dispute: dict[str, Any] = {
        "id": "sbdp_0193c1d2e3f4",
        "object": "dispute",
        "payment_id": "pay_1",
        "amount": 5000,
        "currency": "JPY",
        "reason": None,
        "status": "open",
        "evidence_due_by": "2026-12-04T08:00:00Z",
        "created_at": "2026-11-27T08:00:00Z",
        "updated_at": "2026-11-27T08:00:00Z",
        "closed_at": None,
    }
    dispute.update(overrides)
    return dispute


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param({"id": "sbre_1", "object": "refund"}, "not a sandbox dispute", id="refund"),
        pytest.param(_dispute(id=None), "no id", id="no-id"),
        pytest.param(_dispute(status="pending"), "pending", id="unknown-status"),
        pytest.param(_dispute(amount=None), "amount", id="no-amount"),
        pytest.param(_dispute(currency="XXX"), "amount", id="bad-currency"),
        pytest.param(_dispute(payment_id=None), "no payment", id="no-payment"),
        pytest.param(_dispute(evidence_due_by="next week"), "evidence_due_by", id="bad-time"),
    ],
)
def test_a_signed_dispute_event_without_a_readable_dispute_is_an_invalid_payload(
    gateway: SandboxGateway, config: SandboxConfig, data: dict[str, Any], reason: str
) -> None:
    body = json.dumps({"id": "evt_1", "type": "dispute.updated", "data": data}).encode()
    headers = sign_webhook(config.webhook_secret, "evt_1", now(), body)

    with pytest.raises(InvalidWebhookPayload, match="readable dispute") as raised:
        gateway.parse_webhook(headers, body, now())

    assert reason in str(raised.value)
