"""Races on real PostgreSQL: the payment lock and the idempotency claim."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from app.adapters.db.uow import PgUnitOfWork
from tests.api.helpers import assert_problem, get_payment, get_refund, refund, register


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
    async with api.container.pool.acquire() as conn:
        total = await conn.fetchval(
            "SELECT sum(amount) FROM refunds WHERE payment_id = $1", payment["id"]
        )
    assert total == 10000


async def test_concurrent_refunds_of_many_payments_never_exceed_the_daily_auto_approval_limit(
    make_api,
):
    # No payment lock is shared: the day's total is what they contend on.
    api = await make_api(policy={"daily_auto_approve_limit": {"JPY": 5000}})
    payments = [await register(api) for _ in range(16)]
    results = await asyncio.gather(*(refund(api, p["id"], 1000) for p in payments))
    assert [r.status_code for r in results] == [201] * 16, [r.text for r in results]
    statuses = Counter(r.json()["status"] for r in results)
    assert statuses == {"submitting": 5, "pending_approval": 11}
    async with api.container.pool.acquire() as conn:
        total = await conn.fetchval(
            "SELECT amount FROM auto_approval_totals WHERE currency = 'JPY'"
        )
    assert total == 5000


async def test_ten_concurrent_requests_with_one_key_create_one_refund(api):
    payment = await register(api, amount=10000)
    results = await asyncio.gather(
        *(refund(api, payment["id"], 1000, key="one-key") for _ in range(10))
    )
    # The claim commits with the refund: the others wait for it and replay it.
    assert [r.status_code for r in results] == [201] * 10, [r.text for r in results]
    assert len({r.content for r in results}) == 1
    replayed = [r.headers.get("idempotent-replayed") for r in results]
    assert replayed.count("true") == 9 and replayed.count(None) == 1
    async with api.container.pool.acquire() as conn:
        count = await conn.fetchval("SELECT count(*) FROM refunds")
    assert count == 1
    after = await get_payment(api, payment["id"])
    assert after["reserved_amount"] + after["refunded_amount"] == 1000


async def test_a_creation_that_fails_leaves_no_claim_and_a_retry_creates_the_refund(
    api, monkeypatch
):
    payment = await register(api, amount=10000)

    class Broken(Exception):
        pass

    async def broken_save(_self, *_args, **_kwargs):
        raise Broken("the database went away")

    with monkeypatch.context() as patched:
        patched.setattr(PgUnitOfWork, "save_refund", broken_save)
        failed = await refund(api, payment["id"], 1000, key="retry-me")
    assert_problem(failed, 500, "internal_error")
    async with api.container.pool.acquire() as conn:
        keys = await conn.fetchval("SELECT count(*) FROM idempotency_keys")
    assert keys == 0
    retried = await refund(api, payment["id"], 1000, key="retry-me")
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert (await get_payment(api, payment["id"]))["reserved_amount"] + (
        await get_payment(api, payment["id"])
    )["refunded_amount"] == 1000


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
    async with api.container.pool.acquire() as conn:
        succeeded = await conn.fetchval(
            "SELECT count(*) FROM refund_status_history WHERE refund_id = $1 AND status = $2",
            created["id"],
            "succeeded",
        )
    assert succeeded == 1


async def test_two_approvals_given_at_once_both_count(api):
    payment = await register(api, amount=2000000)
    created = (await refund(api, payment["id"], 200000)).json()
    assert created["status"] == "pending_approval"
    assert sorted(created["required_approvals"]) == [1, 2]

    async def approve(who: str):
        return await api.client.post(
            f"/v1/refunds/{created['id']}/approve", json={"note": who}, headers=api.auth(who)
        )

    for _ in range(5):  # each round races two approvers on a fresh refund
        results = await asyncio.gather(approve("approver2"), approve("approver3"))
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        await api.settle()
        after = await get_refund(api, created["id"])
        assert len(after["approvals"]) == 2
        assert after["status"] in ("approved", "submitting", "pending"), after["status"]
        created = (await refund(api, payment["id"], 200000)).json()
