"""Races on real PostgreSQL: the payment lock and the idempotency claim."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from sqlalchemy import func, select

from app.adapters.db import tables as t
from tests.api.helpers import get_payment, refund, register


async def test_thirty_concurrent_refunds_never_exceed_the_payment(api):
    payment = await register(api, amount=10000)
    results = await asyncio.gather(*(refund(api, payment["id"], 1000) for _ in range(30)))
    statuses = Counter(r.status_code for r in results)
    assert statuses == {201: 10, 422: 20}
    refused = [r.json()["code"] for r in results if r.status_code == 422]
    assert set(refused) == {"amount_exceeds_refundable"}
    await api.settle()
    after = await get_payment(api, payment["id"])
    assert after["reserved_amount"] + after["refunded_amount"] == 10000
    assert after["refundable_amount"] == 0
    async with api.container.engine.connect() as conn:
        total = (
            await conn.execute(
                select(func.sum(t.refunds.c.amount)).where(t.refunds.c.payment_id == payment["id"])
            )
        ).scalar_one()
    assert total == 10000


async def test_ten_concurrent_requests_with_one_key_create_one_refund(api):
    payment = await register(api, amount=10000)
    results = await asyncio.gather(
        *(refund(api, payment["id"], 1000, key="one-key") for _ in range(10))
    )
    created_ids = {r.json()["id"] for r in results if r.status_code == 201}
    assert len(created_ids) == 1
    for r in results:
        assert r.status_code in (201, 409), r.text
        if r.status_code == 409:
            assert r.json()["code"] == "idempotency_key_in_use"
    async with api.container.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(t.refunds))).scalar_one()
    assert count == 1
    # Once the first has finished, a retry replays it.
    again = await refund(api, payment["id"], 1000, key="one-key")
    assert again.status_code == 201 and again.json()["id"] in created_ids


async def test_concurrent_registrations_of_one_payment_make_one_payment(api):
    body = {
        "pse_account": "fake_jp",
        "pse_payment_id": "pay_race",
        "amount": 5000,
        "currency": "JPY",
        "captured_at": "2026-11-01T10:00:00Z",
    }
    results = await asyncio.gather(
        *(api.client.post("/v1/payments", json=body, headers=api.auth("store")) for _ in range(8))
    )
    assert {r.status_code for r in results} <= {200, 201}
    assert len({r.json()["id"] for r in results}) == 1
    assert [r.status_code for r in results].count(201) == 1


async def test_the_same_webhook_delivered_concurrently_is_applied_once(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    body = json.dumps(
        {
            "id": "evt_same",
            "type": "refund.succeeded",
            "refund": {"id": "fre_1", "state": "succeeded"},
        }
    ).encode()
    results = await asyncio.gather(
        *(
            api.client.post(
                "/v1/webhooks/fake_jp", content=body, headers={"x-fake-signature": "ok"}
            )
            for _ in range(6)
        )
    )
    assert all(r.status_code == 200 for r in results)
    assert [r.json()["duplicate"] for r in results].count(False) == 1
    after = await get_payment(api, payment["id"])
    assert after["refunded_amount"] == 3000
    async with api.container.engine.connect() as conn:
        succeeded = (
            await conn.execute(
                select(func.count())
                .select_from(t.refund_status_history)
                .where(
                    t.refund_status_history.c.refund_id == created["id"],
                    t.refund_status_history.c.status == "succeeded",
                )
            )
        ).scalar_one()
    assert succeeded == 1
