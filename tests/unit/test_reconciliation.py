"""What a settlement line means for one of our refunds (pure rules)."""

from __future__ import annotations

import pytest

from app.domain.models import RefundStatus
from app.domain.money import Money
from app.domain.reconciliation import (
    Outcome,
    RefundSnapshot,
    SettledStatus,
    SettlementRow,
    judge,
)


def row(status=SettledStatus.SUCCEEDED, amount=3000, currency="JPY") -> SettlementRow:
    return SettlementRow.of(2, "re_1", None, Money(amount, currency), status, None)


def ours(status=RefundStatus.SUCCEEDED, amount=3000, currency="JPY") -> RefundSnapshot:
    return RefundSnapshot("rf_1", "re_1", Money(amount, currency), status)


def test_a_line_for_a_refund_we_do_not_know_is_the_dangerous_one():
    assert judge(row(), None).outcome is Outcome.MISSING_IN_SERVICE


@pytest.mark.parametrize(
    ("file_status", "our_status"),
    [
        (SettledStatus.SUCCEEDED, RefundStatus.SUCCEEDED),
        (SettledStatus.FAILED, RefundStatus.FAILED),
        (SettledStatus.PENDING, RefundStatus.PENDING),
    ],
)
def test_agreeing_lines_are_matched_and_change_nothing(file_status, our_status):
    verdict = judge(row(file_status), ours(our_status))
    assert verdict.outcome is Outcome.MATCHED and verdict.adopt is False


@pytest.mark.parametrize("our_status", [RefundStatus.UNKNOWN, RefundStatus.PENDING])
def test_a_settled_line_resolves_an_uncertain_refund_to_succeeded(our_status):
    verdict = judge(row(SettledStatus.SUCCEEDED), ours(our_status))
    assert verdict.outcome is Outcome.MATCHED and verdict.adopt is True


@pytest.mark.parametrize(
    ("file_status", "our_status"),
    [
        (SettledStatus.SUCCEEDED, RefundStatus.FAILED),
        (SettledStatus.SUCCEEDED, RefundStatus.CANCELED),
        (SettledStatus.SUCCEEDED, RefundStatus.SUBMITTING),
        (SettledStatus.FAILED, RefundStatus.SUCCEEDED),
        (SettledStatus.FAILED, RefundStatus.UNKNOWN),
        (SettledStatus.PENDING, RefundStatus.SUCCEEDED),
    ],
)
def test_disagreeing_statuses_are_reported_never_applied(file_status, our_status):
    verdict = judge(row(file_status), ours(our_status))
    assert verdict.outcome is Outcome.STATUS_MISMATCH and verdict.adopt is False


@pytest.mark.parametrize(("amount", "currency"), [(2999, "JPY"), (3000, "USD")])
def test_another_amount_or_currency_is_an_amount_mismatch_whatever_the_status(amount, currency):
    verdict = judge(row(amount=amount, currency=currency), ours(RefundStatus.UNKNOWN))
    assert verdict.outcome is Outcome.AMOUNT_MISMATCH and verdict.adopt is False
