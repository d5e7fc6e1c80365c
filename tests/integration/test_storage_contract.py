"""The storage contract: every repository method, through the unit of work,
against the real database.

What the services rely on of storage, said once: every field reads back as
written (instants aware UTC), a refund's change is one atomic write with its
payment and events, history and approvals are appended once, locks are
taken payment first, claims and inserts stay single under concurrency, the
audit chain verifies, and a unit of work survives a database that dropped
its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from app.adapters.db.api_keys import CHANNEL
from app.adapters.db.engine import asyncpg_dsn
from app.adapters.db.faults import database_unavailable
from app.adapters.db.uow import PgUnitOfWork, TransactionAborted
from app.domain.audit import GENESIS, AuditEntry, check
from app.domain.console import ConsoleSession
from app.domain.disputes import Dispute, DisputeReport, DisputeStatus, apply_report
from app.domain.models import DISPUTE_HOLD, Payment, Refund, RefundReason, RefundStatus
from app.domain.money import Money
from app.domain.policy import OnDispute, RefundPolicy
from app.domain.ports import AlreadyExists, RefundFilter, WebhookStoredBefore
from app.domain.pse import PseRefundState
from app.domain.reconciliation import RefundSnapshot
from app.domain.records import (
    ApiKey,
    DeliveryAttempt,
    DeliveryStatus,
    DisputeFigures,
    IdempotencyRecord,
    IdempotencyState,
    KeptAnswer,
    OutboxEvent,
    ReceivedWebhook,
    Reconciliation,
    ReconciliationLine,
    Role,
    WaitingFor,
    WebhookOutcome,
    WebhookStatus,
)
from tests.unit.builders import APPROVER_2, APPROVER_3, CONTRACT_TIERS, STORE, payment, seen

# Microseconds and a zone other than UTC: both must come back, as UTC.
AT = datetime(2026, 11, 20, 9, 30, 15, 123456, tzinfo=UTC)
TOKYO_AT = AT.astimezone(timezone(timedelta(hours=9)))
# Fields that live in memory only: what the last operations raised, until saved.
TRANSIENT = {"events", "transitions", "status_changed"}

pytestmark = pytest.mark.postgres


def stored(refund: Refund) -> dict:
    return {f.name: getattr(refund, f.name) for f in fields(Refund) if f.name not in TRANSIENT}


def new_payment(payment_id: str = "pay_1", **overrides) -> Payment:
    built = payment(payment_id=payment_id, **overrides)
    built.pse_payment_id = f"pse_{payment_id}"
    built.created_at = built.updated_at = AT
    return built


def new_refund(pay: Payment, refund_id: str = "rf_1", amount: int = 3000, **policy) -> Refund:
    refund, _ = pay.request_refund(
        refund_id=refund_id,
        amount=Money(amount, pay.currency),
        reason=RefundReason.REQUESTED_BY_CUSTOMER,
        note="taille trop petite — サイズ",
        metadata={"rma": "R-77", "ünïcode": "✓"},
        policy=RefundPolicy(**policy),
        window_days=None,
        now=AT,
        created_by=STORE,
    )
    return refund


def event(event_id: str, refund: Refund | None = None, **overrides) -> OutboxEvent:
    values = {
        "id": event_id,
        "type": "refund.created",
        "refund_id": refund.id if refund else None,
        "payment_id": refund.payment_id if refund else None,
        "created_at": AT,
        "data": {"id": event_id, "nested": {"list": [1, 2], "text": "é"}},
        "detail": None,
    }
    return OutboxEvent(**(values | overrides))


async def scalar(pool, sql: str, *args) -> object:
    async with pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


async def saved(pool, pay: Payment, *refunds: Refund, events=()) -> None:
    """`pay` and new `refunds` of it (the first with `events`), committed."""
    async with PgUnitOfWork(pool) as uow:
        await uow.payments.add(pay, "key_store")
        for i, refund in enumerate(refunds):
            await uow.save_refund(refund, pay, events if i == 0 else [], deliver=False, new=True)
        await uow.commit()


# -- payments -----------------------------------------------------------------


async def test_a_payment_reads_back_field_for_field(db):
    pay = new_payment(settlement_currency="USD", settlement_rate=Decimal("0.006712"))
    pay.captured_at = TOKYO_AT
    async with PgUnitOfWork(db) as uow:
        await uow.payments.add(pay, "key_store")
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        by_id = await uow.payments.get("pay_1")
        locked = await uow.payments.get("pay_1", for_update=True)
        by_pse = await uow.payments.get_by_pse(pay.pse_account, pay.pse_payment_id)
        missing = await uow.payments.get("pay_nope")
    assert by_id == locked == by_pse == pay and missing is None
    assert by_id.settlement_rate == Decimal("0.006712")
    assert by_id.captured_at == TOKYO_AT and by_id.captured_at.tzinfo is UTC


async def test_a_payment_registered_twice_is_refused_as_already_existing(db):
    await saved(db, new_payment("pay_1"))
    twin = new_payment("pay_2")
    twin.pse_payment_id = "pse_pay_1"
    async with PgUnitOfWork(db) as uow:
        with pytest.raises(AlreadyExists):
            await uow.payments.add(twin, None)


async def test_payments_list_newest_first_by_order_and_before_an_id(db):
    for i, order in enumerate(["A", "B", "A"]):
        pay = new_payment(f"pay_{i}")
        pay.order_id = order
        await saved(db, pay)
    async with PgUnitOfWork(db) as uow:
        everything = await uow.payments.list(order_id=None, limit=10, before_id=None)
        of_a = await uow.payments.list(order_id="A", limit=10, before_id=None)
        page = await uow.payments.list(order_id=None, limit=1, before_id="pay_2")
    assert [p.id for p in everything] == ["pay_2", "pay_1", "pay_0"]
    assert [p.id for p in of_a] == ["pay_2", "pay_0"]
    assert [p.id for p in page] == ["pay_1"]


# -- refunds: the one write ---------------------------------------------------


async def test_a_new_refund_reads_back_field_for_field_with_its_payment_and_events(db):
    pay = new_payment()
    refund = new_refund(pay)
    # Every optional column given a value, instants in another zone.
    refund.pse_refund_id, refund.failure_code, refund.failure_message = "re_1", "x", "why"
    refund.settlement_amount, refund.settlement_currency = 20, "USD"
    refund.fx_difference, refund.fee_amount = -1, 3
    refund.offline, refund.offline_reason = True, "konbini"
    refund.offline_reference, refund.offline_paid_at = "BANK-1", TOKYO_AT
    refund.submit_attempts, refund.resolve_attempts = 2, 1
    refund.next_check_at, refund.attention, refund.attention_at = TOKYO_AT, "look", TOKYO_AT
    refund.required_approvals = [1, 2]
    events = [event(f"evt_{i}", refund, detail=f"d{i}" if i % 2 else None) for i in range(3)]
    await saved(db, pay, refund, events=events)
    async with PgUnitOfWork(db) as uow:
        again = await uow.refunds.get("rf_1")
        paid = await uow.payments.get("pay_1")
        stored_events = [await uow.outbox.get(e.id) for e in events]
    assert again is not None and stored(again) == stored(refund)
    assert again.history == refund.history and len(again.history) == 1
    assert all(c.at.tzinfo is UTC for c in again.history)
    assert again.next_check_at == TOKYO_AT and again.next_check_at.tzinfo is UTC
    assert paid is not None and (paid.reserved_amount, paid.updated_at) == (3000, AT)
    assert [(e.id, e.data, e.detail, e.refund_id) for e in stored_events] == [
        (e.id, e.data, e.detail, e.refund_id) for e in events
    ]
    assert [e.seq for e in stored_events] == sorted(e.seq for e in stored_events)
    assert {e.delivery_status for e in stored_events} == {DeliveryStatus.NONE}


async def test_history_and_approvals_are_appended_once_however_often_the_refund_is_saved(db):
    pay = new_payment(amount=500_000)
    refund = new_refund(pay, amount=200_000, approval_tiers=CONTRACT_TIERS)
    assert refund.status is RefundStatus.PENDING_APPROVAL and refund.required_approvals
    await saved(db, pay, refund)
    for approver in (APPROVER_2, APPROVER_3):
        async with PgUnitOfWork(db) as uow:
            pay_now, refund_now = await uow.refunds.lock_with_payment("rf_1")
            refund_now.approve(pay_now, approver, f"ok by {approver.level}", AT)
            await uow.save_refund(refund_now, pay_now, [], deliver=False)
            # Saved again in the same unit of work: nothing new to append.
            await uow.save_refund(refund_now, pay_now, [], deliver=False)
            await uow.commit()
    async with PgUnitOfWork(db) as uow:
        final = await uow.refunds.get("rf_1")
    assert final is not None and final.status is RefundStatus.APPROVED
    assert [a.approver_id for a in final.approvals] == ["key_appr_2", "key_appr_3"]
    assert [a.note for a in final.approvals] == ["ok by 2", "ok by 3"]
    assert [c.status for c in final.history] == ["pending_approval", "approved"]
    assert (final.stored_history, final.stored_approvals) == (2, 2)
    assert await scalar(db, "SELECT count(*) FROM refund_status_history") == 2
    assert await scalar(db, "SELECT count(*) FROM refund_approvals") == 2


async def test_a_refund_saved_after_its_unit_of_work_appends_only_what_is_new(db):
    pay = new_payment()
    refund = new_refund(pay)
    await saved(db, pay, refund)
    # The same objects, saved again in a later unit of work.
    async with PgUnitOfWork(db) as uow:
        await uow.payments.get(pay.id, for_update=True)
        refund.start_submission(pay, AT)
        await uow.save_refund(refund, pay, [], deliver=False)
        await uow.commit()
    assert await scalar(db, "SELECT count(*) FROM refund_status_history") == 2


class _CountingReads:
    """A connection that counts the rows read one at a time through it."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.reads = 0

    async def fetchrow(self, *args, **kwargs):
        self.reads += 1
        return await self.conn.fetchrow(*args, **kwargs)


