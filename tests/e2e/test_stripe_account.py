"""A service configured by a TOML file, on PostgreSQL, with a Stripe account
whose base_url is a Stripe-shaped double: refund, then the signed webhook."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
import stripe

from app.api.app import create_app
from app.bootstrap import build_container
from app.config import load_settings
from tests.fakes import FakeClock

STRIPE_BASE = "http://127.0.0.1:9"
WHSEC = "whsec_stripe_test_secret_for_the_service"
API_KEY = "sk_test_service_e2e_key_000000000000"


@pytest.fixture
def toml_config(tmp_path, postgres_url, monkeypatch, db):
    path = tmp_path / "pse-refunds.toml"
    path.write_text(
        f"""
database_url = "{postgres_url}"

[policy]
refund_window_days = 180

[[policy.approval_tiers]]
currency = "USD"
above = 50000
approvals = 1
min_level = 1

[accounts.stripe_us]
provider = "stripe"
api_key = "env:STRIPE_SECRET_KEY"
webhook_secrets = ["{WHSEC}", "whsec_old_signing_secret_of_the_endpoint"]
base_url = "{STRIPE_BASE}"
timeout_seconds = 2
max_attempts = 3
backoff_initial_seconds = 0.001
backoff_max_seconds = 0.002
"""
    )
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(path))
    monkeypatch.setenv("STRIPE_SECRET_KEY", API_KEY)
    return path


def stripe_refund(amount: int, status: str, reference: str) -> dict:
    return {
        "id": "re_3QJx2aLkdIwHu7ix0kN8s5Ut",
        "object": "refund",
        "amount": amount,
        "balance_transaction": None,
        "charge": "ch_3QJx2aLkdIwHu7ix0f2Ye8Pd",
        "created": 1764230400,
        "currency": "usd",
        "destination_details": None,
        "metadata": {"refund_id": reference, "reason": "requested_by_customer"},
        "payment_intent": "pi_3QJx2aLkdIwHu7ix0c4Gv1Rm",
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }


async def test_a_toml_configured_stripe_account_refunds_and_settles_by_webhook(toml_config, db):
    settings = load_settings()
    assert settings.accounts["stripe_us"].api_key.get_secret_value() == API_KEY
    clock = FakeClock()
    # Stripe's routes, answered inside the PSE client (under the audit of its
    # exchanges, as the service's own transport would be).
    stripe_api = respx.MockRouter(base_url=STRIPE_BASE, assert_all_called=True)
    container = build_container(
        settings, clock=clock, pool=db, pse_transport=httpx.MockTransport(stripe_api.async_handler)
    )
    app = create_app(container)
    _k, store = await container.keys.create("shop", ["store"])
    auth = {"Authorization": f"Bearer {store}"}
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
        stripe_api,
    ):
        payment = (
            await client.post(
                "/v1/payments",
                json={
                    "pse_account": "stripe_us",
                    "pse_payment_id": "pi_3QJx2aLkdIwHu7ix0c4Gv1Rm",
                    "amount": 10000,
                    "currency": "USD",
                    "captured_at": "2026-11-20T10:00:00Z",
                },
                headers=auth,
            )
        ).json()
        sent: list[httpx.Request] = []

        def create(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            form = dict(parse_qsl(request.content.decode()))
            return httpx.Response(
                200, json=stripe_refund(int(form["amount"]), "pending", form["metadata[refund_id]"])
            )

        stripe_api.post("/v1/refunds").mock(side_effect=create)
        r = await client.post(
            "/v1/refunds",
            json={"payment_id": payment["id"], "amount": 2500, "reason": "requested_by_customer"},
            headers={**auth, "Idempotency-Key": "order-1-refund-1"},
        )
        assert r.status_code == 201
        refund_id = r.json()["id"]
        await container.submitter.drain()

        (request,) = sent
        form = dict(parse_qsl(request.content.decode()))
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert request.headers["idempotency-key"] == f"rfnd-{refund_id}"
        assert form["payment_intent"] == "pi_3QJx2aLkdIwHu7ix0c4Gv1Rm"
        assert form["amount"] == "2500"
        assert form["metadata[refund_id]"] == refund_id

        got = (await client.get(f"/v1/refunds/{refund_id}", headers=auth)).json()
        assert got["status"] == "pending"
        assert got["pse_refund_id"] == "re_3QJx2aLkdIwHu7ix0kN8s5Ut"

        payload = json.dumps(
            {
                "id": "evt_1QJx2a",
                "object": "event",
                "api_version": "2024-06-20",
                "created": 1764230500,
                "type": "refund.updated",
                "data": {"object": stripe_refund(2500, "succeeded", refund_id)},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
            }
        )
        now = int(time.time())
        clock.set(clock.now().fromtimestamp(now, tz=clock.now().tzinfo))
        forged = stripe.WebhookSignature.generate_signature_header(payload, "whsec_wrong", now)
        r = await client.post(
            "/v1/webhooks/stripe_us",
            content=payload,
            headers={"Stripe-Signature": forged, "Content-Type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["code"] == "invalid_signature"
        header = stripe.WebhookSignature.generate_signature_header(payload, WHSEC, now)
        r = await client.post(
            "/v1/webhooks/stripe_us",
            content=payload,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )
        assert r.status_code == 200 and r.json()["status"] == "applied"
        got = (await client.get(f"/v1/refunds/{refund_id}", headers=auth)).json()
        assert got["status"] == "succeeded"
        pay = (await client.get(f"/v1/payments/{payment['id']}", headers=auth)).json()
        assert pay["refunded_amount"] == 2500 and pay["refundable_amount"] == 7500
    await container.submitter.aclose()
    await container.http.aclose()
