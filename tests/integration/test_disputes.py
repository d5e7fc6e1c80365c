"""Disputes reported by PSEs, through the dispute service and the webhook
path: found by any of the PSE's payment ids, stored raw once, applied in
the transaction that stores them, and delivered to the store in order."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from app.adapters.db.uow import PgUnitOfWork
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.records import WebhookStatus
from tests.api.helpers import get_payment, get_refund, refund, register
from tests.api.test_disputes_api import held_back
from tests.integration.test_store_webhooks import deliver_all, real_time_api, receiver

pytestmark = pytest.mark.postgres

__all__ = ["receiver"]  # the fixture, used below

SIGNED = {"x-fake-signature": "ok", "content-type": "application/json"}


def report(
    status: DisputeStatus = DisputeStatus.OPEN, *payment_ids: str, pse_id: str = "dp_1", **fields
):
    return DisputeReport(pse_id, status, pse_payment_ids=payment_ids, **fields)


def dispute_event(event_id: str, pse_payment_id: str, status: str = "open", **fields) -> bytes:
    dispute = {"id": "dp_1", "status": status, "payment": [pse_payment_id], **fields}
    return json.dumps({"id": event_id, "type": f"dispute.{status}", "dispute": dispute}).encode()


async def count(api, table: str) -> int:
    async with api.container.pool.acquire() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def stored_webhooks(api) -> list[dict]:
    async with api.container.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch("SELECT * FROM pse_webhook_events ORDER BY id")]


# -- the service -----------------------------------------------------------------


async def test_a_pse_dispute_finds_its_payment_by_any_of_the_pse_ids(api):
    queue = held_back(api)
    payment = await register(api, pse_payment_id="ch_1")
    created = (await refund(api, payment["id"], 3000)).json()
    due = datetime(2026, 12, 10, tzinfo=UTC)
    change = await api.container.disputes.apply_pse(
        "fake_jp",
        report(DisputeStatus.OPEN, "pi_unknown", "ch_1", evidence_due_by=due, reason="fraudulent"),
    )
    assert change is not None and change.created and change.opened
    assert (change.dispute.source, change.dispute.payment_id) == ("pse", payment["id"])
    assert change.dispute.amount == Money(50000, "JPY")  # the payment's, when not said
    assert [r.id for r in change.changed_refunds] == [created["id"]]
    held = await get_refund(api, created["id"])
    assert (held["status"], held["hold"]) == ("pending_approval", "payment_disputed")

    closed = await api.container.disputes.apply_pse("fake_jp", report(DisputeStatus.WON, "ch_1"))
    assert closed is not None and closed.closed and not closed.created
    assert (await get_refund(api, created["id"]))["status"] == "approved"
    assert queue.ids == [created["id"], created["id"]]
    # Once the webhook's transaction committed, in the audit trail.
    await api.container.audit.flush()
    async with api.container.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT body, actor FROM audit_log WHERE kind = 'dispute.reported' ORDER BY seq"
        )
    moves = [
        (json.loads(r["body"])["data"]["from"], json.loads(r["body"])["data"]["to"]) for r in rows
    ]
    assert moves == [(None, "open"), ("open", "won")]
    assert {r["actor"] for r in rows} == {"pse:fake_jp webhook"}


async def test_a_pse_dispute_of_a_payment_not_registered_here_records_nothing(api):
    await register(api, pse_payment_id="ch_known")
    assert (
        await api.container.disputes.apply_pse("fake_jp", report(DisputeStatus.OPEN, "ch_x"))
        is None
    )
    # Of another account: not ours either.
    assert (
        await api.container.disputes.apply_pse("other", report(DisputeStatus.OPEN, "ch_known"))
        is None
    )
    assert await count(api, "disputes") == 0 and await count(api, "events") == 0


async def test_concurrent_refund_requests_and_a_dispute_never_leave_a_refund_approved(api):
    held_back(api)
    for round_ in range(6):
        payment = await register(api, pse_payment_id=f"ch_race_{round_}")

        async def open_dispute(pse_payment_id: str = payment["pse_payment_id"]):
            return await api.container.disputes.apply_pse(
                "fake_jp", report(DisputeStatus.OPEN, pse_payment_id, pse_id=pse_payment_id)
            )

        answers = await asyncio.gather(
            refund(api, payment["id"], 1000), open_dispute(), refund(api, payment["id"], 1000)
        )
        created = [r.json()["id"] for r in (answers[0], answers[2]) if r.status_code == 201]
        refused = [r for r in (answers[0], answers[2]) if r.status_code == 409]
        assert len(created) + len(refused) == 2
        assert all(r.json()["code"] == "payment_disputed" for r in refused)
        for refund_id in created:
            now = await get_refund(api, refund_id)
            assert (now["status"], now["hold"]) == ("pending_approval", "payment_disputed")
        paid = await get_payment(api, payment["id"])
        assert paid["reserved_amount"] == 1000 * len(created) and paid["open_disputes"] == 1


# -- the webhook path ----------------------------------------------------------------


async def test_a_dispute_webhook_is_stored_once_and_applied_to_the_payment(api):
    payment = await register(api, pse_payment_id="ch_hook")
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=dispute_event("evt_d1", "ch_hook", amount=20000, currency="JPY"),
        headers=SIGNED,
    )
    assert r.status_code == 200 and r.json()["status"] == "applied"
    again = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=dispute_event("evt_d1", "ch_hook", amount=20000, currency="JPY"),
        headers=SIGNED,
    )
    assert again.json()["duplicate"] is True
    paid = await get_payment(api, payment["id"])
    assert paid["open_disputes"] == 1
    lost = await api.client.post(
        "/v1/webhooks/fake_jp", content=dispute_event("evt_d2", "ch_hook", "lost"), headers=SIGNED
    )
    assert lost.json()["status"] == "applied"
    paid = await get_payment(api, payment["id"])
    assert (paid["open_disputes"], paid["disputed_amount"]) == (0, 20000)
    listed = await api.client.get(f"/v1/payments/{payment['id']}/disputes", headers=api.auth("ops"))
    [dispute] = listed.json()["data"]
    assert (dispute["source"], dispute["status"], dispute["counted_amount"]) == (
        "pse",
        "lost",
        20000,
    )
    hooks = await stored_webhooks(api)
    assert [(h["event_id"], h["status"]) for h in hooks] == [
        ("evt_d1", "applied"),
        ("evt_d2", "applied"),
    ]
    assert hooks[0]["refund"]["dispute"]["pse_dispute_id"] == "dp_1"


async def test_dispute_webhooks_of_unknown_payments_are_ignored_and_misfits_mismatched(api):
    await register(api, pse_payment_id="ch_jpy", amount=5000)
    unknown = await api.client.post(
        "/v1/webhooks/fake_jp", content=dispute_event("evt_u", "ch_nobody"), headers=SIGNED
    )
    misfit = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=dispute_event("evt_m", "ch_jpy", amount=100, currency="USD"),
        headers=SIGNED,
    )
    assert (unknown.json()["status"], misfit.json()["status"]) == ("ignored", "mismatched")
    assert await count(api, "disputes") == 0 and await count(api, "events") == 0
    assert [h["status"] for h in await stored_webhooks(api)] == ["ignored", "mismatched"]


async def test_a_dispute_webhook_that_failed_to_apply_is_applied_later_by_the_worker(api):
    payment = await register(api, pse_payment_id="ch_later")
    disputes = api.container.webhooks.disputes
    applying = disputes.apply_pse_in

    async def broken(*_args, **_kwargs):
        raise RuntimeError("the database hiccuped")

    disputes.apply_pse_in = broken
    try:
        r = await api.client.post(
            "/v1/webhooks/fake_jp", content=dispute_event("evt_l", "ch_later"), headers=SIGNED
        )
    finally:
        disputes.apply_pse_in = applying
    assert r.status_code == 200 and r.json()["status"] == "received"
    assert (await get_payment(api, payment["id"]))["open_disputes"] == 0
    api.clock.advance(minutes=1)
    async with PgUnitOfWork(api.container.pool) as uow:
        stuck = await uow.webhooks.stuck(api.clock.now(), 10)
    assert [s.event_id for s in stuck] == ["evt_l"]
    assert await api.container.webhooks.apply(stuck[0]) is WebhookStatus.APPLIED
    assert (await get_payment(api, payment["id"]))["open_disputes"] == 1


# -- delivery to the store -----------------------------------------------------------


async def test_a_payments_dispute_events_reach_the_store_in_order(make_api, receiver):
    api = await real_time_api(make_api, receiver.url)
    payment = await register(api, pse_payment_id="ch_store")
    disputes = api.container.disputes
    await disputes.apply_pse("fake_jp", report(DisputeStatus.OPEN, "ch_store"))
    api.clock.advance(seconds=1)
    await disputes.apply_pse("fake_jp", report(DisputeStatus.LOST, "ch_store"))
    api.clock.advance(seconds=1)
    await disputes.apply_pse("fake_jp", report(DisputeStatus.WON, "ch_store"))
    await deliver_all(api)
    assert receiver.rejected == 0
    received = [(p["type"], p["data"].get("outcome")) for p in receiver.received]
    assert received == [
        ("payment.dispute_opened", None),
        ("payment.dispute_closed", "lost"),
        ("payment.dispute_closed", "won"),
    ]
    assert all(
        p["payment_id"] == payment["id"] and p["refund_id"] is None for p in receiver.received
    )
    assert receiver.received[-1]["data"]["reinstated"] is True
    assert receiver.received[1]["data"]["payment"]["disputed_amount"] == 50000
    assert api.clock.now() - timedelta(seconds=2) <= datetime.fromisoformat(
        receiver.received[-1]["created_at"].replace("Z", "+00:00")
    )