async def test_a_pair_locked_after_waiting_for_a_writer_reads_what_it_wrote(db):
    """The refund is read in the statement that locks its payment. One that
    waited there for another writer of the refund (whose history entries its
    snapshot predates) reads the refund again, and gets them; one that did
    not wait reads once."""
    pay = new_payment()
    await saved(db, pay, new_refund(pay))
    locks = {
        "lock_with_payment": lambda refunds: refunds.lock_with_payment("rf_1"),
        "lock_matching": lambda refunds: refunds.lock_matching(pay.pse_account, None, "rf_1"),
    }
    moves = [
        lambda pay_now, refund: refund.start_submission(pay_now, AT),
        lambda pay_now, refund: refund.apply_pse(
            pay_now, seen(PseRefundState.SUCCEEDED), AT + timedelta(1), "pse"
        ),
    ]

    async def locked(name: str) -> tuple:
        async with PgUnitOfWork(db) as uow:
            counting = uow.refunds.conn = _CountingReads(uow.refunds.conn)
            pair = await locks[name](uow.refunds)
            return pair, counting.reads

    for name, move in zip(locks, moves, strict=True):
        async with PgUnitOfWork(db) as writer:
            pay_w, refund_w = await writer.refunds.lock_with_payment("rf_1")
            move(pay_w, refund_w)
            await writer.save_refund(refund_w, pay_w, [], deliver=False)
            reader = asyncio.create_task(locked(name))
            await asyncio.sleep(0.3)
            assert not reader.done(), "the reader must wait for the payment's lock"
            await writer.commit()
        (pay_r, refund_r), reads = await reader
        assert reads == 2, name
        assert refund_r.history == refund_w.history and refund_r.status is refund_w.status
        assert refund_r.stored_history == len(refund_w.history)
        assert (pay_r.refunded_amount, pay_r.reserved_amount) == (
            pay_w.refunded_amount,
            pay_w.reserved_amount,
        )
        (_, alone), reads = await locked(name)
        assert reads == 1 and stored(alone) == stored(refund_r), name
    assert refund_r.status is RefundStatus.SUCCEEDED


async def test_a_save_writes_the_payment_only_when_its_counters_moved(db):
    pay = new_payment()
    await saved(db, pay, new_refund(pay))

    async def payment_row_version() -> str:
        return await scalar(db, "SELECT xmin::text FROM payments WHERE id = 'pay_1'")

    before = await payment_row_version()
    async with PgUnitOfWork(db) as uow:
        pay_now, refund = await uow.refunds.lock_with_payment("rf_1")
        refund.flag("looked at", AT)  # no money moves
        await uow.save_refund(refund, pay_now, [], deliver=False)
        await uow.commit()
    assert await payment_row_version() == before
    async with PgUnitOfWork(db) as uow:
        pay_now, refund = await uow.refunds.lock_with_payment("rf_1")
        refund.start_submission(pay_now, AT)
        refund.apply_pse(pay_now, seen(PseRefundState.SUCCEEDED), AT + timedelta(1), "pse")
        await uow.save_refund(refund, pay_now, [], deliver=False)
        await uow.commit()
    assert await payment_row_version() != before
    async with PgUnitOfWork(db) as uow:
        paid = await uow.payments.get("pay_1")
        again = await uow.refunds.get("rf_1")
    assert (paid.refunded_amount, paid.reserved_amount) == (3000, 0)
    assert paid.updated_at == AT + timedelta(1)
    assert again.attention == "looked at" and again.status is RefundStatus.SUCCEEDED


async def test_a_refunds_save_is_all_or_nothing(db):
    await saved(db, new_payment())
    async with PgUnitOfWork(db) as uow:
        await uow.outbox.add([event("evt_taken")], deliver=False)
        await uow.commit()
    # Rolled back: nothing of it stays.
    async with PgUnitOfWork(db) as uow:
        pay = await uow.payments.get("pay_1", for_update=True)
        await uow.save_refund(new_refund(pay), pay, [event("evt_1")], deliver=True, new=True)
    # One part refused (an event id taken): no part is written.
    async with PgUnitOfWork(db) as uow:
        pay = await uow.payments.get("pay_1", for_update=True)
        refund = new_refund(pay)
        with pytest.raises(asyncpg.UniqueViolationError):
            await uow.save_refund(
                refund, pay, [event("evt_2"), event("evt_taken")], deliver=True, new=True
            )
        with pytest.raises(TransactionAborted):
            await uow.commit()
    assert refund.stored_history == 0 and pay.stored_counters[1] == 0  # still to be written
    for table in ("refunds", "refund_status_history"):
        assert await scalar(db, f"SELECT count(*) FROM {table}") == 0
    assert await scalar(db, "SELECT count(*) FROM events") == 1
    async with PgUnitOfWork(db) as uow:
        assert (await uow.payments.get("pay_1")).reserved_amount == 0


# -- refunds: locks and reads -------------------------------------------------


async def waiting_on(pool, table: str) -> bool:
    """Whether a statement of another session naming `table` (reading it, or
    writing into it) waits for a lock."""
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ~ $1",
            f"(FROM|INTO) {table} ",
        )


