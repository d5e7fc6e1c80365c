"""Refund lines judged by the database (`add_judged_lines`, one statement per
batch) get the verdicts `app.domain.reconciliation.judge` gives, line for
line: every file status against every status of ours, other amounts and
currencies, found by PSE id, by reference, or not at all."""

from __future__ import annotations

import itertools

import pytest

from app.adapters.db.reconciliation import TABLE_COLUMNS, ReconciliationRepository
from app.adapters.db.uow import PgUnitOfWork
from app.domain.models import RefundStatus
from app.domain.money import Money
from app.domain.reconciliation import (
    Outcome,
    RefundSnapshot,
    SettledStatus,
    SettlementRow,
    judge,
    settled_row,
)
from app.domain.records import ReconciliationLine
from tests.integration.test_storage_contract import AT, new_payment, new_refund, run, saved

pytestmark = pytest.mark.postgres

AMOUNTS = [(3000, "JPY"), (2999, "JPY"), (3000, "USD")]


async def _refunds(db) -> dict[RefundStatus, RefundSnapshot]:
    """One refund of ours in each status, with a PSE id; and one of another
    account that has the same PSE id as the first (never matched)."""
    pay = new_payment(amount=10_000_000)
    snapshots = {}
    refunds = []
    for i, status in enumerate(RefundStatus):
        refund = new_refund(pay, f"rf_{i:02}", 3000)
        refund.status = status
        refund.pse_refund_id = f"re_{status.value}"
        refunds.append(refund)
        snapshots[status] = RefundSnapshot(refund.id, refund.pse_refund_id, refund.amount, status)
    await saved(db, pay, *refunds)
    elsewhere = new_payment("pay_2", amount=10_000_000)
    elsewhere.pse_account, elsewhere.pse_payment_id = "other_jp", "pse_elsewhere"
    stranger = new_refund(elsewhere, "rf_other", 3000)
    stranger.pse_refund_id = "re_ghost"
    await saved(db, elsewhere, stranger)
    return snapshots


def _file_rows(snapshots: dict[RefundStatus, RefundSnapshot]) -> list[tuple]:
    """(row, the refund it should find) for every combination."""
    cases = []
    line = 1
    for ours, file_status, (amount, currency), by in itertools.product(
        snapshots.values(), SettledStatus, AMOUNTS, ("pse_id", "reference", "fallback")
    ):
        line += 1
        pse_id = {"pse_id": ours.pse_refund_id, "reference": None, "fallback": "re_nobody"}[by]
        reference = None if by == "pse_id" else ours.id
        settled = Money(20, "USD") if line % 4 == 0 else None
        # A fee is in the settlement currency, else the line's.
        fee = Money(7, "USD" if settled else currency) if line % 3 == 0 else None
        row = SettlementRow.of(
            line, pse_id, reference, Money(amount, currency), file_status, AT, fee, settled
        )
        cases.append((row, ours))
    for pse_id, reference in (("re_ghost", None), (None, "rf_other"), ("re_none", "rf_none")):
        line += 1
        row = SettlementRow.of(
            line, pse_id, reference, Money(100, "JPY"), SettledStatus.FAILED, None
        )
        cases.append((row, None))
    return cases


async def test_the_database_judges_every_line_as_the_domain_does(db):
    snapshots = await _refunds(db)
    cases = _file_rows(snapshots)
    rows = [row for row, _ in cases]
    async with PgUnitOfWork(db) as uow:
        await uow.reconciliations.add(run("rec_j", pse_account="komoju_jp"))
        ids = await uow.reconciliations.reserve_line_ids(len(rows))
        batch = await uow.reconciliations.add_judged_lines("rec_j", "komoju_jp", rows, (), ids)
        stored = await uow.reconciliations.lines("rec_j", outcome=None, limit=10_000, after_id=None)
        await uow.commit()
    assert [line.id for line in stored] == ids  # the ids given, in file order
    expected_counts: dict[str, int] = {}
    adopt = []
    for (row, ours), line in zip(cases, stored, strict=True):
        verdict = judge(row, ours)
        expected_counts[verdict.outcome] = expected_counts.get(verdict.outcome, 0) + 1
        if verdict.adopt:
            adopt.append(line.id)
        found = ours if verdict.outcome is not Outcome.MISSING_IN_SERVICE else None
        assert line == ReconciliationLine(
            "rec_j",
            row.line,
            verdict.outcome,
            row.pse_refund_id,
            row.reference,
            found.id if found else None,
            row.amount,
            row.status,
            found.amount.amount if found else None,
            found.status if found else None,
            row.currency,
            row.settled_at,
            row.fee,
            row.settlement_amount,
            row.settlement_currency,
            verdict.detail,
            line.id,
        ), row
    assert batch.counts == expected_counts
    assert batch.adopt_line_ids == adopt and len(adopt) == 6  # unknown, pending x 3 look-ups
    assert batch.first == batch.last == AT


