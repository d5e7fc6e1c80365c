"""Dispute lines against our disputes, without a database: which dispute a
line goes to, and what its outcome says."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from app.domain.disputes import DisputeStatus
from app.domain.money import Money
from app.domain.reconciliation import AGREEING, DISPUTE_OUTCOMES, OUTCOMES, Outcome
from app.domain.reconciliation_disputes import (
    DisputeIndex,
    DisputeMovement,
    DisputeSnapshot,
    KnownDisputes,
    SettledDispute,
)

AT = datetime(2026, 11, 20, tzinfo=UTC)
W, R = DisputeMovement.WITHDRAWN, DisputeMovement.REINSTATED


def ours(
    name: str,
    amount: int = 5000,
    status: DisputeStatus = DisputeStatus.OPEN,
    *,
    payment: str = "pi_1",
    days: int = 0,
) -> DisputeSnapshot:
    return DisputeSnapshot(
        f"dsp_{name}",
        name,
        f"pay_{payment}",
        payment,
        Money(amount, "JPY"),
        status,
        AT + timedelta(days=days),
    )


_lines = itertools.count(2)


def line(
    dispute: str | None = None,
    payments: tuple[str, ...] = (),
    amount: int = 5000,
    movement: DisputeMovement = W,
    currency: str = "JPY",
    number: int | None = None,
) -> SettledDispute:
    return SettledDispute(
        number or next(_lines), dispute, payments, Money(amount, currency), movement, AT
    )


def index(*disputes: DisputeSnapshot, payments: dict[str, str] | None = None) -> DisputeIndex:
    found = DisputeIndex({})
    known = {d.pse_payment_id: d.payment_id for d in disputes}
    found.add(KnownDisputes(list(disputes), {**known, **(payments or {})}))
    return found


def test_dispute_outcomes_follow_the_refund_ones_and_only_matches_agree():
    assert OUTCOMES[:5] == (
        Outcome.MATCHED,
        Outcome.AMOUNT_MISMATCH,
        Outcome.STATUS_MISMATCH,
        Outcome.MISSING_IN_SERVICE,
        Outcome.MISSING_IN_FILE,
    )
    assert set(OUTCOMES[5:]) == DISPUTE_OUTCOMES
    assert AGREEING == {Outcome.MATCHED, Outcome.DISPUTE_MATCHED}


@pytest.mark.parametrize(
    ("movement", "status", "outcome"),
    [
        (W, DisputeStatus.OPEN, Outcome.DISPUTE_MATCHED),
        (W, DisputeStatus.LOST, Outcome.DISPUTE_MATCHED),
        (W, DisputeStatus.WON, Outcome.DISPUTE_MATCHED),  # taken at the start, given back later
        (W, DisputeStatus.CLOSED, Outcome.DISPUTE_MATCHED),
        (R, DisputeStatus.WON, Outcome.DISPUTE_MATCHED),
        (R, DisputeStatus.CLOSED, Outcome.DISPUTE_MATCHED),
        (R, DisputeStatus.OPEN, Outcome.DISPUTE_STATUS_MISMATCH),
        (R, DisputeStatus.LOST, Outcome.DISPUTE_STATUS_MISMATCH),
    ],
)
def test_a_reinstatement_contradicts_an_open_or_lost_dispute(movement, status, outcome):
    dispute, verdict = index(ours("du_1", status=status)).match(line("du_1", movement=movement))
    assert dispute is not None and dispute.id == "dsp_du_1"
    assert verdict.outcome is outcome and not verdict.adopt


def test_the_amount_and_its_currency_are_compared_first():
    _, verdict = index(ours("du_1", status=DisputeStatus.LOST)).match(
        line("du_1", amount=5000, movement=R, currency="USD")
    )
    assert verdict.outcome is Outcome.DISPUTE_AMOUNT_MISMATCH
    assert verdict.detail == "file 5000 USD, ours 5000 JPY; payment pay_pi_1"


def test_without_a_known_dispute_id_the_payment_and_the_amount_decide():
    found = index(ours("a", 3000), ours("b", 5000, days=1), ours("c", 5000, days=2))
    first, verdict = found.match(line("du_unknown", ("ch_9", "pi_1"), 5000, number=3))
    assert first is not None and first.id == "dsp_b" and verdict.outcome is Outcome.DISPUTE_MATCHED
    second, verdict = found.match(line(None, ("pi_1",), 5000, number=4))
    assert second is not None and second.id == "dsp_c"  # b was taken by the line before
    assert verdict.outcome is Outcome.DISPUTE_MATCHED
    # None untaken of that amount: the oldest untaken, for another amount.
    third, verdict = found.match(line(None, ("pi_1",), 5000, number=5))
    assert third is not None and third.id == "dsp_a"
    assert verdict.outcome is Outcome.DISPUTE_AMOUNT_MISMATCH
    # All taken: the oldest of the amount, whose money this file already took back.
    fourth, verdict = found.match(line(None, ("pi_1",), 5000, number=6))
    assert fourth is not None and fourth.id == "dsp_b"
    assert verdict.outcome is Outcome.DISPUTE_STATUS_MISMATCH
    assert verdict.detail == "file withdrawn again (line 3 was the first); payment pay_pi_1"
    # Given back: another direction, taken afresh.
    _, verdict = found.match(line("b", movement=R, number=7))
    assert verdict.outcome is Outcome.DISPUTE_STATUS_MISMATCH  # and b is still open
    assert verdict.detail == "file reinstated, ours open; payment pay_pi_1"


def test_the_same_dispute_id_twice_in_one_direction_is_told_apart():
    found = index(ours("du_1", status=DisputeStatus.WON))
    _, first = found.match(line("du_1", number=2))
    _, again = found.match(line("du_1", number=9))
    _, back = found.match(line("du_1", movement=R, number=10))
    assert first.outcome is Outcome.DISPUTE_MATCHED and back.outcome is Outcome.DISPUTE_MATCHED
    assert again.outcome is Outcome.DISPUTE_STATUS_MISMATCH
    assert again.detail.startswith("file withdrawn again (line 2 was the first)")


def test_what_we_do_not_know_says_how_much_we_do_know():
    found = index(payments={"pi_7": "pay_7"})
    _, on_our_payment = found.match(line("du_1", ("pi_7",)))
    assert on_our_payment.outcome is Outcome.DISPUTE_MISSING_IN_SERVICE
    assert on_our_payment.detail.startswith("payment pay_7 has no dispute of ours: the PSE took")
    _, given_back = found.match(line(None, ("pi_7",), movement=R))
    assert given_back.detail == "payment pay_7 has no dispute of ours"
    _, by_id = found.match(line("du_2"))
    assert by_id.detail == "no dispute of ours has this id"
    _, by_payment = found.match(line(None, ("pi_8",)))
    assert by_payment.detail == "no payment of ours has this id"