async def eventually(condition, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if await condition():
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("by", ["id", "reference", "pse_id"])
async def test_locking_a_refund_takes_the_payment_first_and_reads_what_the_last_writer_left(db, by):
    """`lock_with_payment` (by our id) and `lock_matching` (by our reference or
    the PSE's id, as webhooks find refunds) alike."""
    pay = new_payment()
    mine = new_refund(pay, "rf_1")
    mine.pse_refund_id = "re_1"
    await saved(db, pay, mine, new_refund(pay, "rf_2"))
    async with PgUnitOfWork(db) as first:
        pay_now, refund = await first.refunds.lock_with_payment("rf_1")

        # A second writer, of the same refund, waits on the payment's lock.
        async def second_writer():
            async with PgUnitOfWork(db) as second:
                if by == "id":
                    return await second.refunds.lock_with_payment("rf_1")
                if by == "reference":
                    return await second.refunds.lock_matching(pay.pse_account, None, "rf_1")
                return await second.refunds.lock_matching(pay.pse_account, "re_1", None)

        waiting = asyncio.create_task(second_writer())
        assert await eventually(lambda: waiting_on(db, "payments"))
        assert not waiting.done()
        refund.start_submission(pay_now, AT)
        await first.save_refund(refund, pay_now, [], deliver=False)
        await first.commit()
    pay_seen, refund_seen = await asyncio.wait_for(waiting, 5)
    # The refund, its history included, as the first writer committed it.
    assert refund_seen.status is RefundStatus.SUBMITTING
    assert [c.status for c in refund_seen.history][-2:] == ["approved", "submitting"]
    assert pay_seen == pay_now
    async with PgUnitOfWork(db) as uow:
        assert await uow.refunds.lock_with_payment("rf_nope") is None


async def test_a_refund_is_found_by_id_by_pse_id_and_gives_its_payment(db):
    pay = new_payment()
    refund = new_refund(pay)
    refund.pse_refund_id = "re_9"
    await saved(db, pay, refund)
    async with PgUnitOfWork(db) as uow:
        by_id = await uow.refunds.get("rf_1")
        locked = await uow.refunds.get("rf_1", for_update=True)
        matches = [
            await uow.refunds.lock_matching(pay.pse_account, pse_id, reference)
            for pse_id, reference in [
                ("re_9", None),  # by the PSE's id
                (None, "rf_1"),  # by our reference
                ("re_9", "rf_other"),  # the PSE's id first
                ("re_other", "rf_1"),  # else the reference
                ("", ""),  # empty values name nothing
                ("re_other", "rf_nope"),
            ]
        ]
        other_account = await uow.refunds.lock_matching("other", "re_9", "rf_1")
        payment_id = await uow.refunds.payment_id_of("rf_1")
        none = await uow.refunds.payment_id_of("rf_nope")
    assert stored(by_id) == stored(locked) == stored(refund)
    assert [found and (found[0].id, found[1].id) for found in matches] == [
        *[("pay_1", "rf_1")] * 4,
        None,
        None,
    ]
    assert stored(matches[0][1]) == stored(refund)
    assert other_account is None and payment_id == "pay_1" and none is None


async def test_claim_due_leases_due_refunds_and_skips_those_another_worker_holds(db):
    pay = new_payment(amount=100_000)
    refunds = [new_refund(pay, f"rf_{i}", 1000) for i in range(4)]
    for i, refund in enumerate(refunds):
        refund.next_check_at = AT + timedelta(seconds=i)
    refunds[3].next_check_at = AT + timedelta(hours=1)  # not due yet
    await saved(db, pay, *refunds)
    now, lease = AT + timedelta(minutes=1), AT + timedelta(minutes=10)
    async with PgUnitOfWork(db) as one, PgUnitOfWork(db) as two:
        first = await one.refunds.claim_due(now, lease, 1)
        second = await two.refunds.claim_due(now, lease, 10)  # rf_0 is held: skipped
        await one.commit()
        await two.commit()
    assert first == ["rf_0"] and second == ["rf_1", "rf_2"]
    async with PgUnitOfWork(db) as uow:
        assert await uow.refunds.claim_due(now, lease, 10) == []  # leased
        assert (await uow.refunds.get("rf_0")).next_check_at == lease
        assert set(await uow.refunds.claim_due(lease, lease, 10)) == {"rf_0", "rf_1", "rf_2"}


async def test_open_counts_and_stale_refunds_not_yet_flagged(db):
    pay = new_payment(amount=100_000)
    old, flagged, recent = (new_refund(pay, f"rf_{n}", 1000) for n in ("old", "flag", "new"))
    recent.created_at = AT + timedelta(days=2)
    done = new_refund(pay, "rf_done", 1000)
    done.cancel(pay, STORE, AT)
    stale_note = event("evt_stale", flagged, type="refund.needs_attention", detail="stale: 25h")
    await saved(db, pay, old, flagged, recent, done)
    async with PgUnitOfWork(db) as uow:
        await uow.outbox.add([stale_note], deliver=False)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        counts, stale = await uow.refunds.open_counts(AT + timedelta(days=1))
        unflagged = await uow.refunds.stale_unflagged(AT + timedelta(days=1), 10)
    assert counts["approved"] == 3 and counts["pending"] == 0 and "canceled" not in counts
    assert stale == 2 and unflagged == ["rf_old"]


async def test_settlement_look_ups_take_arrays_of_pse_ids_and_references(db):
    pay = new_payment(amount=10_000_000)
    refunds = [new_refund(pay, f"rf_{i:04}", 1) for i in range(300)]
    for i, refund in enumerate(refunds):
        refund.pse_refund_id = f"re_{i:04}"
    await saved(db, pay, *refunds)
    pse_ids = [f"re_{i:04}" for i in range(0, 300, 2)] + [f"re_x{i}" for i in range(5000)]
    references = ["rf_0001", "rf_0003", "rf_missing"]
    async with PgUnitOfWork(db) as uow:
        found = await uow.refunds.find_for_settlement(pay.pse_account, pse_ids, references)
        elsewhere = await uow.refunds.find_for_settlement("other", pse_ids, references)
        nothing = await uow.refunds.find_for_settlement(pay.pse_account, [], [])
    assert len(found) == 152 and elsewhere == [] and nothing == []
    assert RefundSnapshot("rf_0001", "re_0001", refunds[1].amount, RefundStatus.APPROVED) in found


async def test_refunds_list_by_every_filter_in_either_order(db):
    pay, other = new_payment("pay_1", amount=100_000), new_payment("pay_2")
    a, b, c = (new_refund(pay, f"rf_{n}", 1000) for n in "abc")
    b.created_at = AT + timedelta(days=1)
    c.cancel(pay, STORE, AT)
    c.attention = "look"
    d = new_refund(other, "rf_d", 1000)
    await saved(db, pay, a, b, c)
    await saved(db, other, d)

    async def ids(flt=RefundFilter(), *, limit=10, before_id=None):
        async with PgUnitOfWork(db) as uow:
            return [r.id for r in await uow.refunds.list(flt, limit=limit, before_id=before_id)]

    assert await ids() == ["rf_d", "rf_c", "rf_b", "rf_a"]
    assert await ids(RefundFilter(statuses=[RefundStatus.CANCELED])) == ["rf_c"]
    assert await ids(RefundFilter(payment_id="pay_2")) == ["rf_d"]
    assert await ids(RefundFilter(created_from=AT + timedelta(hours=1))) == ["rf_b"]
    assert await ids(RefundFilter(created_to=AT + timedelta(hours=1))) == ["rf_d", "rf_c", "rf_a"]
    assert await ids(RefundFilter(open_before=AT + timedelta(hours=1))) == ["rf_d", "rf_a"]
    assert await ids(RefundFilter(needs_attention=True)) == ["rf_c"]
    assert await ids(RefundFilter(oldest_first=True), limit=2) == ["rf_a", "rf_b"]
    assert await ids(RefundFilter(oldest_first=True), before_id="rf_b") == ["rf_c", "rf_d"]
    assert await ids(limit=2, before_id="rf_c") == ["rf_b", "rf_a"]
    async with PgUnitOfWork(db) as uow:
        [listed] = await uow.refunds.list(RefundFilter(payment_id="pay_2"), limit=1, before_id=None)
    assert stored(listed) == stored(d)


# -- the outbox -----------------------------------------------------------------


async def test_events_page_newest_first_and_forward_in_commit_order(db):
    pay = new_payment()
    refund = new_refund(pay)
    await saved(db, pay, refund, events=[event("evt_0", refund), event("evt_1")])
    async with PgUnitOfWork(db) as uow:
        await uow.outbox.add([event("evt_2", refund, type="refund.approved")], deliver=False)
        await uow.outbox.add([], deliver=False)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        newest = await uow.outbox.list_newest(types=[], refund_id=None, limit=10, before=None)
        first = newest[-1]
        of_refund = await uow.outbox.list_newest(
            types=[], refund_id=refund.id, limit=10, before=newest[0].position
        )
    assert [e.id for e in newest] == ["evt_2", "evt_1", "evt_0"]
    assert [e.id for e in of_refund] == ["evt_0"]
    assert newest[0].tx > first.tx  # a later transaction

    async def forward_in_commit_order() -> bool:
        async with PgUnitOfWork(db) as uow:
            forward = await uow.outbox.list_after(
                after=first.position, types=["refund.approved"], refund_id=None, limit=10
            )
            everything = await uow.outbox.list_after(
                after=(0, 0), types=[], refund_id=None, limit=10
            )
        return [e.id for e in forward] == ["evt_2"] and [e.id for e in everything] == [
            "evt_0",
            "evt_1",
            "evt_2",
        ]

    # The forward feed's horizon is the server's oldest transaction, in any
    # database: another session of the server (a test running beside this
    # one) may hold it back a moment.
    assert await eventually(forward_in_commit_order)


async def test_list_after_holds_back_events_while_an_older_transaction_may_still_commit(db):
    async with PgUnitOfWork(db) as slow:
        await slow.outbox.add([event("evt_slow")], deliver=False)
        async with PgUnitOfWork(db) as fast:
            await fast.outbox.add([event("evt_fast")], deliver=False)
            await fast.commit()
        async with PgUnitOfWork(db) as reader:
            held = await reader.outbox.list_after(after=(0, 0), types=[], refund_id=None, limit=9)
        await slow.commit()
    async with PgUnitOfWork(db) as reader:
        after = await reader.outbox.list_after(after=(0, 0), types=[], refund_id=None, limit=9)
    assert held == [] and [e.id for e in after] == ["evt_slow", "evt_fast"]


async def test_deliveries_go_one_event_per_refund_at_a_time_and_are_recorded(db):
    pay = new_payment(amount=100_000)
    a, b = new_refund(pay, "rf_a", 1000), new_refund(pay, "rf_b", 1000)
    await saved(db, pay, a, b)
    async with PgUnitOfWork(db) as uow:
        await uow.outbox.add(
            [event("evt_a1", a), event("evt_a2", a), event("evt_b1", b)], deliver=True
        )
        await uow.commit()
    now, lease = AT + timedelta(seconds=1), AT + timedelta(minutes=1)
    async with PgUnitOfWork(db) as uow:
        assert await uow.outbox.oldest_undelivered() == AT
        claimed = await uow.outbox.claim_deliveries(now, lease, 10)
        await uow.commit()
    assert [e.id for e in claimed] == ["evt_a1", "evt_b1"]  # evt_a2 waits for evt_a1
    assert claimed[0].delivery_status is DeliveryStatus.PENDING
    async with PgUnitOfWork(db) as uow:
        assert await uow.outbox.claim_deliveries(now, lease, 10) == []  # leased
        failed = DeliveryAttempt("evt_b1", 1, now, "http://store.test/h", 503, 12, None)
        ok = DeliveryAttempt("evt_a1", 1, now, "http://store.test/h", 200, 7, None)
        await uow.outbox.record_delivery(
            failed, status=DeliveryStatus.PENDING, next_delivery_at=now
        )
        await uow.outbox.record_delivery(ok, status=DeliveryStatus.DELIVERED, next_delivery_at=None)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        a1, b1 = await uow.outbox.get("evt_a1"), await uow.outbox.get("evt_b1")
        attempts = await uow.outbox.attempts("evt_b1")
        next_round = await uow.outbox.claim_deliveries(now, lease, 10)
        assert await uow.outbox.redeliver("evt_a1", lease) is True
        assert await uow.outbox.redeliver("evt_nope", lease) is False
        await uow.commit()
    assert (a1.delivery_status, a1.delivered_at, a1.last_error) == ("delivered", now, None)
    assert (b1.delivery_attempts, b1.first_attempt_at, b1.last_error) == (1, now, "HTTP 503")
    assert attempts == [failed]
    assert [e.id for e in next_round] == ["evt_a2", "evt_b1"]
    async with PgUnitOfWork(db) as uow:
        again = await uow.outbox.get("evt_a1")
    assert (again.delivery_status, again.next_delivery_at, again.first_attempt_at) == (
        "pending",
        lease,
        None,
    )


# -- disputes -------------------------------------------------------------------


def disputed(
    pay: Payment,
    refunds: list[Refund],
    pse_dispute_id: str = "dp_1",
    status: DisputeStatus = DisputeStatus.OPEN,
    existing: Dispute | None = None,
    at: datetime = AT,
    **report,
):
    """`apply_report` of a report on `pay`, as the dispute service calls it."""
    return apply_report(
        pay,
        existing,
        DisputeReport(pse_dispute_id, status, **report),
        refunds,
        new_id=f"dsp_{pse_dispute_id}",
        pse_account=pay.pse_account,
        source="pse",
        on_dispute=OnDispute.HOLD,
        now=at,
    )


async def test_a_dispute_reads_back_with_its_payments_counters_events_and_held_refund(db):
    pay = new_payment()
    refund = new_refund(pay)  # approved
    await saved(db, pay, refund)
    due = TOKYO_AT + timedelta(days=7)
    async with PgUnitOfWork(db) as uow:
        pay_now = await uow.payments.get("pay_1", for_update=True)
        refunds = await uow.refunds.lock_of_payment("pay_1")
        change = disputed(
            pay_now, refunds, amount=Money(5000, "JPY"), reason="fraudulent", evidence_due_by=due
        )
        opened = event("evt_opened", type="payment.dispute_opened", payment_id="pay_1")
        await uow.disputes.add(change.dispute, pay_now, [opened], deliver=True)
        assert not refunds[0].status_changed or refunds[0].hold == DISPUTE_HOLD
        await uow.save_refund(refunds[0], pay_now, [], deliver=False)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        again = await uow.disputes.get_by_pse(pay.pse_account, "dp_1")
        other_account = await uow.disputes.get_by_pse("other", "dp_1")
        paid = await uow.payments.get("pay_1")
        held = await uow.refunds.get("rf_1")
        stored_event = await uow.outbox.get("evt_opened")
    assert again == change.dispute and other_account is None
    assert again.evidence_due_by == due and again.evidence_due_by.tzinfo is UTC
    assert (again.status, again.source, again.amount) == ("open", "pse", Money(5000, "JPY"))
    assert (paid.open_disputes, paid.disputed_amount, paid.reserved_amount) == (1, 0, 3000)
    assert held is not None and stored(held) == stored(refunds[0])
    assert (held.status, held.hold) == (RefundStatus.PENDING_APPROVAL, DISPUTE_HOLD)
    assert stored_event.refund_id is None and stored_event.payment_id == "pay_1"
    assert stored_event.delivery_status is DeliveryStatus.PENDING

    # Lost: the dispute moves, the payment counts it, the held refund is canceled.
    async with PgUnitOfWork(db) as uow:
        pay_now = await uow.payments.get("pay_1", for_update=True)
        refunds = await uow.refunds.lock_of_payment("pay_1")
        dispute = await uow.disputes.get_by_pse(pay.pse_account, "dp_1")
        later = AT + timedelta(days=30)
        change = disputed(pay_now, refunds, status=DisputeStatus.LOST, existing=dispute, at=later)
        await uow.disputes.save(change.dispute, pay_now, [], deliver=False)
        for changed in change.changed_refunds:
            await uow.save_refund(changed, pay_now, [], deliver=False)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        lost = await uow.disputes.get_by_pse(pay.pse_account, "dp_1")
        paid = await uow.payments.get("pay_1")
        canceled = await uow.refunds.get("rf_1")
    assert lost == change.dispute and (lost.status, lost.closed_at) == ("lost", later)
    assert lost.counted_amount == 5000
    assert (paid.open_disputes, paid.disputed_amount, paid.reserved_amount) == (0, 5000, 0)
    assert paid.refundable.amount == pay.amount.amount - 5000
    assert (canceled.status, canceled.hold) == (RefundStatus.CANCELED, None)


async def test_a_dispute_id_is_recorded_once_per_account(db):
    first, second = new_payment("pay_1"), new_payment("pay_2")
    await saved(db, first)
    await saved(db, second)
    async with PgUnitOfWork(db) as uow:
        await uow.disputes.add(disputed(first, []).dispute, first, [], deliver=False)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        twin = disputed(second, []).dispute
        twin.id = "dsp_twin"
        with pytest.raises(AlreadyExists):
            await uow.disputes.add(twin, second, [event("evt_1")], deliver=False)
        with pytest.raises(TransactionAborted):
            await uow.commit()
    assert await scalar(db, "SELECT open_disputes FROM payments WHERE id = 'pay_2'") == 0
    assert await scalar(db, "SELECT count(*) FROM events") == 0


async def test_lock_of_payment_locks_every_refund_of_the_payment_and_nothing_else(db):
    pay, other = new_payment("pay_1"), new_payment("pay_2")
    await saved(db, pay, new_refund(pay, "rf_2"), new_refund(pay, "rf_1"))
    await saved(db, other, new_refund(other, "rf_3"))
    async with PgUnitOfWork(db) as first:
        await first.payments.get("pay_1", for_update=True)
        locked = await first.refunds.lock_of_payment("pay_1")
        assert [r.id for r in locked] == ["rf_1", "rf_2"]
        async with PgUnitOfWork(db) as second:
            # Another payment's refund is free.
            assert await second.refunds.get("rf_3", for_update=True) is not None

        async def lock_one_of_them():
            async with PgUnitOfWork(db) as third:
                return await third.refunds.get("rf_2", for_update=True)

        waiting = asyncio.create_task(lock_one_of_them())
        assert await eventually(lambda: waiting_on(db, "refunds r"))
        await first.commit()
    assert (await asyncio.wait_for(waiting, 5)).id == "rf_2"
    async with PgUnitOfWork(db) as uow:
        assert await uow.refunds.lock_of_payment("pay_nope") == []


async def test_disputes_list_by_payment_open_by_deadline_and_in_figures(db):
    mine, theirs = new_payment("pay_m"), new_payment("pay_t", currency="USD")
    theirs.pse_account = "stripe_jp"
    await saved(db, mine)
    await saved(db, theirs)
    soon, late = AT + timedelta(days=3), AT + timedelta(days=9)
    async with PgUnitOfWork(db) as uow:
        pay_m = await uow.payments.get("pay_m", for_update=True)
        pay_t = await uow.payments.get("pay_t", for_update=True)
        for pse_id, pay, due, amount in (
            ("dp_late", pay_m, late, 1000),
            ("dp_none", pay_m, None, 2000),
            ("dp_soon", pay_t, soon, 300),
            ("dp_lost", pay_m, soon, 4000),
        ):
            money = Money(amount, pay.currency)
            change = disputed(pay, [], pse_id, amount=money, evidence_due_by=due)
            await uow.disputes.add(change.dispute, pay, [], deliver=False)
        lost = await uow.disputes.get_by_pse(mine.pse_account, "dp_lost")
        change = disputed(pay_m, [], "dp_lost", status=DisputeStatus.LOST, existing=lost)
        await uow.disputes.save(change.dispute, pay_m, [], deliver=False)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        of_mine = await uow.disputes.for_payment("pay_m", limit=10, before_id=None)
        page = await uow.disputes.for_payment("pay_m", limit=1, before_id=of_mine[0].id)
        by_deadline = await uow.disputes.open_by_deadline(limit=10)
        first = await uow.disputes.open_by_deadline(limit=1)
        rest = await uow.disputes.open_by_deadline(
            limit=10, after=(first[0].evidence_due_by, first[0].id)
        )
        after_none = await uow.disputes.open_by_deadline(limit=10, after=(None, "dsp_dp_none"))
        scoped = await uow.disputes.open_by_deadline(limit=10, accounts=["komoju_jp"])
        counts = (
            await uow.disputes.open_count(),
            await uow.disputes.open_count(["komoju_jp"]),
            await uow.disputes.open_count([]),
        )
        # Those whose evidence deadline comes before the instant (none without one).
        due_before = (
            await uow.disputes.open_count(due_before=AT + timedelta(days=5)),
            await uow.disputes.open_count(due_before=AT + timedelta(days=10)),
            await uow.disputes.open_count(["komoju_jp"], due_before=AT + timedelta(days=10)),
        )
        by_ids = await uow.disputes.get_many([of_mine[0].id, of_mine[0].id, "dsp_nope"])
        by_no_ids = await uow.disputes.get_many([])
        figures = await uow.disputes.figures()
        scoped_figures = await uow.disputes.figures(["stripe_jp"])
        paid = await uow.payments.get("pay_m")
    # Newest first: by id (dsp_<pse id> here).
    assert [d.pse_dispute_id for d in of_mine] == ["dp_none", "dp_lost", "dp_late"]
    assert [d.pse_dispute_id for d in page] == ["dp_lost"]
    # The nearest deadline first, those without one last.
    assert [d.pse_dispute_id for d in by_deadline] == ["dp_soon", "dp_late", "dp_none"]
    assert [d.pse_dispute_id for d in rest] == ["dp_late", "dp_none"] and after_none == []
    assert [d.pse_dispute_id for d in scoped] == ["dp_late", "dp_none"]
    assert counts == (3, 2, 0)
    assert due_before == (1, 2, 1)
    assert by_ids == [of_mine[0]] and by_no_ids == []
    assert figures == [
        DisputeFigures("komoju_jp", "JPY", 2, 3000, 4000),
        DisputeFigures("stripe_jp", "USD", 1, 300, 0),
    ]
    assert scoped_figures == figures[1:]
    assert (paid.open_disputes, paid.disputed_amount) == (2, 4000)


async def test_a_payments_dispute_events_are_delivered_in_order_beside_its_refunds(db):
    pay, other = new_payment("pay_1", amount=100_000), new_payment("pay_2")
    refund = new_refund(pay, "rf_a", 1000)
    await saved(db, pay, refund)
    await saved(db, other)

    def of_payment(event_id: str, payment_id: str) -> OutboxEvent:
        return event(event_id, type="payment.dispute_opened", payment_id=payment_id)

    async with PgUnitOfWork(db) as uow:
        await uow.outbox.add(
            [
                of_payment("evt_p1", "pay_1"),
                event("evt_a1", refund),
                of_payment("evt_p2", "pay_1"),
                of_payment("evt_q1", "pay_2"),
            ],
            deliver=True,
        )
        await uow.commit()
    now, lease = AT + timedelta(seconds=1), AT + timedelta(minutes=1)
    async with PgUnitOfWork(db) as uow:
        claimed = await uow.outbox.claim_deliveries(now, lease, 10)
        for found in claimed:
            ok = DeliveryAttempt(found.id, 1, now, "http://store.test/h", 200, 7, None)
            await uow.outbox.record_delivery(
                ok, status=DeliveryStatus.DELIVERED, next_delivery_at=None
            )
        await uow.commit()
    # evt_p2 waits for evt_p1 (same payment); the refund's and the other
    # payment's events do not wait for it.
    assert [e.id for e in claimed] == ["evt_p1", "evt_a1", "evt_q1"]
    async with PgUnitOfWork(db) as uow:
        assert [e.id for e in await uow.outbox.claim_deliveries(now, lease, 10)] == ["evt_p2"]


# -- idempotency keys -----------------------------------------------------------


def claim(key: str = "k", **overrides) -> IdempotencyRecord:
    values = {
        "api_key_id": "key_x",
        "key": key,
        "method": "POST",
        "path": "/v1/refunds",
        "request_hash": "0" * 64,
        "state": IdempotencyState.STARTED,
        "created_at": AT,
        "locked_at": AT,
    }
    return IdempotencyRecord(**(values | overrides))


async def test_of_many_concurrent_claims_of_one_key_exactly_one_is_admitted(db):
    async def try_claim() -> bool:
        async with PgUnitOfWork(db) as uow:
            won = await uow.idempotency.insert_if_absent(claim())
            await asyncio.sleep(0.01)  # hold the claim while the others try
            await uow.commit()
            return won

    results = await asyncio.gather(*(try_claim() for _ in range(8)))
    assert results.count(True) == 1
    assert await scalar(db, "SELECT count(*) FROM idempotency_keys") == 1


async def test_an_idempotency_claim_is_completed_reclaimed_deleted_and_purged(db):
    async with PgUnitOfWork(db) as uow:
        assert await uow.idempotency.insert_if_absent(claim("a"))
        assert await uow.idempotency.insert_if_absent(claim("b", locked_at=None))
        assert await uow.idempotency.get("key_x", "a") == claim("a")
        # A claim held since AT is taken over only once it is stale.
        assert not await uow.idempotency.reclaim("key_x", "a", stale_before=AT, now=AT)
        later = AT + timedelta(minutes=5)
        assert await uow.idempotency.reclaim("key_x", "a", stale_before=later, now=later)
        assert (await uow.idempotency.get("key_x", "a")).locked_at == later
        await uow.idempotency.complete("key_x", "a", 201, b'{"id": "rf_1"}\x00')
        assert not await uow.idempotency.reclaim("key_x", "a", stale_before=later, now=later)
        await uow.idempotency.delete("key_x", "b")
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        done = await uow.idempotency.get("key_x", "a")
        assert await uow.idempotency.get("key_x", "b") is None
        assert await uow.idempotency.purge(AT) == 0
        assert await uow.idempotency.purge(AT + timedelta(seconds=1)) == 1
        await uow.commit()
    assert done.state is IdempotencyState.COMPLETED and done.locked_at is None
    assert (done.response_status, done.response_body) == (201, b'{"id": "rf_1"}\x00')


async def test_a_new_refund_and_the_answer_kept_for_its_key_are_one_write(db):
    await saved(db, new_payment())
    answer = KeptAnswer("key_x", "k", 201, b'{"id": "rf_1"}')
    async with PgUnitOfWork(db) as uow:
        assert await uow.idempotency.insert_if_absent(claim())
        pay = await uow.payments.get("pay_1", for_update=True)
        refund = new_refund(pay)
        await uow.save_refund(
            refund, pay, [event("evt_1", refund)], deliver=False, new=True, answer=answer
        )
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        kept = await uow.idempotency.get("key_x", "k")
        assert (await uow.refunds.get("rf_1")) is not None
    assert kept.state is IdempotencyState.COMPLETED and kept.locked_at is None
    assert (kept.response_status, kept.response_body) == (201, b'{"id": "rf_1"}')
    # One part refused (the event id is taken): neither the refund nor the answer is written.
    async with PgUnitOfWork(db) as uow:
        assert await uow.idempotency.insert_if_absent(claim("k2"))
        pay = await uow.payments.get("pay_1", for_update=True)
        second = new_refund(pay, "rf_2")
        with pytest.raises(asyncpg.UniqueViolationError):
            await uow.save_refund(
                second,
                pay,
                [event("evt_1", second)],
                deliver=False,
                new=True,
                answer=replace(answer, key="k2"),
            )
    async with PgUnitOfWork(db) as uow:
        assert await uow.idempotency.get("key_x", "k2") is None
        assert await uow.refunds.get("rf_2") is None


# -- PSE webhooks ---------------------------------------------------------------


def webhook(event_id: str = "evt_w", **overrides) -> ReceivedWebhook:
    values = {
        "pse_account": "fake_jp",
        "event_id": event_id,
        "event_type": "refund.succeeded",
        "body": '{"id": "evt_w"}',
        "refund": {"pse_refund_id": "re_1", "state": "succeeded", "reference": "rf_ref"},
        "received_at": TOKYO_AT,
    }
    return ReceivedWebhook(**(values | overrides))


async def test_a_webhook_event_delivered_concurrently_is_stored_once(db):
    async def receive():
        async with PgUnitOfWork(db) as uow:
            stored_event = await uow.webhooks.insert_if_new(webhook())
            await asyncio.sleep(0.01)
            await uow.commit()
            return stored_event

    results = [r for r in await asyncio.gather(*(receive() for _ in range(6))) if r]
    assert len(results) == 1
    [first] = results
    assert first.refund == webhook().refund and first.status is WebhookStatus.RECEIVED
    assert (first.pse_refund_id, first.reference) == ("re_1", "rf_ref")
    assert first.received_at == TOKYO_AT and first.received_at.tzinfo is UTC


async def test_a_refunds_save_reads_the_webhooks_waiting_for_it_in_the_same_statement(db):
    pay = new_payment()
    refund = new_refund(pay)
    await saved(db, pay, refund)
    async with PgUnitOfWork(db) as uow:
        early = await uow.webhooks.insert_if_new(webhook("e1", received_at=AT))
        await uow.webhooks.insert_if_new(webhook("e2", received_at=AT, pse_account="other"))
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        pay_now, refund_now = await uow.refunds.lock_with_payment(refund.id)
        refund_now.attention = "seen"
        waiting = await uow.save_refund(
            refund_now, pay_now, [], deliver=False, waiting=WaitingFor("fake_jp", "re_1", "rf_x")
        )
        nothing = await uow.save_refund(refund_now, pay_now, [], deliver=False)
        await uow.commit()
    assert [w.id for w in waiting] == [early.id] and nothing == []
    assert waiting == await _waiting_for(db, "fake_jp", "re_1", "rf_x")
    assert await scalar(db, "SELECT attention FROM refunds WHERE id = $1", refund.id) == "seen"
    # The outcome of the webhook applied, in the same statement as the refund.
    async with PgUnitOfWork(db) as uow:
        pay_now, refund_now = await uow.refunds.lock_with_payment(refund.id)
        refund_now.attention = "applied"
        outcome = WebhookOutcome(early.id, WebhookStatus.APPLIED, refund.id, AT)
        await uow.save_refund(refund_now, pay_now, [], deliver=False, webhook=outcome)
        await uow.commit()
    marked = await scalar(
        db, "SELECT status || ':' || refund_id FROM pse_webhook_events WHERE id = $1", early.id
    )
    assert marked == f"applied:{refund.id}"
    assert await _waiting_for(db, "fake_jp", "re_1", "rf_x") == []
    assert await scalar(db, "SELECT attention FROM refunds WHERE id = $1", refund.id) == "applied"


async def test_a_webhook_received_now_is_stored_with_the_refund_it_moved_and_only_once(db):
    pay = new_payment()
    refund = new_refund(pay)
    await saved(db, pay, refund)
    received = webhook("e_now", received_at=AT)
    async with PgUnitOfWork(db) as uow:
        pay_now, refund_now = await uow.refunds.lock_with_payment(refund.id)
        refund_now.attention = "first"
        outcome = WebhookOutcome(received, WebhookStatus.APPLIED, refund.id, AT)
        await uow.save_refund(
            refund_now, pay_now, [event("evt_first", refund)], deliver=False, webhook=outcome
        )
        await uow.commit()
    [stored] = await _events_of(db, "e_now")
    assert (stored["status"], stored["refund_id"], stored["applied_at"]) == (
        "applied",
        refund.id,
        AT,
    )
    assert (stored["pse_refund_id"], stored["reference"], stored["body"]) == (
        "re_1",
        "rf_ref",
        received.body,
    )
    # The same event again: refused, and nothing written with it.
    async with PgUnitOfWork(db) as uow:
        pay_now, refund_now = await uow.refunds.lock_with_payment(refund.id)
        refund_now.attention = "second"
        again = WebhookOutcome(received, WebhookStatus.CONFLICT, refund.id, AT)
        with pytest.raises(WebhookStoredBefore, match="fake_jp/e_now"):
            await uow.save_refund(
                refund_now, pay_now, [event("evt_second", refund)], deliver=False, webhook=again
            )
    assert [dict(r) for r in await _events_of(db, "e_now")] == [dict(stored)]
    assert await scalar(db, "SELECT attention FROM refunds WHERE id = $1", refund.id) == "first"
    assert await scalar(db, "SELECT count(*) FROM events WHERE id = 'evt_second'") == 0


async def test_a_webhook_decided_alone_is_stored_once_with_its_outcome(db):
    async with PgUnitOfWork(db) as uow:
        first = await uow.webhooks.insert_if_new(
            webhook("e_alone", refund=None), WebhookStatus.IGNORED, AT
        )
        again = await uow.webhooks.insert_if_new(
            webhook("e_alone", refund=None), WebhookStatus.UNMATCHED, AT
        )
        await uow.commit()
    assert again is None
    assert (first.status, first.applied_at, first.refund_id) == (WebhookStatus.IGNORED, AT, None)
    [row] = await _events_of(db, "e_alone")
    assert row["status"] == "ignored"


async def _events_of(db, event_id: str) -> list:
    async with db.acquire() as conn:
        return await conn.fetch(
            "SELECT status, refund_id, applied_at, pse_refund_id, reference, body"
            " FROM pse_webhook_events WHERE event_id = $1",
            event_id,
        )


async def _waiting_for(db, *about) -> list:
    async with PgUnitOfWork(db) as uow:
        return await uow.webhooks.waiting_for(*about)


async def test_webhook_events_wait_for_their_refund_until_marked_and_stuck_ones_are_found(db):
    async with PgUnitOfWork(db) as uow:
        by_ref = await uow.webhooks.insert_if_new(webhook("e1", received_at=AT))
        bare = await uow.webhooks.insert_if_new(webhook("e2", refund=None, received_at=AT))
        await uow.commit()
    assert bare.refund is None and bare.pse_refund_id is None
    async with PgUnitOfWork(db) as uow:
        by_reference = await uow.webhooks.waiting_for("fake_jp", None, "rf_ref")
        by_pse_id = await uow.webhooks.waiting_for("fake_jp", "re_1", "rf_other")
        by_empty_id = await uow.webhooks.waiting_for("fake_jp", "", "rf_other")
        elsewhere = await uow.webhooks.waiting_for("other", "re_1", "rf_ref")
        stuck = await uow.webhooks.stuck(AT + timedelta(seconds=1), 10)
        await uow.webhooks.mark(by_ref.id, WebhookStatus.APPLIED, "rf_1", AT)
        await uow.webhooks.mark(bare.id, WebhookStatus.IGNORED, None, AT)
        applied = await uow.webhooks.waiting_for("fake_jp", "re_1", "rf_ref")
        none_stuck = await uow.webhooks.stuck(AT + timedelta(seconds=1), 10)
        await uow.commit()
    assert [w.id for w in by_reference] == [by_ref.id] == [w.id for w in by_pse_id]
    assert by_empty_id == elsewhere == applied == none_stuck == []
    assert [w.id for w in stuck] == [by_ref.id, bare.id]
    marked = await scalar(
        db, "SELECT status || ':' || refund_id FROM pse_webhook_events WHERE id = $1", by_ref.id
    )
    assert marked == "applied:rf_1"


# -- the audit trail ------------------------------------------------------------


def entry(i: int, at: datetime = AT, **ids) -> AuditEntry:
    return AuditEntry(at=at, kind="refund.status", data={"i": i, "text": "é"}, **ids)


async def test_audit_appends_from_concurrent_units_of_work_form_one_chain(db):
    async def append(batch: int) -> None:
        async with PgUnitOfWork(db) as uow:
            await uow.audit.append(
                [entry(batch * 10 + i, refund_id=f"rf_{batch}") for i in range(3)]
            )
            await asyncio.sleep(0.01)  # hold the head's lock
            await uow.commit()

    await asyncio.gather(*(append(b) for b in range(4)))
    async with PgUnitOfWork(db) as uow:
        head = await uow.audit.head()
        records = await uow.audit.after(0, 100)
    assert head[0] == 12 and head[1] == records[-1].hash and head[2:] == (0, GENESIS)
    expected_prev = GENESIS
    for seq, record in enumerate(records, start=1):
        assert check(record, seq, expected_prev) is None
        expected_prev = record.hash
    # Each batch kept together, in its order.
    batches = [r.refund_id for r in records]
    assert all(batches[i] == batches[i - i % 3] for i in range(12))


async def test_audit_records_are_searched_by_every_filter_and_purged_keeping_an_anchor(db):
    async with PgUnitOfWork(db) as uow:
        sealed = await uow.audit.append(
            [
                entry(1, AT, refund_id="rf_1", request_id="req_1"),
                entry(2, AT + timedelta(days=1), payment_id="pay_1", actor="ops"),
                entry(3, AT + timedelta(days=2), refund_id="rf_1"),
            ]
        )
        await uow.commit()

    async def seqs(**query) -> list[int]:
        values = {
            "refund_id": None,
            "payment_id": None,
            "request_id": None,
            "at_from": None,
            "at_to": None,
            "limit": 10,
            "before_seq": None,
        }
        async with PgUnitOfWork(db) as uow:
            return [r.seq for r in await uow.audit.search(**(values | query))]

    async with PgUnitOfWork(db) as uow:
        assert await uow.audit.after(0, 10) == sealed
        assert await uow.audit.after(1, 1) == sealed[1:2]
    assert await seqs() == [3, 2, 1]
    assert await seqs(refund_id="rf_1") == [3, 1]
    assert (
        await seqs(payment_id="pay_1")
        == [2]
        == await seqs(at_from=AT + timedelta(hours=1), at_to=AT + timedelta(days=2))
    )
    assert await seqs(request_id="req_1") == [1]
    assert await seqs(before_seq=3, limit=1) == [2]
    assert await seqs(oldest_first=True, after_seq=1) == [2, 3]
    async with PgUnitOfWork(db) as uow:
        assert await uow.audit.purge(AT, AT) == 0  # nothing older than AT
        removed = await uow.audit.purge(AT + timedelta(days=1, hours=1), AT + timedelta(days=3))
        await uow.commit()
    assert removed == 2
    async with PgUnitOfWork(db) as uow:
        assert await uow.audit.head() == (3, sealed[2].hash, 2, sealed[1].hash)
        assert await uow.audit.after(0, 10) == sealed[2:]
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_log")


# -- reconciliation -------------------------------------------------------------


def run(run_id: str, **overrides) -> Reconciliation:
    values = {
        "id": run_id,
        "pse_account": "fake_jp",
        "status": "processing",
        "created_at": AT,
        "filename": "settlement.csv",
        "counts": {"matched": 0},
        "created_by": "key_ops",
    }
    return Reconciliation(**(values | overrides))


async def test_reconciliation_runs_round_trip_list_newest_first_and_stalled_ones_fail(db):
    async with PgUnitOfWork(db) as uow:
        for run_id in ("rec_1", "rec_2", "rec_3"):
            await uow.reconciliations.add(run(run_id))
        await uow.commit()
    finished = run(
        "rec_2",
        status="completed",
        file_format="generic",
        rows_total=7,
        counts={"matched": 6, "amount_mismatch": 1},
        range_from=TOKYO_AT,
        range_to=AT + timedelta(days=1),
        adopted=2,
        completed_at=AT + timedelta(minutes=1),
    )
    async with PgUnitOfWork(db) as uow:
        await uow.reconciliations.update(finished)
        stalled = await uow.reconciliations.fail_stalled(AT + timedelta(hours=1), AT)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        again = await uow.reconciliations.get("rec_2")
        first_page = await uow.reconciliations.list(limit=2, before_id=None)
        next_page = await uow.reconciliations.list(limit=2, before_id="rec_2")
        failed = await uow.reconciliations.get("rec_1")
        assert await uow.reconciliations.get("rec_nope") is None
    assert again == finished and stalled == 2
    assert [r.id for r in first_page] == ["rec_3", "rec_2"] and [r.id for r in next_page] == [
        "rec_1"
    ]
    assert failed.status == "failed" and "interrupted" in failed.error


async def test_reconciliation_lines_are_copied_paged_matched_against_refunds_and_deleted(db):
    pay = new_payment(amount=100_000, settlement_currency="USD", settlement_rate=Decimal("0.01"))
    matched, missing = new_refund(pay, "rf_m", 10_000), new_refund(pay, "rf_x", 5_000)
    for refund in (matched, missing):
        refund.status = RefundStatus.SUCCEEDED
    await saved(db, pay, matched, missing)
    settled_cents = matched.settlement_amount - 1  # a little less than meant
    lines = [
        ReconciliationLine(
            reconciliation_id="rec_1",
            line=2,
            outcome="matched",
            pse_refund_id="re_m",
            refund_id="rf_m",
            file_amount=10_000,
            file_status="succeeded",
            our_amount=10_000,
            our_status="succeeded",
            currency="JPY",
            settled_at=TOKYO_AT,
            fee=30,
            settlement_amount=settled_cents,
            settlement_currency="USD",
        ),
        *(ReconciliationLine("rec_1", n, "missing_in_service", f"re_{n}") for n in range(3, 2003)),
    ]
    async with PgUnitOfWork(db) as uow:
        await uow.reconciliations.add(run("rec_1"))
        await uow.reconciliations.add_lines(lines)
        await uow.reconciliations.add_lines([])
        adjusted = await uow.reconciliations.apply_settled_figures("rec_1")
        added = await uow.reconciliations.add_missing_in_file("rec_1", pay.pse_account, AT, AT)
        await uow.commit()
    assert adjusted == 1 and added == 1
    async with PgUnitOfWork(db) as uow:
        first = await uow.reconciliations.lines("rec_1", outcome=None, limit=2, after_id=None)
        rest = await uow.reconciliations.lines(
            "rec_1", outcome=None, limit=5000, after_id=first[-1].id
        )
        [absent] = await uow.reconciliations.lines(
            "rec_1", outcome="missing_in_file", limit=10, after_id=None
        )
        settled = await uow.refunds.get("rf_m")
        fx = await uow.reconciliations.fx_totals(None, None, None)
        fx_none = await uow.reconciliations.fx_totals(AT + timedelta(days=1), None, None)
        fx_usd = await uow.reconciliations.fx_totals(AT, AT + timedelta(days=1), "USD")
    assert first[0] == lines[0]._replace(id=first[0].id) and first[0].settled_at.tzinfo is UTC
    assert len(first) + len(rest) == 2002
    assert (absent.refund_id, absent.our_amount, absent.line) == ("rf_x", 5_000, None)
    assert (settled.fee_amount, settled.fx_difference) == (30, -1)
    assert [(t.settlement_currency, t.refunds, t.fx_difference, t.fees) for t in fx] == [
        ("USD", 2, -1, 30)
    ]
    assert fx[0].refunds_with_actual_settlement == 1 and fx_none == [] and fx_usd == fx
    async with PgUnitOfWork(db) as uow:
        await uow.reconciliations.delete_lines("rec_1")
        await uow.commit()
    assert await scalar(db, "SELECT count(*) FROM reconciliation_rows") == 0


async def test_a_runs_lines_are_its_own_range_among_interleaved_runs_closed_when_it_ends(db):
    """Runs storing lines side by side interleave their ids: a run's listing,
    of all its lines or of one outcome, has its own lines only, and once it
    ends its range closes below the lines written after it."""

    def lines_of(run_id: str, first: int, count: int, outcome: str) -> list[ReconciliationLine]:
        return [
            ReconciliationLine(run_id, n, outcome, f"re_{run_id}_{n}")
            for n in range(first, first + count)
        ]

    async def listed(uow, run_id: str, outcome: str | None = None) -> list[int]:
        found = await uow.reconciliations.lines(run_id, outcome=outcome, limit=100, after_id=None)
        assert all(line.reconciliation_id == run_id for line in found)
        return [line.line for line in found]

    async with PgUnitOfWork(db) as uow:
        await uow.reconciliations.add(run("rec_a"))
        await uow.reconciliations.add(run("rec_b"))
        await uow.reconciliations.add_lines(lines_of("rec_a", 2, 3, "matched"))
        await uow.reconciliations.add_lines(lines_of("rec_b", 2, 2, "matched"))
        await uow.reconciliations.add_lines(lines_of("rec_a", 5, 2, "amount_mismatch"))
        await uow.reconciliations.add_lines(lines_of("rec_b", 4, 1, "status_mismatch"))
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        assert await listed(uow, "rec_a") == [2, 3, 4, 5, 6]
        assert await listed(uow, "rec_a", "matched") == [2, 3, 4]
        assert await listed(uow, "rec_a", "amount_mismatch") == [5, 6]
        assert await listed(uow, "rec_b") == [2, 3, 4]
        assert await listed(uow, "rec_b", "status_mismatch") == [4]
        assert await listed(uow, "rec_b", "amount_mismatch") == []
        assert await listed(uow, "rec_nope") == []
        with pytest.raises(ValueError, match="no outcome"):
            await uow.reconciliations.lines("rec_a", outcome="nope", limit=1, after_id=None)
        await uow.reconciliations.update(run("rec_a", status="completed"))
        await uow.commit()
    last_a = await scalar(db, "SELECT max(id) FROM reconciliation_rows WHERE line = 6")
    assert await scalar(db, "SELECT last_line_id FROM reconciliations WHERE id = 'rec_a'") == last_a
    async with PgUnitOfWork(db) as uow:
        # A line of rec_a written after it ended is outside its range.
        await uow.reconciliations.add_lines(lines_of("rec_a", 7, 1, "matched"))
        await uow.reconciliations.add_lines(lines_of("rec_b", 5, 1, "amount_mismatch"))
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        assert await listed(uow, "rec_a") == [2, 3, 4, 5, 6]
        assert await listed(uow, "rec_b") == [2, 3, 4, 5]
        await uow.reconciliations.delete_lines("rec_b")
        await uow.reconciliations.update(run("rec_b", status="failed", error="line 3: bad"))
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        assert await listed(uow, "rec_b") == []
        assert await listed(uow, "rec_a") == [2, 3, 4, 5, 6]
        await uow.reconciliations.add(run("rec_c"))
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        # A run that ends without lines has an empty range; so does one that stalled.
        await uow.reconciliations.update(run("rec_c", status="completed"))
        await uow.reconciliations.add(run("rec_d", created_at=AT - timedelta(days=1)))
        assert await uow.reconciliations.fail_stalled(AT, AT) == 1
        await uow.commit()
    ranges = await scalar(
        db,
        "SELECT array_agg(last_line_id - first_line_id ORDER BY id) FROM reconciliations "
        "WHERE id IN ('rec_c', 'rec_d')",
    )
    assert ranges == [0, 0]


# -- API keys and the daily auto-approval totals --------------------------------


async def test_api_keys_round_trip_by_hash_are_revoked_once_and_listed_oldest_first(db):
    keys = [
        ApiKey("key_1", "shop", "pk_1", frozenset({Role.STORE}), None, AT),
        ApiKey(
            "key_2",
            "boss",
            "pk_2",
            frozenset({Role.APPROVER, Role.OPS}),
            2,
            TOKYO_AT + timedelta(1),
        ),
    ]
    async with PgUnitOfWork(db) as uow:
        for i, key in enumerate(keys):
            await uow.api_keys.add(key, f"hash_{i}")
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        assert await uow.api_keys.by_hash("hash_1") == keys[1]
        assert await uow.api_keys.by_hash("hash_x") is None
        assert await uow.api_keys.revoke("key_1", AT) is True
        assert await uow.api_keys.revoke("key_1", AT) is False
        assert await uow.api_keys.revoke("key_nope", AT) is False
        listed = await uow.api_keys.list()
        await uow.commit()
    assert listed == [replace(keys[0], revoked_at=AT), keys[1]]


async def test_api_keys_keep_their_scope_of_accounts_and_console_sessions_read_it(db):
    scoped = ApiKey(
        "key_s",
        "shop-a",
        "pk_s",
        frozenset({Role.STORE}),
        None,
        AT,
        accounts=frozenset({"stripe_jp", "komoju_jp"}),
    )
    unscoped = ApiKey("key_u", "ops", "pk_u", frozenset({Role.OPS}), None, AT + timedelta(1))
    async with PgUnitOfWork(db) as uow:
        await uow.api_keys.add(scoped, "hash_s")
        await uow.api_keys.add(unscoped, "hash_u")
        await uow.console_sessions.add(ConsoleSession("tok_s", "key_s", AT, AT, "csrf"))
        await uow.commit()
    # JSONB, sorted; NULL (every account) for a key made without accounts.
    assert await scalar(db, "SELECT accounts FROM api_keys WHERE id = 'key_s'") == [
        "komoju_jp",
        "stripe_jp",
    ]
    assert await scalar(db, "SELECT accounts IS NULL FROM api_keys WHERE id = 'key_u'") is True
    async with PgUnitOfWork(db) as uow:
        assert await uow.api_keys.by_hash("hash_s") == scoped
        assert await uow.api_keys.by_hash("hash_u") == unscoped
        assert await uow.api_keys.list() == [scoped, unscoped]
        found = await uow.console_sessions.get("tok_s")
    assert found is not None and found[1] == scoped
    assert scoped.may_see("komoju_jp") and not scoped.may_see("other") and unscoped.may_see("x")
    assert not scoped.may_see(None)


async def test_a_revocation_is_announced_to_listeners_once_it_commits_and_only_then(db):
    async with PgUnitOfWork(db) as uow:
        for n in (1, 2):
            key = ApiKey(f"key_{n}", "k", f"pk_{n}", frozenset({Role.STORE}), None, AT)
            await uow.api_keys.add(key, f"hash_{n}")
        await uow.commit()
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(asyncpg_dsn(db.url))

    async def next_heard() -> str:
        return await asyncio.wait_for(heard.get(), 5)

    try:
        await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[-1]))
        async with PgUnitOfWork(db) as uow:
            assert await uow.api_keys.revoke("key_1", AT) is True  # rolled back: never said
        async with PgUnitOfWork(db) as uow:
            assert await uow.api_keys.revoke("key_2", AT) is True
            await uow.commit()
        # Notifications come in commit order: had the rolled-back one been
        # sent, it would be heard first.
        assert await next_heard() == "key_2"
        async with PgUnitOfWork(db) as uow:
            assert await uow.api_keys.revoke("key_1", AT) is True
            assert await uow.api_keys.revoke("key_2", AT) is False  # revoked before: nothing
            await uow.commit()
        assert await next_heard() == "key_1"
        async with db.acquire() as conn:
            await conn.execute("SELECT pg_notify($1, 'sentinel')", CHANNEL)
        assert await next_heard() == "sentinel"
    finally:
        await listener.close()


