"""Dispute lines of settlement files (chargeback withdrawals and
reinstatements), on PostgreSQL: matched to our disputes by the PSE's dispute
id or by the disputed payment and amount, reported under their own outcomes
in the counts, the lines, the API and the report CSV, and changing nothing.

Disputes are written straight into the `disputes` table here: what the
reconciliation reads, whichever service records them."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.adapters.db.reconciliation import ReconciliationRepository
from tests.api.helpers import get_payment, get_refund, refund, register
from tests.integration.test_reconciliation import lines, reconcile, succeeded_refund, upload

pytestmark = pytest.mark.postgres

GENERIC = (
    "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
    "settlement_amount,settlement_currency,pse_dispute_id,pse_payment_id\n"
)
STRIPE = (
    "balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,"
    "source_id,customer_facing_amount,customer_facing_currency,charge_id,payment_intent_id\n"
)
OPENED = datetime(2026, 11, 20, tzinfo=UTC)


async def add_dispute(
    api,
    payment: dict[str, Any],
    pse_dispute_id: str,
    amount: int,
    *,
    status: str = "open",
    reason: str | None = "fraudulent",
    due: datetime | None = None,
    opened_at: datetime = OPENED,
) -> str:
    """A dispute row as the disputes service writes one (its counters left alone)."""
    dispute_id = f"dsp_{uuid.uuid4().hex[:16]}"
    closed = None if status == "open" else opened_at + timedelta(days=5)
    async with api.container.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO disputes (id, payment_id, pse_account, pse_dispute_id, amount, "
            "currency, reason, status, counted_amount, source, opened_at, closed_at, "
            "evidence_due_by, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pse', $10, $11, $12, $10, $10)",
            dispute_id,
            payment["id"],
            payment["pse_account"],
            pse_dispute_id,
            amount,
            payment["currency"],
            reason,
            status,
            amount if status == "lost" else 0,
            opened_at,
            closed,
            due,
        )
    return dispute_id


async def dispute_rows(api) -> list[dict[str, Any]]:
    async with api.container.pool.acquire() as conn:
        return [
            dict(r) for r in await conn.fetch("SELECT id, status, amount, updated_at FROM disputes")
        ]


def generic(*rows: str) -> str:
    return GENERIC + "".join(row + "\n" for row in rows)


async def test_generic_dispute_lines_are_matched_by_dispute_id_or_payment_and_amount(api):
    _, settled = await succeeded_refund(api)
    by_id = await register(api)
    d_by_id = await add_dispute(api, by_id, "du_1", 5000)
    by_payment = await register(api)
    d_by_payment = await add_dispute(api, by_payment, "manual-1", 3000)
    lost = await register(api)
    d_lost = await add_dispute(api, lost, "du_lost", 4000, status="lost")
    won = await register(api)
    d_won = await add_dispute(api, won, "du_won", 2000, status="won")
    other_amount = await register(api)
    d_other = await add_dispute(api, other_amount, "du_5", 5000)
    undisputed = await register(api)
    before = await dispute_rows(api)
    text = generic(
        f"{settled['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,,,,,",
        ",,dispute,-5000,JPY,,2026-11-27T09:00:00Z,1500,,,du_1,",
        f",,dispute,3000,JPY,,2026-11-27T09:10:00Z,,,,,{by_payment['pse_payment_id']}",
        f",,dispute_reversal,4000,JPY,,2026-11-27T09:20:00Z,,,,du_lost,{lost['pse_payment_id']}",
        ",,dispute_reversal,2000,JPY,,2026-11-27T09:30:00Z,,,,du_won,",
        ",,dispute,4000,JPY,,2026-11-27T09:40:00Z,,,,du_5,",
        f",,dispute,9000,JPY,,2026-11-27T09:50:00Z,,,,du_new,{undisputed['pse_payment_id']}",
        ",,dispute,100,JPY,,2026-11-27T10:00:00Z,,,,du_nobody,",
        "ch_1,,charge,9000,JPY,succeeded,2026-11-27T10:10:00Z,,,,,",
    )
    done = await reconcile(api, text)
    assert done.status == "completed", done.error
    assert done.rows_total == 8  # the charge is skipped
    assert done.counts == {
        "matched": 1,
        "amount_mismatch": 0,
        "status_mismatch": 0,
        "missing_in_service": 0,
        "missing_in_file": 0,
        "dispute_matched": 3,
        "dispute_amount_mismatch": 1,
        "dispute_status_mismatch": 1,
        "dispute_missing_in_service": 2,
    }
    every = await lines(api, done.id)
    assert [line.line for line in every] == [2, 3, 4, 5, 6, 7, 8, 9]  # file order
    by_line = {line.line: line for line in every}
    withdrawn = by_line[3]
    assert withdrawn.outcome == "dispute_matched"
    assert (withdrawn.pse_refund_id, withdrawn.refund_id) == ("du_1", d_by_id)
    assert (withdrawn.file_status, withdrawn.our_status) == ("withdrawn", "open")
    assert (withdrawn.file_amount, withdrawn.our_amount, withdrawn.fee) == (5000, 5000, 1500)
    assert withdrawn.detail == f"payment {by_id['id']}"
    matched_by_payment = by_line[4]
    assert matched_by_payment.outcome == "dispute_matched"
    assert matched_by_payment.refund_id == d_by_payment
    assert matched_by_payment.pse_refund_id is None
    assert matched_by_payment.reference == by_payment["pse_payment_id"]
    reinstated_lost = by_line[5]
    assert reinstated_lost.outcome == "dispute_status_mismatch"
    assert reinstated_lost.refund_id == d_lost
    assert reinstated_lost.detail == f"file reinstated, ours lost; payment {lost['id']}"
    assert (by_line[6].outcome, by_line[6].refund_id) == ("dispute_matched", d_won)
    mismatch = by_line[7]
    assert (mismatch.outcome, mismatch.refund_id) == ("dispute_amount_mismatch", d_other)
    assert mismatch.detail == f"file 4000 JPY, ours 5000 JPY; payment {other_amount['id']}"
    unknown_on_our_payment = by_line[8]
    assert unknown_on_our_payment.outcome == "dispute_missing_in_service"
    assert unknown_on_our_payment.refund_id is None
    assert unknown_on_our_payment.detail.startswith(
        f"payment {undisputed['id']} has no dispute of ours: the PSE took the money back"
    )
    assert by_line[9].detail == "no dispute of ours has this id"
    # A file changes no dispute, and the refund line is matched as before.
    assert await dispute_rows(api) == before
    assert by_line[2].outcome == "matched" and by_line[2].refund_id == settled["id"]
    assert (await get_payment(api, undisputed["id"]))["refundable_amount"] == 50000


async def test_two_lines_of_one_payment_and_amount_go_to_two_disputes_a_third_is_told(api):
    paid = await register(api)
    first = await add_dispute(api, paid, "case-a", 2000, opened_at=OPENED)
    second = await add_dispute(api, paid, "case-b", 2000, opened_at=OPENED + timedelta(days=1))
    pse_payment = paid["pse_payment_id"]
    text = generic(
        f",,dispute,2000,JPY,,2026-11-27T09:00:00Z,,,,,{pse_payment}",
        f",,dispute,2000,JPY,,2026-11-27T09:10:00Z,,,,,{pse_payment}",
        f",,dispute,2000,JPY,,2026-11-27T09:20:00Z,,,,,{pse_payment}",
    )
    done = await reconcile(api, text)
    every = await lines(api, done.id)
    assert [line.refund_id for line in every] == [first, second, first]
    # A third: no dispute of that payment is left whose money was not taken yet.
    assert [line.outcome for line in every] == [
        "dispute_matched",
        "dispute_matched",
        "dispute_status_mismatch",
    ]
    assert every[2].detail == f"file withdrawn again (line 2 was the first); payment {paid['id']}"


async def test_another_accounts_dispute_and_payment_are_not_matched(api):
    theirs = await register(api, pse_account="other", pse_payment_id="pay_shared")
    await add_dispute(api, theirs, "du_theirs", 5000)
    text = generic(
        ",,dispute,5000,JPY,,2026-11-27T09:00:00Z,,,,du_theirs,",
        ",,dispute,5000,JPY,,2026-11-27T09:00:00Z,,,,,pay_shared",
    )
    done = await reconcile(api, text, account="fake_jp")
    assert done.counts["dispute_missing_in_service"] == 2
    assert [line.detail for line in await lines(api, done.id)] == [
        "no dispute of ours has this id",
        "no payment of ours has this id",
    ]


async def test_a_stripe_export_reports_dispute_withdrawals_and_reinstatements(make_api):
    api = await make_api(policy={})
    by_intent = await register(api, pse_payment_id="pi_3Q2w", currency="USD", amount=10000)
    d_open = await add_dispute(api, by_intent, "du_1Q2w", 5000)
    by_charge = await register(api, pse_payment_id="ch_3Q9x", currency="USD", amount=10000)
    # Reported by a person with an id of their own: found by the charge and the amount.
    d_manual = await add_dispute(api, by_charge, "ticket-77", 2500, status="won")
    text = STRIPE + (
        "txn_1,2026-11-27 08:00:00,usd,-50.00,15.00,-65.00,dispute,du_1Q2w,50.00,usd,"
        "ch_3Q2w,pi_3Q2w\n"
        "txn_2,2026-11-28 08:00:00,usd,-25.00,15.00,-40.00,dispute,du_9Z,25.00,usd,ch_3Q9x,\n"
        "txn_3,2026-11-29 08:00:00,usd,25.00,0.00,25.00,dispute_reversal,du_9Z,25.00,usd,"
        "ch_3Q9x,\n"
        "txn_4,2026-11-29 09:00:00,usd,50.00,0.00,50.00,dispute_reversal,du_1Q2w,50.00,usd,"
        "ch_3Q2w,pi_3Q2w\n"
        "txn_5,2026-11-29 10:00:00,usd,100.00,3.20,96.80,charge,ch_1,100.00,usd,ch_1,\n"
    )
    done = await reconcile(api, text)
    assert done.file_format == "stripe_itemized" and done.rows_total == 4
    every = await lines(api, done.id)
    assert [(line.outcome, line.refund_id) for line in every] == [
        ("dispute_matched", d_open),
        ("dispute_matched", d_manual),
        ("dispute_matched", d_manual),
        # Reinstated at Stripe, still open here: the dispute was won, we do not know it.
        ("dispute_status_mismatch", d_open),
    ]
    first = every[0]
    assert (first.pse_refund_id, first.reference) == ("du_1Q2w", "pi_3Q2w")
    assert (first.file_amount, first.currency, first.fee) == (5000, "USD", 1500)
    assert (first.settlement_amount, first.settlement_currency) == (5000, "USD")
    assert every[1].reference == "ch_3Q9x"
    assert every[3].detail == f"file reinstated, ours open; payment {by_intent['id']}"


async def test_the_api_the_report_and_the_run_list_show_dispute_outcomes(api):
    paid = await register(api)
    await add_dispute(api, paid, "du_api", 5000)
    text = generic(
        ",,dispute,5000,JPY,,2026-11-27T09:00:00Z,,,,du_api,",
        ",,dispute,700,JPY,,2026-11-27T09:10:00Z,,,,du_ghost,",
    )
    rec_id = (await upload(api, text))["id"]
    body = (await api.client.get(f"/v1/reconciliations/{rec_id}", headers=api.auth("ops"))).json()
    assert body["counts"]["dispute_matched"] == 1
    assert body["counts"]["dispute_missing_in_service"] == 1
    r = await api.client.get(
        f"/v1/reconciliations/{rec_id}",
        params={"outcome": "dispute_missing_in_service"},
        headers=api.auth("ops"),
    )
    assert r.status_code == 200, r.text
    (ghost,) = r.json()["rows"]["data"]
    assert ghost["pse_refund_id"] == "du_ghost" and ghost["file_status"] == "withdrawn"
    assert ghost["detail"] == "no dispute of ours has this id"
    report = await api.client.get(
        f"/v1/reconciliations/{rec_id}/report.csv", headers=api.auth("ops")
    )
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert [row["outcome"] for row in rows] == ["dispute_matched", "dispute_missing_in_service"]
    assert rows[0]["file_status"] == "withdrawn" and rows[0]["our_status"] == "open"
    listed = (await api.client.get("/v1/reconciliations", headers=api.auth("ops"))).json()
    assert listed["data"][0]["counts"]["dispute_matched"] == 1


async def test_dispute_lines_cost_one_query_per_batch_that_holds_some(api, monkeypatch):
    monkeypatch.setattr("app.services.reconciliation.BATCH", 2)
    calls: list[tuple[list[str], list[str]]] = []
    original = ReconciliationRepository.settlement_disputes

    async def counted(self, pse_account, pse_dispute_ids, pse_payment_ids):
        calls.append((list(pse_dispute_ids), list(pse_payment_ids)))
        return await original(self, pse_account, pse_dispute_ids, pse_payment_ids)

    monkeypatch.setattr(ReconciliationRepository, "settlement_disputes", counted)
    _, a = await succeeded_refund(api)
    _, b = await succeeded_refund(api)
    paid = await register(api)
    dispute_id = await add_dispute(api, paid, "du_batch", 5000)
    refunds_only = generic(
        f"{a['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,,,,,",
        f"{b['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:10:00Z,,,,,",
        "re_ghost,,refund,100,JPY,succeeded,2026-11-27T08:20:00Z,,,,,",
    )
    done = await reconcile(api, refunds_only)
    assert done.counts["matched"] == 2 and calls == []
    mixed = generic(
        f"{a['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,,,,,",
        f"{b['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:10:00Z,,,,,",
        "re_ghost,,refund,100,JPY,succeeded,2026-11-27T08:20:00Z,,,,,",
        ",,dispute,5000,JPY,,2026-11-27T08:30:00Z,,,,du_batch,",
        f",,dispute_reversal,5000,JPY,,2026-11-28T08:30:00Z,,,,,{paid['pse_payment_id']}",
    )
    done = await reconcile(api, mixed)
    assert calls == [(["du_batch"], []), ([], [paid["pse_payment_id"]])]
    every = await lines(api, done.id)
    assert [line.line for line in every] == [2, 3, 4, 5, 6]
    assert [line.refund_id for line in every[3:]] == [dispute_id, dispute_id]
    assert done.counts["dispute_matched"] == 1 and done.counts["dispute_status_mismatch"] == 1


async def test_a_dispute_line_leaves_refunds_and_fees_alone(api):
    paid = await register(api)
    made = (await refund(api, paid["id"], 3000)).json()
    await api.settle()
    await add_dispute(api, paid, "du_fee", 5000)
    text = generic(",,dispute,5000,JPY,,2026-11-27T09:00:00Z,1500,,,du_fee,")
    done = await reconcile(api, text)
    assert done.counts["dispute_matched"] == 1 and done.adopted == 0
    now = await get_refund(api, made["id"])
    assert now["fee_amount"] is None
