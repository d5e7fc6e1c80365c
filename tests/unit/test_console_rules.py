"""The pure rules behind the console's pages: why a refund waits for people,
who cannot decide it and why, and CSV cells a spreadsheet cannot run."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.errors import ApprovalLevelInsufficient
from app.domain.models import DecisionBlock, RiskLevel
from app.domain.money import Money
from app.domain.policy import (
    ApprovalCause,
    ApprovalReason,
    RefundPolicy,
    TrustedRate,
    open_slots,
)
from app.domain.records import RefundRow
from app.services.refund_csv import (
    CSV_HEADER,
    csv_cell,
    csv_lines,
    csv_row,
)
from tests.unit.builders import (
    APPROVER_1,
    APPROVER_1B,
    APPROVER_2,
    APPROVER_3,
    CONTRACT_TIERS,
    NOW,
    STORE,
    payment,
    request,
)

TIERED = RefundPolicy(approval_tiers=CONTRACT_TIERS)


def reasons(policy: RefundPolicy, amount: Money, *, high_risk: bool = False) -> tuple:
    return policy.approval_reasons(amount=amount, high_risk=high_risk, requested_at=NOW)


# -- why a refund waits for approval -------------------------------------------


def test_the_reason_names_the_highest_exceeded_tier() -> None:
    (reason,) = reasons(TIERED, Money(150_000, "JPY"))
    assert reason == ApprovalReason(ApprovalCause.TIER, tier=CONTRACT_TIERS[1])
    assert (reason.tier.above, reason.tier.currency) == (100_000, "JPY")
    (reason,) = reasons(TIERED, Money(12_000, "JPY"))
    assert reason.tier == CONTRACT_TIERS[0]


def test_a_high_risk_payment_is_a_reason_alone_or_beside_a_tier() -> None:
    assert reasons(TIERED, Money(3_000, "JPY"), high_risk=True) == (
        ApprovalReason(ApprovalCause.HIGH_RISK),
    )
    assert [r.cause for r in reasons(TIERED, Money(12_000, "JPY"), high_risk=True)] == [
        ApprovalCause.TIER,
        ApprovalCause.HIGH_RISK,
    ]


def test_without_tier_or_risk_the_daily_limit_explains_the_approval() -> None:
    policy = RefundPolicy(approval_tiers=CONTRACT_TIERS, daily_auto_approve_limit={"JPY": 5_000})
    assert reasons(policy, Money(3_000, "JPY")) == (
        ApprovalReason(ApprovalCause.DAILY_LIMIT, daily_limit=5_000),
    )


def test_tiers_of_another_currency_without_an_operator_rate_are_a_reason() -> None:
    assert reasons(TIERED, Money(1_500, "USD")) == (ApprovalReason(ApprovalCause.NO_OPERATOR_RATE),)


def test_a_tier_of_another_currency_applies_through_the_operators_rate() -> None:
    policy = RefundPolicy(
        approval_tiers=CONTRACT_TIERS,
        rates=(TrustedRate("USD", "JPY", Decimal("150"), date(2026, 11, 1)),),
    )
    (reason,) = reasons(policy, Money(80_000, "USD"))  # $800 = ¥120,000
    assert reason.tier == CONTRACT_TIERS[1]


def test_a_rate_too_old_at_the_request_leaves_the_amount_unmeasured() -> None:
    policy = RefundPolicy(
        approval_tiers=CONTRACT_TIERS,
        rates=(TrustedRate("USD", "JPY", Decimal("150"), date(2026, 1, 1)),),
        rate_max_age_days=30,
    )
    assert [r.cause for r in reasons(policy, Money(80_000, "USD"))] == [
        ApprovalCause.NO_OPERATOR_RATE
    ]


def test_a_policy_that_no_longer_asks_says_so() -> None:
    assert reasons(RefundPolicy(), Money(3_000, "JPY")) == (
        ApprovalReason(ApprovalCause.EARLIER_POLICY),
    )


@given(
    amount=st.integers(min_value=1, max_value=10**9),
    high_risk=st.booleans(),
    today=st.integers(min_value=0, max_value=10**9),
    limit=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
)
def test_every_refund_the_policy_sends_to_approval_has_a_reason_of_it(
    amount: int, high_risk: bool, today: int, limit: int | None
) -> None:
    policy = RefundPolicy(
        approval_tiers=CONTRACT_TIERS,
        daily_auto_approve_limit={} if limit is None else {"JPY": limit},
    )
    money = Money(amount, "JPY")
    decision = policy.decide(
        amount=money,
        captured_at=NOW,
        payment_method="card",
        high_risk=high_risk,
        now=NOW,
        window_days=None,
        auto_approved_today=today,
    )
    if not decision.needs_approval:
        return
    found = policy.approval_reasons(amount=money, high_risk=high_risk, requested_at=NOW)
    causes = {r.cause for r in found}
    assert ApprovalCause.EARLIER_POLICY not in causes
    tier = next((r.tier for r in found if r.cause is ApprovalCause.TIER), None)
    if tier is not None:
        assert tier.required_levels() == decision.required_approvals
    assert (ApprovalCause.HIGH_RISK in causes) is high_risk


# -- who cannot decide ------------------------------------------------------------


def test_open_slots_are_what_the_granted_levels_leave() -> None:
    assert open_slots((2, 1), []) == (2, 1)
    assert open_slots((2, 1), [1]) == (2,)
    assert open_slots((2, 1), [3]) == (1,)
    assert open_slots((2, 1), [1, 2]) == ()


def test_the_creator_cannot_decide_its_own_refund() -> None:
    refund = request(payment(amount=200_000), 150_000, policy=TIERED, created_by=STORE)
    assert refund.decision_block(STORE.id, 3) is DecisionBlock.SELF_APPROVAL


def test_a_level_that_fills_no_open_slot_cannot_decide() -> None:
    pay = payment(amount=200_000)
    refund = request(pay, 150_000, policy=TIERED)
    assert refund.required_approvals == [2, 1]
    # Level 1 fills the any-level slot, but may not veto.
    assert refund.decision_block(APPROVER_1.actor.id, 1) is None
    assert refund.reject_level == 2
    refund.approve(pay, APPROVER_1, None, NOW)
    assert refund.open_slots == (2,)
    assert refund.decision_block(APPROVER_1B.actor.id, 1) is DecisionBlock.LEVEL
    assert refund.decision_block(APPROVER_2.actor.id, 2) is None
    assert refund.decision_block("key_without_level", None) is DecisionBlock.LEVEL


def test_an_approver_that_approved_cannot_decide_again() -> None:
    pay = payment(amount=200_000)
    refund = request(pay, 150_000, policy=TIERED)
    refund.approve(pay, APPROVER_3, None, NOW)
    assert refund.decision_block(APPROVER_3.actor.id, 3) is DecisionBlock.ALREADY_DECIDED


def test_the_block_agrees_with_approve() -> None:
    pay = payment(amount=200_000, risk_level=RiskLevel.NORMAL)
    refund = request(pay, 150_000, policy=TIERED)
    refund.approve(pay, APPROVER_1, None, NOW)
    assert refund.decision_block(APPROVER_1B.actor.id, 1) is DecisionBlock.LEVEL
    with pytest.raises(ApprovalLevelInsufficient):
        refund.approve(pay, APPROVER_1B, None, NOW)


# -- CSV cells ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["=1+2", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"])
def test_a_cell_that_would_start_a_formula_is_kept_as_text(text: str) -> None:
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["ORD-1", "rf_01", "", "a=b", "1-2"])
def test_other_cells_are_unchanged(text: str) -> None:
    assert csv_cell(text) == text


def test_a_missing_value_is_an_empty_cell() -> None:
    assert csv_cell(None) == ""


@given(st.text())
def test_no_cell_starts_a_formula(text: str) -> None:
    assert not csv_cell(text).startswith(("=", "+", "-", "@", "\t", "\r"))


def row(**overrides: object) -> RefundRow:
    values: dict = {
        "id": "rf_1",
        "created_at": datetime(2026, 11, 27, 8, 0, tzinfo=UTC),
        "payment_id": "pay_1",
        "order_id": '=HYPERLINK("http://evil","x")',
        "pse_account": "fake_jp",
        "amount": 1500,
        "currency": "USD",
        "status": "succeeded",
        "reason": "requested_by_customer",
        "pse_refund_id": None,
        "failure_code": None,
        "updated_at": datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
    }
    values.update(overrides)
    return RefundRow(**values)


def test_an_export_row_has_major_units_utc_times_and_neutralised_text() -> None:
    text = csv_lines([list(CSV_HEADER), csv_row(row())])
    header, line = list(csv.reader(io.StringIO(text)))
    assert header == list(CSV_HEADER)
    assert line == [
        "rf_1",
        "2026-11-27T08:00:00Z",
        "pay_1",
        '\'=HYPERLINK("http://evil","x")',
        "fake_jp",
        "15.00",
        "USD",
        "succeeded",
        "requested_by_customer",
        "",
        "",
        "2026-11-27T09:00:00Z",
    ]
    assert text.endswith("\r\n")


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [(12_000, "JPY", "12000"), (1_500, "USD", "15.00"), (1_500, "KWD", "1.500")],
)
def test_export_amounts_follow_the_currency_exponent(
    amount: int, currency: str, shown: str
) -> None:
    assert csv_row(row(amount=amount, currency=currency))[5] == shown