async def test_an_adopted_line_reads_back_as_the_row_it_was(db):
    snapshots = await _refunds(db)
    row = SettlementRow.of(
        9,
        None,
        snapshots[RefundStatus.UNKNOWN].id,
        Money(3000, "JPY"),
        SettledStatus.SUCCEEDED,
        AT,
        Money(30, "USD"),
        Money(20, "USD"),
    )
    async with PgUnitOfWork(db) as uow:
        await uow.reconciliations.add(run("rec_a", pse_account="komoju_jp"))
        batch = await uow.reconciliations.add_judged_lines("rec_a", "komoju_jp", [row])
        [line] = await uow.reconciliations.lines_by_id(batch.adopt_line_ids)
        assert await uow.reconciliations.lines_by_id([]) == []
        await uow.commit()
    assert settled_row(line) == row


async def test_lines_travel_as_records_of_the_table_in_its_column_order(db):
    async with db.acquire() as conn:
        columns = await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'reconciliation_rows'::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        )
    assert tuple(c["attname"] for c in columns) == TABLE_COLUMNS


async def test_an_empty_batch_stores_nothing(db):
    async with PgUnitOfWork(db) as uow:
        batch = await uow.reconciliations.add_judged_lines("rec_e", "komoju_jp", [])
    assert batch.counts == {} and batch.adopt_line_ids == [] and batch.first is None


async def test_each_batch_is_judged_alone_in_a_transaction_and_after_it(db):
    """A connection's batches share one temporary table: a batch judges its
    own lines only, in the same transaction as the batch before it and in
    the connection's next transaction, committed or rolled back."""
    snapshots = await _refunds(db)
    ours = snapshots[RefundStatus.SUCCEEDED]

    def rows(first: int, count: int) -> list[SettlementRow]:
        return [
            SettlementRow.of(n, ours.pse_refund_id, None, ours.amount, SettledStatus.SUCCEEDED, AT)
            for n in range(first, first + count)
        ]

    async with db.acquire() as conn:
        for ending in ("rollback", "commit", "commit"):
            transaction = conn.transaction()
            await transaction.start()
            repository = ReconciliationRepository(conn)
            first = await repository.add_judged_lines("rec_t", "komoju_jp", rows(2, 3))
            second = await repository.add_judged_lines("rec_t", "komoju_jp", rows(5, 2))
            assert (first.counts, second.counts) == ({"matched": 3}, {"matched": 2}), ending
            await (transaction.rollback() if ending == "rollback" else transaction.commit())
        stored = await conn.fetchval("SELECT count(*) FROM reconciliation_rows")
    assert stored == 10  # two committed transactions of 5 lines


async def test_dispute_lines_among_refund_lines_take_the_ids_of_their_place_in_the_file(db):
    """The ids given are taken in file order across both kinds of line: a
    run's lines read back in id order are the file's lines in order."""
    snapshots = await _refunds(db)
    ours = snapshots[RefundStatus.SUCCEEDED]
    refund_lines = [2, 3, 6, 8]
    dispute_lines = [4, 5, 7, 9]
    rows = [
        SettlementRow.of(n, ours.pse_refund_id, None, ours.amount, SettledStatus.SUCCEEDED, AT)
        for n in refund_lines
    ]
    judged = [
        ReconciliationLine(
            *("rec_m", n, Outcome.DISPUTE_MISSING_IN_SERVICE, f"dp_{n}", None, None, 500),
            *("withdrawn", None, None, "JPY", AT, None, None, None, "no dispute", None),
        )
        for n in dispute_lines
    ]
    async with PgUnitOfWork(db) as uow:
        await uow.reconciliations.add(run("rec_m", pse_account="komoju_jp"))
        ids = await uow.reconciliations.reserve_line_ids(len(rows) + len(judged))
        batch = await uow.reconciliations.add_judged_lines("rec_m", "komoju_jp", rows, judged, ids)
        stored = await uow.reconciliations.lines("rec_m", outcome=None, limit=100, after_id=None)
        await uow.commit()
    assert [(line.line, line.id) for line in stored] == list(zip(range(2, 10), ids, strict=True))
    assert [line.pse_refund_id for line in stored if line.line in dispute_lines] == [
        f"dp_{n}" for n in dispute_lines
    ]
    assert batch.counts == {"matched": 4, "dispute_missing_in_service": 4}
