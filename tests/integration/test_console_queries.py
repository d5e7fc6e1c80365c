"""What the console's pages read, against the real database: the approvals
inbox, refund search and its CSV export, a refund's timeline, the home page's
figures, the attention queues with redelivery, and reconciliations."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest

from app.domain.errors import InvalidInput, NotFound, UnknownCurrency
from app.domain.models import Actor, DecisionBlock, RefundStatus
from app.domain.policy import ApprovalCause
from app.domain.pse import PseRefundState
from app.domain.records import (
    ApiKey,
    DeliveryAttempt,
    DeliveryStatus,
    Reconciliation,
    ReconciliationLine,
)
from app.services.console_queries import ConsoleQueries
from app.services.console_results import (
    AttentionQueue,
    RefundAction,
    RefundSearch,
)
from app.services.refund_csv import CSV_HEADER
from app.services.timeline import TimelineKind
from tests.api.helpers import get_refund, refund, register

SIGNED = {"x-fake-signature": "ok", "content-type": "application/json"}


def queries(api) -> ConsoleQueries:
    return api.container.console_queries


async def key(api, name: str) -> ApiKey:
    found = await api.container.keys.authenticate(api.keys[name])
    assert found is not None
    return found


async def requested(api, value: int, *, who: str = "store", **payment: Any) -> dict[str, Any]:
    """A refund of `value` on a new payment (`payment`: its fields)."""
    paid = await register(api, **payment)
    r = await refund(api, paid["id"], value, who=who)
    assert r.status_code == 201, r.text
    return r.json()


async def approve(api, refund_id: str, who: str) -> None:
    r = await api.client.post(f"/v1/refunds/{refund_id}/approve", json={}, headers=api.auth(who))
    assert r.status_code == 200, r.text


async def sql(api, statement: str, *args: Any) -> None:
    async with api.container.pool.acquire() as conn:
        await conn.execute(statement, *args)


# -- the approvals inbox ----------------------------------------------------------


async def test_the_inbox_holds_what_each_approver_can_decide_oldest_first(api):
    big = await requested(api, 150_000, amount=200_000)  # above ¥100,000: levels (2, 1)
    small = await requested(api, 12_000)  # above ¥10,000: level 1
    own = await requested(api, 12_000, who="store_approver")
    risky = await requested(api, 3_000, risk_level="high")
    auto = await requested(api, 3_000)  # approved by the policy: in no list
    assert auto["status"] == "submitting"
    q = queries(api)

    approver1 = await key(api, "approver1")
    inbox = await q.approvals_inbox(approver1)
    assert [i.refund.id for i in inbox.items] == [big["id"], small["id"], own["id"], risky["id"]]
    assert inbox.next_cursor is None
    first = inbox.items[0]
    assert (first.payment_id, first.order_id, first.amount.amount) == (
        big["payment_id"],
        "ORD-1001",
        150_000,
    )
    assert first.open_slots == (2, 1)
    assert first.can_reject is False  # a veto of this refund needs level 2
    assert inbox.items[1].can_reject is True
    (reason,) = first.reasons
    assert reason.cause is ApprovalCause.TIER
    assert (reason.tier.above, reason.tier.currency) == (100_000, "JPY")
    assert inbox.items[1].reasons[0].tier.above == 10_000
    assert [r.cause for r in inbox.items[3].reasons] == [ApprovalCause.HIGH_RISK]
    assert inbox.items[3].risk_level.value == "high"
    assert first.age == timedelta(0)
    api.clock.advance(hours=3)
    assert (await q.approvals_inbox(approver1, limit=1)).items[0].age == timedelta(hours=3)

    # Separation of duties: the creator's key sees its refund among those it cannot decide.
    creator = await key(api, "store_approver")
    assert own["id"] not in [i.refund.id for i in (await q.approvals_inbox(creator)).items]
    blocked = await q.approvals_blocked(creator)
    assert [(i.refund.id, i.blocked) for i in blocked.items] == [
        (own["id"], DecisionBlock.SELF_APPROVAL)
    ]

    # Once level 1 approved the big refund, only its level-2 slot is open.
    await approve(api, big["id"], "approver1")
    inbox = await q.approvals_inbox(approver1)
    assert big["id"] not in [i.refund.id for i in inbox.items]
    blocked = await q.approvals_blocked(approver1)
    assert [(i.refund.id, i.blocked) for i in blocked.items] == [
        (big["id"], DecisionBlock.ALREADY_DECIDED)
    ]
    other_level1 = await key(api, "approver1b")
    assert [(i.refund.id, i.blocked) for i in (await q.approvals_blocked(other_level1)).items] == [
        (big["id"], DecisionBlock.LEVEL)
    ]
    level2 = await key(api, "approver2")
    item = (await q.approvals_inbox(level2)).items[0]
    assert (item.refund.id, item.open_slots, item.can_reject) == (big["id"], (2,), True)

    counts = await q.approval_counts(approver1)
    assert (counts.inbox, counts.blocked) == (3, 1)


async def test_the_inbox_pages_with_cursors(api):
    made = [(await requested(api, 12_000))["id"] for _ in range(5)]
    approver = await key(api, "approver1")
    seen: list[str] = []
    cursor = None
    while True:
        page = await queries(api).approvals_inbox(approver, limit=2, cursor=cursor)
        seen += [i.refund.id for i in page.items]
        if page.next_cursor is None:
            break
        assert len(page.items) == 2
        cursor = page.next_cursor
    assert seen == made


async def test_a_blocked_page_skips_past_the_refunds_it_can_decide(api, monkeypatch):
    # Fewer refunds per scan than the inbox holds: the page is filled over several reads.
    monkeypatch.setattr("app.services.console_queries._APPROVAL_SCAN", 2)
    mine = [(await requested(api, 12_000, who="store_approver"))["id"] for _ in range(2)]
    others = [(await requested(api, 12_000))["id"] for _ in range(3)]
    mine += [(await requested(api, 12_000, who="store_approver"))["id"]]
    creator = await key(api, "store_approver")
    page = await queries(api).approvals_blocked(creator, limit=2)
    assert [i.refund.id for i in page.items] == mine[:2]
    page = await queries(api).approvals_blocked(creator, limit=2, cursor=page.next_cursor)
    assert [i.refund.id for i in page.items] == mine[2:]
    assert page.next_cursor is None
    inbox = await queries(api).approvals_inbox(creator, limit=10)
    assert [i.refund.id for i in inbox.items] == others


async def test_the_daily_limit_and_a_currency_without_rate_are_reasons(make_api):
    api = await make_api(
        policy={
            "daily_auto_approve_limit": {"JPY": 5_000},
            "approval_tiers": [
                {"currency": "JPY", "above": 10_000, "approvals": 1, "min_level": 1}
            ],
        }
    )
    assert (await requested(api, 3_000))["status"] == "submitting"
    over = await requested(api, 3_000)
    dollars = await requested(api, 1_500, currency="USD", amount=5_000)
    inbox = await queries(api).approvals_inbox(await key(api, "approver1"))
    by_id = {i.refund.id: i.reasons for i in inbox.items}
    assert [(r.cause, r.daily_limit) for r in by_id[over["id"]]] == [
        (ApprovalCause.DAILY_LIMIT, 5_000)
    ]
    assert [r.cause for r in by_id[dollars["id"]]] == [ApprovalCause.NO_OPERATOR_RATE]


# -- one refund: detail, actions, timeline ------------------------------------------


async def test_the_refund_page_offers_what_the_viewer_may_do(api):
    waiting = await requested(api, 12_000, who="store_approver")
    q = queries(api)
    detail = await q.refund_detail(waiting["id"], await key(api, "approver1"))
    assert detail.actions == {RefundAction.APPROVE, RefundAction.REJECT}
    assert detail.decision_block is None
    assert detail.approval_reasons[0].tier.above == 10_000
    assert detail.payment.id == waiting["payment_id"]
    creator = await q.refund_detail(waiting["id"], await key(api, "store_approver"))
    assert creator.decision_block is DecisionBlock.SELF_APPROVAL
    assert creator.actions == {RefundAction.CANCEL}  # it is a store key, too
    assert (await q.refund_detail(waiting["id"], await key(api, "ops"))).actions == {
        RefundAction.CANCEL
    }
    offline = await requested(api, 3_000, payment_method="konbini")
    assert offline["status"] == "offline_required"
    assert (await q.refund_detail(offline["id"], await key(api, "ops"))).actions == {
        RefundAction.CANCEL,
        RefundAction.OFFLINE_PAYOUT,
    }
    sent = await requested(api, 3_000)
    await api.settle()
    ops_view = await q.refund_detail(sent["id"], await key(api, "ops"))
    assert ops_view.refund.status is RefundStatus.PENDING
    assert ops_view.actions == {RefundAction.SYNC}
    assert ops_view.approval_reasons == ()
    with pytest.raises(NotFound):
        await q.refund_detail("rf_nope", await key(api, "ops"))


async def test_the_timeline_merges_every_source_in_time_order(api):
    created = await requested(api, 12_000)
    api.clock.advance(minutes=5)
    await approve(api, created["id"], "approver1")
    await api.settle()
    sent = await get_refund(api, created["id"])
    assert sent["status"] == "pending"
    api.clock.advance(minutes=5)
    # What the PSE adapter's transport records for each HTTP exchange.
    api.container.audit.record(
        "pse.call",
        {
            "method": "GET",
            "url": "http://pse.test/refunds/x",
            "status_code": 200,
            "outcome": "ok",
            "duration_ms": 12.5,
            "response_body": "[redacted]",
        },
        refund_id=created["id"],
    )
    api.clock.advance(minutes=5)
    body = json.dumps(
        {
            "id": "evt_pse_1",
            "type": "refund.succeeded",
            "refund": {
                "id": sent["pse_refund_id"],
                "state": "succeeded",
                "reference": created["id"],
            },
        }
    )
    r = await api.client.post("/v1/webhooks/fake_jp", content=body, headers=SIGNED)
    assert r.json()["status"] == "applied"
    api.clock.advance(minutes=5)
    first_event = (
        await api.client.get(
            "/v1/events", params={"refund_id": created["id"]}, headers=api.auth("ops")
        )
    ).json()["data"][-1]
    async with api.container.deps.uow() as uow:
        await uow.outbox.record_delivery(
            DeliveryAttempt(first_event["id"], 1, api.clock.now(), "http://store.test/h", 503, 40),
            status=DeliveryStatus.PENDING,
            next_delivery_at=api.clock.now(),
        )
        await uow.commit()
    await api.client.get(f"/v1/refunds/{created['id']}", headers=api.auth("ops"))  # a read
    await api.container.audit.flush()

    timeline = await queries(api).timeline(created["id"])
    entries = timeline.entries
    assert not timeline.truncated
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    kinds = [e.kind for e in entries]
    for kind in (
        TimelineKind.STATUS,
        TimelineKind.APPROVAL,
        TimelineKind.STORE_EVENT,
        TimelineKind.STORE_DELIVERY,
        TimelineKind.PSE_WEBHOOK,
        TimelineKind.PSE_CALL,
        TimelineKind.API_REQUEST,
    ):
        assert kind in kinds, kind
    statuses = [e.details["to"] for e in entries if e.kind is TimelineKind.STATUS]
    assert statuses == ["pending_approval", "approved", "submitting", "pending", "succeeded"]
    # Each status change once: the audit trail's copies are left out.
    assert all(e.details.get("kind") != "refund.status" for e in entries)
    approval = next(e for e in entries if e.kind is TimelineKind.APPROVAL)
    assert approval.actor == "approver1" and approval.summary == "approved at level 1"
    # The approval comes before the status change it caused, at the same instant.
    approved = next(e for e in entries if e.details.get("to") == "approved")
    assert approved.at == approval.at
    assert entries.index(approval) < entries.index(approved)
    webhook = next(e for e in entries if e.kind is TimelineKind.PSE_WEBHOOK)
    assert webhook.summary == "refund.succeeded (applied)"
    assert webhook.details["refund"]["state"] == "succeeded"
    call = next(e for e in entries if e.kind is TimelineKind.PSE_CALL)
    assert call.summary == "GET http://pse.test/refunds/x → 200 (12.5 ms)"
    delivery = next(e for e in entries if e.kind is TimelineKind.STORE_DELIVERY)
    assert delivery.summary == "attempt 1 → HTTP 503 (40 ms)"
    requests = [e for e in entries if e.kind is TimelineKind.API_REQUEST]
    assert [(e.details["method"], e.details["path"]) for e in requests] == [  # no reads
        ("POST", "/v1/refunds"),
        ("POST", f"/v1/refunds/{created['id']}/approve"),
    ]
    with pytest.raises(NotFound):
        await queries(api).timeline("rf_nope")


# -- search and export -------------------------------------------------------------


async def test_search_filters_combine(api):
    q = queries(api)
    a = await requested(api, 3_000, order_id="ORD-A")  # approved automatically
    b = await requested(api, 12_000, order_id="ORD-B")  # pending_approval
    b2 = await refund(api, b["payment_id"], 2_000)
    assert b2.status_code == 201
    b2 = b2.json()
    dollars = await requested(api, 1_500, currency="USD", amount=5_000, order_id="ORD-C")
    other = await requested(api, 3_000, pse_account="other", order_id="ORD-D")

    await api.settle()  # the refunds approved automatically were sent: pending

    async def ids(**filters: Any) -> list[str]:
        return [row.id for row in (await q.search(RefundSearch(**filters), limit=50)).items]

    everything = await ids()
    assert everything == [other["id"], dollars["id"], b2["id"], b["id"], a["id"]]  # newest first
    assert await ids(oldest_first=True) == everything[::-1]
    assert await ids(statuses=(RefundStatus.PENDING_APPROVAL,)) == [dollars["id"], b["id"]]
    assert await ids(statuses=(RefundStatus.PENDING,)) == [other["id"], b2["id"], a["id"]]
    assert await ids(statuses=(RefundStatus.PENDING_APPROVAL, RefundStatus.PENDING)) == everything
    assert await ids(pse_account="other") == [other["id"]]
    assert await ids(payment_or_order_id="ORD-B") == [b2["id"], b["id"]]
    assert await ids(payment_or_order_id=a["payment_id"]) == [a["id"]]
    assert await ids(payment_or_order_id="nothing") == []
    assert await ids(currency="JPY", amount_min=2_500, amount_max=12_000) == [
        other["id"],
        b["id"],
        a["id"],
    ]
    assert await ids(currency="USD") == [dollars["id"]]
    now = api.clock.now()
    assert await ids(created_from=now, created_to=now + timedelta(seconds=1)) == everything
    assert await ids(created_to=now) == []

    row = (await q.search(RefundSearch(payment_or_order_id="ORD-C"))).items[0]
    assert (row.order_id, row.amount, row.currency, row.status) == (
        "ORD-C",
        1_500,
        "USD",
        "pending_approval",
    )

    with pytest.raises(InvalidInput):
        await q.search(RefundSearch(amount_min=1))
    with pytest.raises(UnknownCurrency):
        await q.search(RefundSearch(currency="XXX", amount_min=1))
    with pytest.raises(InvalidInput):
        await q.search(RefundSearch(), limit=0)


async def test_stale_and_flagged_refunds_are_found(api):
    q = queries(api)
    old_open = await requested(api, 12_000)
    old_done = await requested(api, 3_000)
    await api.settle()
    await sql(api, "UPDATE refunds SET status = 'succeeded' WHERE id = $1", old_done["id"])
    api.clock.advance(hours=25)
    fresh = await requested(api, 12_000)
    stale = await q.search(RefundSearch(stale=True))
    assert [r.id for r in stale.items] == [old_open["id"]]
    await sql(
        api,
        "UPDATE refunds SET attention = 'PSE reports failed', attention_at = now() WHERE id = $1",
        fresh["id"],
    )
    flagged = await q.search(RefundSearch(needs_attention=True))
    assert [(r.id, r.attention) for r in flagged.items] == [(fresh["id"], "PSE reports failed")]


async def test_search_pages_with_cursors(api):
    made = [(await requested(api, 3_000))["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = await queries(api).search(RefundSearch(), limit=2, cursor=cursor)
        seen += [row.id for row in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == made[::-1]


async def test_the_csv_export_streams_the_filtered_set_in_chunks(api):
    made = [(await requested(api, 3_000 + i, order_id=f"ORD-{i}"))["id"] for i in range(5)]
    await requested(api, 1_500, currency="USD", amount=5_000, order_id='=HYPERLINK("x")')
    evil = await requested(api, 2_000, order_id="@SUM(A1:A9)")
    chunks = [
        chunk
        async for chunk in await queries(api).export_csv(RefundSearch(currency="JPY"), chunk_rows=2)
    ]
    # The header, then one string per query of two refunds.
    assert len(chunks) == 1 + 3
    rows = list(csv.reader(io.StringIO("".join(chunks))))
    assert rows[0] == list(CSV_HEADER)
    assert [r[0] for r in rows[1:]] == [evil["id"], *made[::-1]]
    assert rows[1][3] == "'@SUM(A1:A9)"
    assert rows[2][5:7] == ["3004", "JPY"]
    everything = "".join(
        [c async for c in await queries(api).export_csv(RefundSearch(), chunk_rows=100)]
    )
    lines = list(csv.reader(io.StringIO(everything)))
    dollars = next(line for line in lines if line[6] == "USD")
    assert dollars[3] == '\'=HYPERLINK("x")' and dollars[5] == "15.00"
    assert len(lines) == 1 + 7


async def test_an_export_is_refused_before_its_first_line(api):
    with pytest.raises(InvalidInput):
        await queries(api).export_csv(RefundSearch(amount_max=5))


# -- home: figures -------------------------------------------------------------------


async def succeed_after(api, amount: int, delay: timedelta, **payment: Any) -> str:
    made = await requested(api, amount, **payment)
    await api.settle()
    api.clock.advance(seconds=delay.total_seconds())
    api.gateway.settle(made["id"], PseRefundState.SUCCEEDED)
    await api.container.submissions.resolve(made["id"])
    assert (await get_refund(api, made["id"]))["status"] == "succeeded"
    return made["id"]


async def test_time_to_refund_per_account_and_window(api):
    start = api.clock.now()
    # Ten days ago: only in the 30-day window.
    await succeed_after(api, 3_000, timedelta(hours=10))
    api.clock.set(start + timedelta(days=10))
    for minutes in (10, 20, 30, 40, 100):
        await succeed_after(api, 3_000, timedelta(minutes=minutes))
    await succeed_after(api, 3_000, timedelta(minutes=5), pse_account="other")
    failed = await requested(api, 3_000)  # never succeeds: not counted
    assert failed["status"] == "submitting"

    figures = {(t.pse_account, t.window_days): t for t in await queries(api).time_to_refund()}
    week = figures[("fake_jp", 7)]
    assert week.refunds == 5
    assert week.median == timedelta(minutes=30)
    # percentile_cont: 95 % of the way along the sorted values, interpolated.
    assert week.p95 == timedelta(minutes=40 + 0.8 * 60)
    month = figures[("fake_jp", 30)]
    assert month.refunds == 6
    assert month.median == timedelta(minutes=35)
    assert figures[("other", 7)].median == timedelta(minutes=5)


async def test_the_refund_rate_and_todays_refunds(api):
    start = api.clock.now()
    old = await register(api, amount=90_000)  # 20 days ago: in the 30-day window only
    await refund(api, old["id"], 9_000)
    api.clock.set(start + timedelta(days=20))
    paid = await register(api, amount=50_000)
    await refund(api, paid["id"], 3_000)
    rejected = (await refund(api, paid["id"], 12_000)).json()
    r = await api.client.post(
        f"/v1/refunds/{rejected['id']}/reject", json={"note": "no"}, headers=api.auth("approver1")
    )
    assert r.status_code == 200, r.text
    await register(api, amount=1_000, currency="USD")

    rates = {(r.window_days, r.currency): r for r in await queries(api).refund_rate()}
    week = rates[(7, "JPY")]
    assert (week.payments, week.payment_amount.amount) == (1, 50_000)
    assert (week.refunds, week.refund_amount.amount) == (1, 3_000)  # the rejected one left out
    assert str(week.by_amount) == "0.06"
    month = rates[(30, "JPY")]
    assert (month.payments, month.refunds, month.refund_amount.amount) == (2, 2, 12_000)
    usd = rates[(7, "USD")]
    assert (usd.refunds, usd.by_amount, usd.by_count) == (0, 0, 0)

    await api.settle()
    today = await queries(api).refunds_today()
    assert today == {"pending": 1, "rejected": 1}
    home = await queries(api).home(await key(api, "approver1"))
    assert home.today == today
    assert home.approvals is not None and home.approvals.inbox == 0
    assert home.refund_rate == list(rates.values())
    assert (await queries(api).home(await key(api, "ops"))).approvals is None


# -- attention --------------------------------------------------------------------------


async def test_attention_queues_count_and_list_oldest_first(api):
    q = queries(api)
    offline = await requested(api, 3_000, payment_method="konbini")
    unknown = await requested(api, 3_000)
    await api.settle()
    await sql(api, "UPDATE refunds SET status = 'unknown' WHERE id = $1", unknown["id"])
    api.clock.advance(hours=25)
    flagged = await requested(api, 12_000)
    await sql(
        api, "UPDATE refunds SET attention = 'x', attention_at = now() WHERE id = $1", flagged["id"]
    )
    events = (
        await api.client.get(
            "/v1/events", params={"refund_id": flagged["id"]}, headers=api.auth("ops")
        )
    ).json()["data"]
    for event in events:
        await sql(api, "UPDATE events SET delivery_status = 'failed' WHERE id = $1", event["id"])

    counts = await q.attention_counts()
    assert (counts.stale, counts.unknown, counts.needs_attention) == (2, 1, 1)
    assert (counts.offline_required, counts.failed_deliveries) == (1, len(events))
    assert (await q.home(await key(api, "ops"))).queues == counts

    async def ids(queue: AttentionQueue) -> list[str]:
        return [row.id for row in (await q.attention(queue)).items]

    assert await ids(AttentionQueue.STALE) == [offline["id"], unknown["id"]]
    assert await ids(AttentionQueue.UNKNOWN) == [unknown["id"]]
    assert await ids(AttentionQueue.NEEDS_ATTENTION) == [flagged["id"]]
    assert await ids(AttentionQueue.OFFLINE_REQUIRED) == [offline["id"]]

    # Newest first by id (the events of one change share its millisecond).
    newest_first = sorted((e["id"] for e in events), reverse=True)
    page = await q.failed_deliveries(limit=1)
    assert [e.id for e in page.items] == newest_first[:1]
    rest = await q.failed_deliveries(limit=10, cursor=page.next_cursor)
    assert [e.id for e in rest.items] == newest_first[1:]
    assert rest.next_cursor is None


async def test_redeliver_queues_a_failed_event_and_says_who_asked(api):
    made = await requested(api, 3_000)
    event_id = (
        await api.client.get(
            "/v1/events", params={"refund_id": made["id"]}, headers=api.auth("ops")
        )
    ).json()["data"][-1]["id"]
    await sql(api, "UPDATE events SET delivery_status = 'failed' WHERE id = $1", event_id)
    ops = await key(api, "ops")
    event = await queries(api).redeliver(event_id, Actor(ops.id, ops.name))
    assert event.delivery_status is DeliveryStatus.PENDING
    assert (await queries(api).failed_deliveries()).items == []
    await api.container.audit.flush()
    records = await api.container.audit.search(refund_id=made["id"], limit=200)
    (record,) = [r for r in records if r.kind == "event.redelivered"]
    assert record.actor == "ops"
    assert record.data()["data"]["by_key_id"] == ops.id
    timeline = await queries(api).timeline(made["id"])
    assert any(e.summary == "redelivery of refund.created asked" for e in timeline.entries)
    with pytest.raises(NotFound):
        await queries(api).redeliver("evt_nope", Actor(ops.id, ops.name))


async def test_failed_deliveries_page_oldest_first_for_the_attention_page(api):
    made = await requested(api, 3_000)
    await requested(api, 12_000)  # its events have not failed: in no list
    events = (
        await api.client.get(
            "/v1/events", params={"refund_id": made["id"]}, headers=api.auth("ops")
        )
    ).json()["data"]
    for event in events:
        await sql(api, "UPDATE events SET delivery_status = 'failed' WHERE id = $1", event["id"])
    assert len(events) >= 2
    oldest_first = sorted(e["id"] for e in events)
    q = queries(api)
    seen, cursor = [], None
    while True:
        page = await q.failed_deliveries(limit=1, cursor=cursor, oldest_first=True)
        seen += [e.id for e in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == oldest_first
    newest_first = await q.failed_deliveries(limit=10)
    assert [e.id for e in newest_first.items] == oldest_first[::-1]


# -- reconciliations ---------------------------------------------------------------------


async def test_a_runs_lines_page_by_outcome(api):
    now = api.clock.now()
    run = Reconciliation(
        "rec_1", "fake_jp", "completed", now, counts={"matched": 3, "amount_mismatch": 1}
    )
    async with api.container.deps.uow() as uow:
        await uow.reconciliations.add(run)
        await uow.reconciliations.add_lines(
            [
                ReconciliationLine("rec_1", n, outcome)
                for n, outcome in enumerate(
                    ["matched", "amount_mismatch", "matched", "matched"], start=1
                )
            ]
        )
        await uow.commit()
    q = queries(api)
    assert [r.id for r in (await q.reconciliations()).items] == ["rec_1"]
    detail = await q.reconciliation("rec_1", outcome="matched", limit=2)
    assert detail.run.counts == {"matched": 3, "amount_mismatch": 1}
    assert [line.line for line in detail.lines.items] == [1, 3]
    more = await q.reconciliation(
        "rec_1", outcome="matched", limit=2, cursor=detail.lines.next_cursor
    )
    assert [line.line for line in more.lines.items] == [4]
    assert more.lines.next_cursor is None
    every = await q.reconciliation("rec_1")
    assert [line.outcome for line in every.lines.items] == [
        "matched",
        "amount_mismatch",
        "matched",
        "matched",
    ]
    with pytest.raises(InvalidInput):
        await q.reconciliation("rec_1", outcome="lost")
    with pytest.raises(InvalidInput):
        await q.reconciliation("rec_1", cursor="abc")
    with pytest.raises(NotFound):
        await q.reconciliation("rec_nope")
    assert await q.fx_report() == []
