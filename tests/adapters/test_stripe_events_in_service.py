"""Stripe's refund events through the whole service: the real StripeGateway behind
the API, answers shaped like Stripe's (respx), webhooks signed by the official
`stripe` package, on the test PostgreSQL database."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from app.adapters.pse.stripe import StripeGateway
from tests.adapters.test_stripe_gateway import (
    CHARGE,
    REFUND_ID,
    make_account,
    signed,
    stripe_event,
    stripe_refund,
)
from tests.api.helpers import get_payment, get_refund, refund, register


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> StripeGateway:
    """Every account of the test API is this Stripe account (see `make_api`)."""
    return StripeGateway(make_account(), http)


def card_refund(reference: str, status: str, **extra: Any) -> dict[str, Any]:
    return stripe_refund(
        amount=3000,
        currency="jpy",
        charge=CHARGE,
        metadata={"refund_id": reference},
        status=status,
        **extra,
    )


async def post_event(api, event_id: str, refund_object: dict[str, Any]) -> dict[str, Any]:
    # Before API version 2024-10-28 this is the only event a card refund's change raises.
    payload = stripe_event("charge.refund.updated", refund_object, event_id)
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=payload,
        headers={**signed(payload), "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_card_refund_failing_after_it_succeeded_is_recorded_and_flagged(
    api, router: respx.MockRouter
) -> None:
    def create(request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        return httpx.Response(200, json=card_refund(form["metadata[refund_id]"], "pending"))

    router.post("/v1/refunds").mock(side_effect=create)
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    sent = await get_refund(api, created["id"])
    assert (sent["status"], sent["pse_refund_id"]) == ("pending", REFUND_ID)

    settled = await post_event(api, "evt_settled", card_refund(created["id"], "succeeded"))
    assert settled["status"] == "applied"
    assert (await get_refund(api, created["id"]))["status"] == "succeeded"

    # The card account was closed: Stripe puts the money back in the balance.
    failed = await post_event(
        api,
        "evt_failed_later",
        card_refund(created["id"], "failed", failure_reason="expired_or_canceled_card"),
    )
    assert failed == {
        "received": True,
        "event_id": "evt_failed_later",
        "duplicate": False,
        "status": "conflict",
    }
    after = await get_refund(api, created["id"])
    assert after["status"] == "succeeded"
    assert (await get_payment(api, payment["id"]))["refunded_amount"] == 3000
    flags = await api.client.get(
        "/v1/events",
        params={"type": "refund.needs_attention", "refund_id": created["id"]},
        headers=api.auth("ops"),
    )
    assert flags.status_code == 200, flags.text
    (flag,) = flags.json()["data"]
    assert "failed" in flag["detail"] and "succeeded" in flag["detail"]