async def test_every_list_count_and_figure_can_be_limited_to_pse_accounts(db):
    mine, theirs = new_payment("pay_m", amount=500_000), new_payment("pay_t", amount=500_000)
    theirs.pse_account = "stripe_jp"
    # One refund of each awaiting approval and flagged, one of each approved.
    waiting_m = new_refund(mine, "rf_m1", 50_000, approval_tiers=CONTRACT_TIERS)
    waiting_t = new_refund(theirs, "rf_t1", 50_000, approval_tiers=CONTRACT_TIERS)
    waiting_m.attention = waiting_t.attention = "look"
    approved_m, approved_t = new_refund(mine, "rf_m2", 1000), new_refund(theirs, "rf_t2", 1000)
    await saved(db, mine, waiting_m, approved_m, events=[event("evt_m", waiting_m)])
    await saved(db, theirs, waiting_t, approved_t, events=[event("evt_t", waiting_t)])
    async with PgUnitOfWork(db) as uow:
        await uow.outbox.add([event("evt_none")], deliver=False)  # of no payment
        await uow.reconciliations.add(run("rec_m", pse_account="komoju_jp"))
        await uow.reconciliations.add(run("rec_t", pse_account="stripe_jp"))
        await uow.audit.append(
            [
                entry(1, refund_id="rf_m1", payment_id="pay_m"),
                entry(2, refund_id="rf_t1", payment_id="pay_t"),
                entry(3, payment_id="pay_m"),
                entry(4),  # of nothing: never a scoped key's
                entry(5, refund_id="rf_m1", payment_id="pay_t"),  # names another's payment
            ]
        )
        await uow.commit()
    await db_exec(db, "UPDATE events SET delivery_status = 'failed'")
    only = ["komoju_jp"]
    async with PgUnitOfWork(db) as uow:
        listed = await uow.refunds.list(RefundFilter(accounts=only), limit=10, before_id=None)
        rows = await uow.refunds.rows(RefundFilter(accounts=only), limit=1, before_id=None)
        waiting = await uow.refunds.awaiting_approval(limit=10, after_id=None, accounts=only)
        all_waiting = await uow.refunds.awaiting_approval(limit=10, after_id=None)
        open_counts, _stale = await uow.refunds.open_counts(AT, only)
        flagged = (await uow.refunds.flagged_count(only), await uow.refunds.flagged_count())
        by_status = await uow.refunds.count_by_status(AT, AT + timedelta(1), only)
        volume = await uow.refunds.volume(AT, list(RefundStatus), only)
        payments = await uow.payments.list(order_id=None, limit=10, before_id=None, accounts=only)
        paid = await uow.payments.volume(AT, only)
        newest = await uow.outbox.list_newest(
            types=[], refund_id=None, limit=10, before=None, accounts=only
        )
        failed = await uow.outbox.failed(limit=10, before_id=None, accounts=only)
        failed_oldest = await uow.outbox.failed(
            limit=10, before_id=None, oldest_first=True, accounts=[]
        )
        failed_counts = (await uow.outbox.failed_count(only), await uow.outbox.failed_count())
        runs = await uow.reconciliations.list(limit=10, before_id=None, accounts=only)
        records = await uow.audit.search(
            refund_id=None,
            payment_id=None,
            request_id=None,
            at_from=None,
            at_to=None,
            limit=10,
            before_seq=None,
            accounts=only,
        )
    assert [r.id for r in listed] == ["rf_m2", "rf_m1"]
    assert [r.id for r in rows] == ["rf_m2"]  # paged within the scope
    assert [r.id for r in waiting] == ["rf_m1"] and len(all_waiting) == 2
    assert open_counts["pending_approval"] == 1 and open_counts["approved"] == 1
    assert flagged == (1, 2)
    assert by_status == {"pending_approval": 1, "approved": 1}
    assert [(v.count, v.amount) for v in volume] == [(2, 51_000)]
    assert [p.id for p in payments] == ["pay_m"] and [(v.count, v.amount) for v in paid] == [
        (1, 500_000)
    ]
    assert [e.id for e in newest] == ["evt_m"]

    async def forward_is_mine() -> bool:
        async with PgUnitOfWork(db) as uow:
            found = await uow.outbox.list_after(
                after=(0, 0), types=[], refund_id=None, limit=10, accounts=only
            )
        return [e.id for e in found] == ["evt_m"]

    # The feed's horizon is the server's oldest transaction: another
    # session of the server may hold it back a moment.
    assert await eventually(forward_is_mine)
    assert [e.id for e in failed] == ["evt_m"] and failed_oldest == []
    assert failed_counts == (1, 3)
    assert [r.id for r in runs] == ["rec_m"]
    assert [r.seq for r in records] == [3, 1]


