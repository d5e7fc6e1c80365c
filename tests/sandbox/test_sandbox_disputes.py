"""The sandbox's `POST /_control/disputes`: raise and move chargebacks, with signed webhooks."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from standardwebhooks import Webhook

from app.sandbox import SandboxConfig
from tests.sandbox.harness import (
    AUTH,
    BASE_URL,
    WebhookReceiver,
    make_config,
    running_sandbox,
    sandbox_state,
    settle,
)


async def register_payment(client: httpx.AsyncClient, **fields: Any) -> None:
    body = {"id": "pay_1", "amount": 1000, "currency": "JPY", **fields}
    response = await client.post("/v1/payments", json=body)
    assert response.status_code == 201, response.text


async def dispute(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/_control/disputes", json={"payment_id": "pay_1", **body})


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --------------------------------------------------------------------------
# Raising a dispute
# --------------------------------------------------------------------------


async def test_a_dispute_is_recorded_and_sent_as_a_signed_dispute_opened_webhook(
    client: httpx.AsyncClient, receiver: WebhookReceiver, config: SandboxConfig
) -> None:
    await register_payment(client)

    response = await dispute(client, status="open", reason="fraudulent")

    assert response.status_code == 201
    answer = response.json()
    assert answer["id"].startswith("sbdp_")
    assert answer["object"] == "dispute"
    assert (answer["payment_id"], answer["amount"], answer["currency"]) == ("pay_1", 1000, "JPY")
    assert (answer["status"], answer["reason"], answer["closed_at"]) == ("open", "fraudulent", None)
    opened = parse_time(answer["created_at"])
    assert parse_time(answer["evidence_due_by"]) == opened + timedelta(days=7)

    (webhook,) = await receiver.wait_for(1)
    Webhook(config.webhook_secret).verify(webhook.body, webhook.headers)
    assert webhook.headers["webhook-id"] == webhook.event["id"]
    assert webhook.event["type"] == "dispute.opened"
    assert webhook.event["data"] == answer


async def test_a_dispute_may_be_for_part_of_the_payment(
    client: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await register_payment(client)

    answer = (await dispute(client, status="open", amount=400)).json()

    assert answer["amount"] == 400
    assert (await receiver.wait_for(1))[0].event["data"]["amount"] == 400


@pytest.mark.parametrize("status", ["won", "lost", "closed"])
async def test_a_dispute_raised_already_decided_sends_one_dispute_closed(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver, status: str
) -> None:
    await register_payment(client)

    answer = (await dispute(client, status=status)).json()
    await settle(sandbox)

    assert answer["status"] == status and answer["closed_at"] is not None
    assert receiver.types() == ["dispute.closed"]
    assert receiver.accepted[0].event["data"]["status"] == status


# --------------------------------------------------------------------------
# Moving a dispute
# --------------------------------------------------------------------------


async def test_a_dispute_moves_through_its_lifecycle_with_one_webhook_per_move(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await register_payment(client)
    dispute_id = (await dispute(client, status="open")).json()["id"]

    updated = await dispute(
        client, dispute_id=dispute_id, status="open", amount=800, reason="product_not_received"
    )
    lost = await dispute(client, dispute_id=dispute_id, status="lost")
    won = await dispute(client, dispute_id=dispute_id, status="won")
    await settle(sandbox)

    assert [r.status_code for r in (updated, lost, won)] == [200, 200, 200]
    assert updated.json()["amount"] == 800
    assert updated.json()["reason"] == "product_not_received"
    assert lost.json()["status"] == "lost" and lost.json()["closed_at"] is not None
    assert won.json()["closed_at"] == lost.json()["closed_at"]
    assert receiver.types() == [
        "dispute.opened",
        "dispute.updated",
        "dispute.closed",
        "dispute.closed",
    ]
    assert [w.event["data"]["status"] for w in receiver.accepted] == ["open", "open", "lost", "won"]
    assert {w.event["data"]["id"] for w in receiver.accepted} == {dispute_id}
    assert len({w.event["id"] for w in receiver.accepted}) == 4


async def test_a_final_dispute_may_be_moved_back_to_open_like_a_misbehaving_pse(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    # Keeping final statuses final is the receiver's job: the sandbox lets tests try it.
    await register_payment(client)
    dispute_id = (await dispute(client, status="won")).json()["id"]

    reopened = (await dispute(client, dispute_id=dispute_id, status="open")).json()
    await settle(sandbox)

    assert (reopened["status"], reopened["closed_at"]) == ("open", None)
    assert receiver.types() == ["dispute.closed", "dispute.updated"]


async def test_a_moved_dispute_keeps_its_amount_and_reason_unless_told(
    client: httpx.AsyncClient,
) -> None:
    await register_payment(client)
    first = (await dispute(client, status="open", amount=600, reason="fraudulent")).json()

    moved = (await dispute(client, dispute_id=first["id"], status="closed")).json()

    assert (moved["amount"], moved["reason"], moved["created_at"]) == (
        600,
        "fraudulent",
        first["created_at"],
    )


async def test_a_disputes_events_arrive_in_order_even_when_the_first_needs_retries(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await register_payment(client)
    receiver.refusals["dispute.opened"] = 2
    dispute_id = (await dispute(client, status="open")).json()["id"]

    await dispute(client, dispute_id=dispute_id, status="lost")
    await settle(sandbox)

    assert receiver.types() == ["dispute.opened", "dispute.closed"]


# --------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status_code", "code"),
    [
        pytest.param({"payment_id": "pay_unknown", "status": "open"}, 404, "not_found", id="pay"),
        pytest.param({"status": "pending"}, 400, "invalid_request", id="unknown-status"),
        pytest.param({}, 400, "invalid_request", id="no-status"),
        pytest.param({"status": "open", "amount": 1001}, 400, "amount_too_large", id="too-much"),
        pytest.param({"status": "open", "amount": 0}, 400, "invalid_amount", id="zero"),
        pytest.param({"status": "open", "amount": "10"}, 400, "invalid_amount", id="text"),
        pytest.param({"status": "open", "fee": 1}, 400, "invalid_request", id="unknown-field"),
        pytest.param(
            {"status": "open", "dispute_id": "sbdp_unknown"}, 404, "not_found", id="dispute"
        ),
    ],
)
async def test_a_dispute_the_sandbox_cannot_raise_is_refused_and_sends_nothing(
    client: httpx.AsyncClient,
    sandbox: FastAPI,
    receiver: WebhookReceiver,
    body: dict[str, Any],
    status_code: int,
    code: str,
) -> None:
    await register_payment(client)

    response = await dispute(client, **body)
    await settle(sandbox)

    assert response.status_code == status_code, response.text
    assert error_code(response) == code
    assert sandbox_state(sandbox).disputes == {}
    assert receiver.attempts == []


async def test_a_dispute_cannot_be_moved_through_another_payment(
    client: httpx.AsyncClient,
) -> None:
    await register_payment(client)
    await register_payment(client, id="pay_2")
    dispute_id = (await dispute(client, status="open")).json()["id"]

    response = await dispute(client, payment_id="pay_2", dispute_id=dispute_id, status="lost")

    assert response.status_code == 400
    assert error_code(response) == "invalid_request"


async def test_a_payment_known_only_from_a_refund_needs_an_amount(
    client: httpx.AsyncClient,
) -> None:
    refund = {
        "payment_id": "pay_1",
        "amount": 300,
        "currency": "JPY",
        "reference": "re_1",
    }
    assert (
        await client.post("/v1/refunds", json=refund, headers={"Idempotency-Key": "k-1"})
    ).status_code == 200

    without = await dispute(client, status="open")
    with_amount = await dispute(client, status="open", amount=300)

    assert (without.status_code, error_code(without)) == (400, "invalid_amount")
    assert with_amount.status_code == 201


async def test_the_dispute_control_answers_loopback_clients_only(sandbox: FastAPI) -> None:
    transport = httpx.ASGITransport(app=sandbox, client=("203.0.113.9", 4711))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as remote:
        for method, path in [("POST", "/_control/disputes"), ("GET", "/_control/disputes")]:
            response = await remote.request(
                method, path, json={"payment_id": "pay_1", "status": "open"}
            )
            assert response.status_code == 403, (method, path)


# --------------------------------------------------------------------------
# Listing, stats, reset, faults
# --------------------------------------------------------------------------


async def test_disputes_are_listed_counted_and_their_deliveries_named(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await register_payment(client)
    first = (await dispute(client, status="open")).json()
    second = (await dispute(client, status="lost", amount=100)).json()
    await settle(sandbox)

    listed = (await client.get("/_control/disputes")).json()["data"]
    stats = (await client.get("/_control/stats")).json()
    deliveries = (await client.get("/_control/webhooks")).json()["data"]

    assert [d["id"] for d in listed] == [first["id"], second["id"]]
    assert stats["disputes"] == 2
    assert stats["disputes_by_status"] == {"open": 1, "lost": 1}
    assert stats["webhooks_sent"] == 2
    assert sorted(d["dispute_id"] for d in deliveries) == sorted([first["id"], second["id"]])
    assert all(d["refund_id"] is None for d in deliveries)


async def test_reset_forgets_disputes(client: httpx.AsyncClient, sandbox: FastAPI) -> None:
    await register_payment(client)
    await dispute(client, status="open")

    assert (await client.post("/_control/reset")).status_code == 200

    assert (await client.get("/_control/disputes")).json()["data"] == []
    assert sandbox_state(sandbox).disputes == {}


async def test_dispute_webhooks_suffer_the_webhook_faults_too(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await register_payment(client)
    assert (await client.put("/_control/faults", json={"webhook_drop_rate": 1.0})).is_success

    assert (await dispute(client, status="open")).status_code == 201
    await settle(sandbox)

    assert receiver.attempts == []
    assert (await client.get("/_control/stats")).json()["faults_injected"]["webhook_drop"] == 1


async def test_no_dispute_webhook_is_sent_without_a_webhook_url(
    receiver: WebhookReceiver,
) -> None:
    async with running_sandbox(receiver, make_config(webhook_url=None)) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as c:
            await register_payment(c)
            assert (await dispute(c, status="open")).status_code == 201
            await settle(app)

    assert receiver.attempts == []
