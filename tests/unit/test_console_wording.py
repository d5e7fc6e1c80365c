"""How the console words the approval rules, durations and rates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from app.console.wording import (
    approval_reason,
    cannot_reject,
    decision_block,
    duration,
    percent,
    slots,
)
from app.domain.models import (
    Approval,
    Decision,
    DecisionBlock,
    Refund,
    RefundReason,
    RefundStatus,
)
from app.domain.money import Money
from app.domain.policy import ApprovalCause, ApprovalReason, ApprovalTier

AT = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def waiting(required: list[int], approvals: tuple[Approval, ...] = ()) -> Refund:
    return Refund(
        id="rf_1",
        payment_id="pay_1",
        pse_account="fake_jp",
        amount=Money(150_000, "JPY"),
        status=RefundStatus.PENDING_APPROVAL,
        reason=RefundReason.REQUESTED_BY_CUSTOMER,
        note=None,
        metadata={},
        required_approvals=required,
        offline=False,
        offline_reason=None,
        auto_approved=False,
        created_by="key_store",
        created_at=AT,
        updated_at=AT,
        approvals=list(approvals),
    )


@pytest.mark.parametrize(
    ("levels", "words"),
    [
        ((), "no approval"),
        ((1,), "1 approval"),
        ((2,), "1 approval of level 2 or above"),
        ((2, 1), "2 approvals from different approvers, one of level 2 or above"),
        ((1, 1), "2 approvals from different approvers"),
        (
            (3, 2, 2),
            "3 approvals from different approvers, one of level 3 or above and "
            "two of level 2 or above",
        ),
    ],
)
def test_the_slots_a_refund_requires(levels, words):
    assert slots(levels) == words


def test_why_a_refund_waits_for_people():
    tier = ApprovalTier("JPY", 100_000, approvals=2, min_level=2)
    assert approval_reason(ApprovalReason(ApprovalCause.TIER, tier=tier), "JPY") == (
        "Above the ¥100,000 tier, which asks for 2 approvals from different approvers, "
        "one of level 2 or above."
    )
    dollars = ApprovalTier("USD", 100_000, approvals=1, min_level=1)
    assert approval_reason(ApprovalReason(ApprovalCause.TIER, tier=dollars), "EUR") == (
        "Above the $1,000.00 tier, which asks for 1 approval (EUR measured at the operator's rate)."
    )
    assert approval_reason(ApprovalReason(ApprovalCause.HIGH_RISK), "JPY") == (
        "The payment is marked high-risk."
    )
    assert approval_reason(
        ApprovalReason(ApprovalCause.DAILY_LIMIT, daily_limit=50_000), "JPY"
    ) == ("It would take the day's automatically approved refunds past the daily limit of ¥50,000.")
    assert approval_reason(ApprovalReason(ApprovalCause.NO_OPERATOR_RATE), "KWD") == (
        "No operator rate converts KWD to the currencies of the approval tiers, "
        "so one approval is required."
    )
    assert "today's would not" in approval_reason(
        ApprovalReason(ApprovalCause.EARLIER_POLICY), "JPY"
    )


def test_why_a_key_cannot_decide():
    refund = waiting([2, 1])
    self_approval = decision_block(DecisionBlock.SELF_APPROVAL, refund, "key_store", 3)
    assert "You created this refund" in self_approval and "separation of duties" in self_approval
    assert decision_block(DecisionBlock.LEVEL, refund, "key_a", 1) == (
        "Your level 1 cannot fill the open slots of levels 2 and 1."
    )
    approved = Approval("key_a", "approver1", 1, Decision.APPROVED, None, AT)
    refund = waiting([2, 1], (approved,))
    assert decision_block(DecisionBlock.ALREADY_DECIDED, refund, "key_a", 1) == (
        "You already approved it (at level 1); another approver must fill the open slot of level 2."
    )
    assert decision_block(DecisionBlock.LEVEL, refund, "key_b", 1) == (
        "Your level 1 cannot fill the open slot of level 2."
    )
    assert decision_block(DecisionBlock.LEVEL, refund, "key_ops", None) == (
        "This key has no approval level, so it cannot approve or reject refunds."
    )
    assert cannot_reject(refund, 1).startswith("Rejecting it needs level 2")


@pytest.mark.parametrize(
    ("span", "words"),
    [
        (timedelta(0), "0 s"),
        (timedelta(seconds=42), "42 s"),
        (timedelta(minutes=4, seconds=5), "4 min 5 s"),
        (timedelta(minutes=47, seconds=5), "47 min"),
        (timedelta(hours=1, minutes=30), "1 h 30 min"),
        (timedelta(hours=3), "3 h"),
        (timedelta(days=2, hours=4, minutes=9), "2 d 4 h"),
        (timedelta(seconds=-5), "0 s"),
    ],
)
def test_durations(span, words):
    assert duration(span) == words


def test_rates_as_percentages():
    assert percent(Decimal("0.0125")) == "1.25 %"
    assert percent(Decimal(1)) == "100.00 %"
    assert percent(Decimal(3) / Decimal(14)) == "21.43 %"
    assert percent(None) == "—"