async def db_exec(pool, sql: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(sql)


async def test_the_days_auto_approval_total_is_created_locked_and_added_to(db):
    async with PgUnitOfWork(db) as uow:
        assert await uow.auto_approvals.lock_total("JPY", "2026-11-20") == 0
        await uow.auto_approvals.add("JPY", "2026-11-20", 1500)
        await uow.commit()
    async with PgUnitOfWork(db) as one:
        assert await one.auto_approvals.lock_total("JPY", "2026-11-20") == 1500

        async def second() -> int:
            async with PgUnitOfWork(db) as two:
                return await two.auto_approvals.lock_total("JPY", "2026-11-20")

        waiting = asyncio.create_task(second())
        assert await eventually(lambda: waiting_on(db, "auto_approval_totals"))
        await one.auto_approvals.add("JPY", "2026-11-20", 500)
        await one.commit()
    assert await asyncio.wait_for(waiting, 5) == 2000


async def day_total(pool, currency: str, day: str) -> int:
    async with pool.acquire() as conn:
        found = await conn.fetchval(
            "SELECT amount FROM auto_approval_totals WHERE currency = $1 AND day = $2",
            currency,
            day,
        )
    return found or 0


async def test_the_days_total_is_added_to_only_while_it_stays_within_the_limit(db):
    async with PgUnitOfWork(db) as uow:
        assert await day_total(db, "JPY", "2026-11-21") == 0
        # No row yet, and more than the limit: none is made.
        assert not await uow.auto_approvals.add_within("JPY", "2026-11-21", 5001, 5000)
        assert await uow.auto_approvals.add_within("JPY", "2026-11-21", 3000, 5000)
        assert await uow.auto_approvals.add_within("JPY", "2026-11-21", 2000, 5000)
        assert not await uow.auto_approvals.add_within("JPY", "2026-11-21", 1, 5000)
        assert await uow.auto_approvals.add_within("USD", "2026-11-21", 1, 5000)
        await uow.commit()
    async with PgUnitOfWork(db) as uow:
        assert await day_total(db, "JPY", "2026-11-21") == 5000
        assert await day_total(db, "USD", "2026-11-21") == 1
        assert await day_total(db, "JPY", "2026-11-22") == 0


async def test_adding_within_the_limit_waits_for_the_row_and_checks_the_newest_total(db):
    async with PgUnitOfWork(db) as uow:
        assert await uow.auto_approvals.add_within("JPY", "2026-11-23", 3000, 5000)
        await uow.commit()
    async with PgUnitOfWork(db) as one:
        assert await one.auto_approvals.add_within("JPY", "2026-11-23", 1500, 5000)

        async def second() -> tuple[int, bool]:
            async with PgUnitOfWork(db) as two:
                # Read before `one` commits: the room it saw is gone by then.
                seen = await day_total(db, "JPY", "2026-11-23")
                added = await two.auto_approvals.add_within("JPY", "2026-11-23", 1000, 5000)
                await two.commit()
                return seen, added

        waiting = asyncio.create_task(second())
        assert await eventually(lambda: waiting_on(db, "auto_approval_totals"))
        await one.commit()
    assert await asyncio.wait_for(waiting, 5) == (3000, False)
    async with PgUnitOfWork(db) as uow:
        assert await day_total(db, "JPY", "2026-11-23") == 4500


async def test_a_payment_is_locked_with_the_days_total_of_its_currency_or_another(db):
    pay = new_payment()  # JPY
    await saved(db, pay)
    async with PgUnitOfWork(db) as uow:
        assert await uow.payments.lock_with_day_total("pay_1", None, "2026-11-25") == (pay, 0)
        assert await uow.auto_approvals.add_within("JPY", "2026-11-25", 700, 1000)
        assert await uow.auto_approvals.add_within("USD", "2026-11-25", 5, 1000)
        await uow.commit()
    async with PgUnitOfWork(db) as first:
        assert await first.payments.lock_with_day_total("pay_1", None, "2026-11-25") == (pay, 700)
        assert await first.payments.lock_with_day_total("pay_1", "USD", "2026-11-25") == (pay, 5)
        assert await first.payments.lock_with_day_total("pay_nope", None, "2026-11-25") is None

        async def second() -> tuple[Payment, int] | None:
            async with PgUnitOfWork(db) as two:
                return await two.payments.lock_with_day_total("pay_1", None, "2026-11-26")

        # The payment is locked; the day's row is not.
        waiting = asyncio.create_task(second())
        assert await eventually(lambda: waiting_on(db, "payments"))
        assert await first.auto_approvals.add_within("JPY", "2026-11-26", 300, 1000)
        await first.commit()
    # The total as of the statement's start: never more than the true one.
    assert await asyncio.wait_for(waiting, 5) == (pay, 0)
    assert await day_total(db, "JPY", "2026-11-26") == 300


async def test_before_commit_steps_run_last_and_what_they_raise_rolls_everything_back(db):
    order: list[str] = []

    async def step() -> None:
        order.append("step")

    async with PgUnitOfWork(db) as uow:
        uow.before_commit(step)
        await uow.auto_approvals.add_within("JPY", "2026-11-24", 10, 100)
        order.append("work")
        await uow.commit()
    assert order == ["work", "step"]

    class Refused(Exception):
        pass

    async def refuse() -> None:
        raise Refused

    with pytest.raises(Refused):
        async with PgUnitOfWork(db) as uow:
            await uow.auto_approvals.add_within("JPY", "2026-11-24", 20, 100)
            uow.before_commit(refuse)
            await uow.commit()
    async with PgUnitOfWork(db) as uow:
        assert await day_total(db, "JPY", "2026-11-24") == 10


# -- the unit of work -----------------------------------------------------------


async def test_after_commit_callbacks_run_once_committed_and_never_on_rollback(db):
    ran: list[str] = []
    async with PgUnitOfWork(db) as uow:
        uow.after_commit(lambda: ran.append("rolled back"))
    async with PgUnitOfWork(db) as uow:
        uow.after_commit(lambda: ran.append("committed"))
        assert ran == []
        await uow.commit()
    assert ran == ["committed"]


async def test_nothing_is_written_unless_the_unit_of_work_commits(db):
    with contextlib.suppress(RuntimeError):
        async with PgUnitOfWork(db) as uow:
            await uow.payments.add(new_payment(), None)
            raise RuntimeError("the request failed")
    async with PgUnitOfWork(db) as uow:
        await uow.payments.add(new_payment("pay_2"), None)
    assert await scalar(db, "SELECT count(*) FROM payments") == 0


async def kill_other_backends(pool) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
async def fresh_pool_after(db):
    """The pool is the session's: leave it with no connection these tests killed."""
    yield
    await db.expire_connections()


async def test_units_of_work_recover_when_the_database_dropped_every_connection(
    db, fresh_pool_after
):
    await saved(db, new_payment())
    # Fill the pool with several idle connections, then have the server drop them.
    uows = [PgUnitOfWork(db) for _ in range(4)]
    for uow in uows:
        await uow.__aenter__()
    for uow in uows:
        await uow.__aexit__(None, None, None)
    assert await kill_other_backends(db) >= 1
    # Each unit of work still runs: a dead connection is replaced at the start.
    for _ in range(6):
        async with PgUnitOfWork(db) as uow:
            assert await uow.payments.get("pay_1") is not None


async def test_a_connection_dying_during_a_unit_of_work_is_not_reused(db, fresh_pool_after):
    await saved(db, new_payment())
    # However the driver learns of it (the server's notice, a closed socket).
    dead = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
    with pytest.raises(dead):
        async with PgUnitOfWork(db) as uow:
            await uow.payments.get("pay_1", for_update=True)
            await kill_other_backends(db)
            await uow.payments.get("pay_1")
    for _ in range(6):
        async with PgUnitOfWork(db) as uow:
            assert await uow.payments.get("pay_1") is not None


async def kill_and_wait(pool) -> None:
    """The server ends the sessions, and the driver has learnt of it (it hands
    such a connection back to the pool itself, and every later call through
    it is refused)."""
    await kill_other_backends(pool)
    await asyncio.sleep(0.2)


async def test_a_statement_on_a_session_the_server_ended_counts_as_the_database_away(
    db, fresh_pool_after
):
    await saved(db, new_payment())
    with pytest.raises(Exception) as raised:
        async with PgUnitOfWork(db) as uow:
            await uow.payments.get("pay_1", for_update=True)
            await kill_and_wait(db)
            await uow.payments.get("pay_1")
    assert database_unavailable(raised.value), repr(raised.value)  # 503, not 500
    async with PgUnitOfWork(db) as uow:
        assert await uow.payments.get("pay_1") is not None


async def test_rolling_back_a_session_the_server_ended_keeps_the_error_that_ended_it(
    db, fresh_pool_after
):
    """The roll-back must not replace what the block raised by an error of
    its own clean-up."""
    await saved(db, new_payment())
    ended = asyncpg.exceptions.ConnectionDoesNotExistError("the session ended")
    with pytest.raises(Exception) as raised:
        async with PgUnitOfWork(db) as uow:
            await uow.payments.get("pay_1", for_update=True)
            await kill_and_wait(db)
            raise ended
    assert raised.value is ended
    async with PgUnitOfWork(db) as uow:
        assert await uow.payments.get("pay_1") is not None
