"""PostgreSQL's unit of work: prepared asyncpg statements beside SQLAlchemy.

The hot repositories must read and write exactly what the SQLAlchemy ones do,
and both kinds of statement must run in the one transaction."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from app.adapters.db import tables as t
from app.adapters.db.uow import PgUnitOfWork, SqlUnitOfWork
from app.domain.models import RefundStatus
from app.domain.pse import (
    PseRefund,
    PseRefundState,
)
from app.domain.records import IdempotencyRecord, IdempotencyState, OutboxEvent, WebhookStatus
from app.services.views import payment_view, refund_view
from tests.api.helpers import refund, register

AT = datetime(2026, 11, 20, 9, 30, 15, 123456, tzinfo=UTC)


async def _count(engine, table) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


async def test_both_kinds_of_statement_commit_or_roll_back_together(api):
    engine = api.container.engine
    claim = IdempotencyRecord(
        api_key_id="key_x",
        key="k",
        method="POST",
        path="/v1/refunds",
        request_hash="0" * 64,
        state=IdempotencyState.STARTED,
        created_at=AT,
        locked_at=AT,
    )
    event = OutboxEvent(
        id="evt_both", type="refund.x", refund_id=None, payment_id=None, created_at=AT
    )
    for commit in (False, True):
        async with PgUnitOfWork(engine) as uow:
            # A SQLAlchemy statement, then a prepared one, in one transaction.
            await uow.outbox.add([event], deliver=False)
            assert await uow.idempotency.insert_if_absent(claim)
            if commit:
                await uow.commit()
        expected = 1 if commit else 0
        assert await _count(engine, t.events) == expected
        assert await _count(engine, t.idempotency_keys) == expected


async def test_a_refund_reads_back_alike_through_both_implementations(api):
    payment = await register(api, amount=500000)
    created = (
        await refund(api, payment["id"], 200000, note="damaged", metadata={"order": "A-1"})
    ).json()
    for who in ("approver2", "approver3"):
        r = await api.client.post(
            f"/v1/refunds/{created['id']}/approve", json={"note": who}, headers=api.auth(who)
        )
        assert r.status_code == 200, r.text
    await api.settle()
    engine = api.container.engine
    async with SqlUnitOfWork(engine) as plain, PgUnitOfWork(engine) as raw:
        by_orm = await plain.refunds.get(created["id"])
        by_driver = await raw.refunds.get(created["id"])
        locked = await raw.refunds.lock_with_payment(created["id"])
        orm_payment = await plain.payments.get(payment["id"])
        driver_payment = await raw.payments.get(payment["id"])
    assert by_orm is not None and by_driver is not None and locked is not None
    assert len(by_driver.approvals) == 2 and len(by_driver.history) >= 4
    assert by_driver == by_orm
    assert refund_view(by_driver) == refund_view(by_orm)
    assert locked[1] == by_orm
    assert driver_payment == orm_payment == locked[0]
    assert payment_view(driver_payment, AT) == payment_view(orm_payment, AT)
    assert all(change.at.tzinfo is UTC for change in by_driver.history)


async def test_webhook_rows_round_trip_and_are_found_while_waiting(api):
    engine = api.container.engine
    refund_data = {"pse_refund_id": "re_1", "state": "succeeded", "reference": "rf_ref"}
    event = {
        "pse_account": "fake_jp",
        "event_id": "evt_w",
        "event_type": "refund.succeeded",
        "body": "{}",
        "refund": refund_data,
        "received_at": AT,
    }
    async with PgUnitOfWork(engine) as uow:
        first = await uow.webhooks.insert_if_new(**event)
        again = await uow.webhooks.insert_if_new(**event)
        await uow.commit()
    assert first is not None and again is None
    assert first.refund == refund_data and first.status is WebhookStatus.RECEIVED
    async with PgUnitOfWork(engine) as uow:
        by_reference = await uow.webhooks.waiting_for("fake_jp", None, "rf_ref")
        by_pse_id = await uow.webhooks.waiting_for("fake_jp", "re_1", "rf_other")
        elsewhere = await uow.webhooks.waiting_for("other", "re_1", "rf_ref")
        await uow.webhooks.mark(first.id, WebhookStatus.APPLIED, None, AT)
        applied = await uow.webhooks.waiting_for("fake_jp", "re_1", "rf_ref")
    assert [w.id for w in by_reference] == [first.id] == [w.id for w in by_pse_id]
    assert elsewhere == [] and applied == []
    async with SqlUnitOfWork(engine) as plain:
        [orm] = await plain.webhooks.waiting_for("fake_jp", "re_1", "rf_ref")
    assert orm == first


async def _kill_other_backends(engine) -> int:
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        return await raw.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
async def fresh_pool_after(api):
    """The engine is the session's: leave it with no connection these tests killed."""
    yield
    await api.container.engine.dispose()


async def test_units_of_work_recover_when_the_database_dropped_every_connection(
    api, fresh_pool_after
):
    engine = api.container.engine
    # Fill the pool with several idle connections, then have the server drop them.
    uows = [PgUnitOfWork(engine) for _ in range(4)]
    for uow in uows:
        await uow.__aenter__()
    for uow in uows:
        await uow.__aexit__(None, None, None)
    assert await _kill_other_backends(engine) >= 1
    # Each unit of work still runs: a dead connection is replaced at the start.
    payment = await register(api)
    for _ in range(6):
        async with PgUnitOfWork(engine) as uow:
            assert await uow.payments.get(payment["id"]) is not None


async def test_a_connection_dying_during_a_unit_of_work_is_not_reused(api, fresh_pool_after):
    engine = api.container.engine
    payment = await register(api)
    failed = False
    try:
        async with PgUnitOfWork(engine) as uow:
            await uow.payments.get(payment["id"], for_update=True)
            await _kill_other_backends(engine)
            await uow.payments.get(payment["id"])
    except Exception:
        failed = True
    assert failed
    for _ in range(6):
        async with PgUnitOfWork(engine) as uow:
            assert await uow.payments.get(payment["id"]) is not None


async def test_a_refund_saved_in_one_statement_reads_back_with_its_payment_and_events(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    engine = api.container.engine
    events = [
        OutboxEvent(
            id=f"evt_saved_{i}",
            type="refund.succeeded",
            refund_id=created["id"],
            payment_id=payment["id"],
            created_at=AT,
            data={"i": i, "nested": {"list": [1, 2], "text": "é"}},
            detail=None if i % 2 else f"detail {i}",
        )
        for i in range(3)
    ]
    async with PgUnitOfWork(engine) as uow:
        found = await uow.refunds.lock_with_payment(created["id"])
        assert found is not None
        pay, ref = found
        ref.apply_pse(pay, PseRefund(ref.pse_refund_id or "", PseRefundState.SUCCEEDED), AT, "test")
        await uow.save_refund(ref, pay, events, deliver=True)
        await uow.commit()
    async with SqlUnitOfWork(engine) as plain:
        again = await plain.refunds.get(created["id"])
        paid = await plain.payments.get(payment["id"])
        stored = [await plain.outbox.get(e.id) for e in events]
    assert again is not None and paid is not None
    # Every mutable column written, only the new history appended.
    assert refund_view(again) == refund_view(ref) and again.history == ref.history
    assert again.status is RefundStatus.SUCCEEDED and again.updated_at == AT
    assert (paid.refunded_amount, paid.reserved_amount, paid.updated_at) == (3000, 0, AT)
    # The events from arrays: in order, data and detail intact, queued for delivery.
    assert None not in stored
    assert [e.seq for e in stored] == sorted(e.seq for e in stored)
    assert [(e.id, e.data, e.detail, e.refund_id) for e in stored] == [
        (e.id, e.data, e.detail, e.refund_id) for e in events
    ]
    assert all(e.next_delivery_at == AT and e.delivery_status.value == "pending" for e in stored)
    # Nothing moved the payment this time: only the refund and its history change.
    async with PgUnitOfWork(engine) as uow:
        found = await uow.refunds.lock_with_payment(created["id"])
        assert found is not None
        pay, ref = found
        ref.flag("looked at", AT)
        await uow.save_refund(ref, pay, [], deliver=False)
        await uow.commit()
    async with SqlUnitOfWork(engine) as plain:
        last = await plain.refunds.get(created["id"])
        assert last is not None and refund_view(last) == refund_view(ref)
        assert await plain.payments.get(payment["id"]) == paid
