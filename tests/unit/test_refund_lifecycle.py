"""A refund's life: creation under the policy, the transition table, approvals, the
PSE's reports, and the payment's counters through all of it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.errors import (
    AlreadyDecided,
    AmountExceedsLimit,
    AmountExceedsRefundable,
    ApprovalLevelInsufficient,
    CurrencyMismatch,
    InvalidState,
    SelfApprovalForbidden,
)
from app.domain.models import (
    TRANSITIONS,
    Actor,
    Applied,
    Approver,
    Decision,
    Payment,
    Refund,
    RefundReason,
    RefundStatus,
    RiskLevel,
)
from app.domain.money import Money
from app.domain.policy import ApprovalTier, RefundPolicy
from app.domain.pse import PseRefundState
from tests.unit.builders import (
    APPROVER_1,
    APPROVER_1B,
    APPROVER_2,
    APPROVER_2B,
    APPROVER_3,
    CAPTURED_AT,
    CONTRACT_TIERS,
    LATER,
    NOW,
    OPS,
    STORE,
    counters,
    payment,
    refund_in,
    request,
    seen,
)

S = RefundStatus
ALL = list(RefundStatus)
FINAL = [S.SUCCEEDED, S.FAILED, S.REJECTED, S.CANCELED, S.OFFLINE_PAID]
PAST_WINDOW = CAPTURED_AT + timedelta(days=181)
TIERED = RefundPolicy(approval_tiers=CONTRACT_TIERS)
# A tier that needs two approvers, one of them of level 2 or higher.
TWO_APPROVERS = RefundPolicy(
    approval_tiers=(ApprovalTier("JPY", above=0, approvals=2, min_level=2),)
)

# The "next" column of the contract's status table.
CONTRACT_TRANSITIONS: dict[RefundStatus, set[RefundStatus]] = {
    S.PENDING_APPROVAL: {S.APPROVED, S.REJECTED, S.CANCELED, S.OFFLINE_REQUIRED},
    S.OFFLINE_REQUIRED: {S.OFFLINE_PAID, S.CANCELED},
    # Back to pending_approval: held, because a dispute opened on the payment.
    S.APPROVED: {S.SUBMITTING, S.CANCELED, S.OFFLINE_REQUIRED, S.PENDING_APPROVAL},
    S.SUBMITTING: {S.PENDING, S.SUCCEEDED, S.FAILED, S.UNKNOWN, S.OFFLINE_REQUIRED},
    S.UNKNOWN: {S.PENDING, S.SUCCEEDED, S.FAILED},
    S.PENDING: {S.SUCCEEDED, S.FAILED},
    S.SUCCEEDED: set(),
    S.FAILED: set(),
    S.REJECTED: set(),
    S.CANCELED: set(),
    S.OFFLINE_PAID: set(),
}


def event_types(refund: Refund) -> list[str]:
    return [event.type for event in refund.events]


# -- the transition table ----------------------------------------------------------


def test_the_transition_table_is_the_contracts() -> None:
    assert {status: set(nexts) for status, nexts in TRANSITIONS.items()} == CONTRACT_TRANSITIONS


@pytest.mark.parametrize("status", FINAL)
def test_a_final_status_is_final(status: RefundStatus) -> None:
    assert status.is_final


@pytest.mark.parametrize("status", sorted(set(ALL) - set(FINAL)))
def test_a_status_with_a_way_out_is_not_final(status: RefundStatus) -> None:
    assert not status.is_final


@pytest.mark.parametrize("status", ALL)
def test_can_move_to_answers_from_the_contracts_table(status: RefundStatus) -> None:
    _, refund = refund_in(status)
    assert {to for to in ALL if refund.can_move_to(to)} == CONTRACT_TRANSITIONS[status]


# Each public method that moves a refund, and the status it moves to.
Move = Callable[[Payment, Refund], None]
MOVES: dict[str, tuple[Move, RefundStatus]] = {
    "approve": (lambda p, r: r.approve(p, APPROVER_3, "fine", LATER), S.APPROVED),
    "reject": (lambda p, r: r.reject(p, APPROVER_3, "no", LATER), S.REJECTED),
    "cancel": (lambda p, r: r.cancel(p, STORE, LATER), S.CANCELED),
    "mark_offline_paid": (
        lambda p, r: r.mark_offline_paid(p, OPS, "bank-ref-9", LATER, LATER),
        S.OFFLINE_PAID,
    ),
    "start_submission": (lambda p, r: r.start_submission(p, LATER), S.SUBMITTING),
    "require_offline": (
        lambda p, r: r.require_offline(p, "card_expired", "card expired", LATER, "pse"),
        S.OFFLINE_REQUIRED,
    ),
    "decline": (lambda p, r: r.decline(p, "declined", "declined", LATER, "pse"), S.FAILED),
}


@pytest.mark.parametrize("status", ALL)
@pytest.mark.parametrize("method", sorted(MOVES))
def test_a_public_method_moves_only_along_the_contracts_transitions(
    method: str, status: RefundStatus
) -> None:
    move, target = MOVES[method]
    pay, refund = refund_in(status)
    before = counters(pay)
    history = list(refund.history)
    if target in CONTRACT_TRANSITIONS[status]:
        move(pay, refund)
        assert refund.status is target
        assert refund.history[-1].status is target
        assert refund.history[-1].at == LATER
        assert len(refund.events) == 1
    else:
        with pytest.raises(InvalidState) as info:
            move(pay, refund)
        assert info.value.code == "invalid_state"
        assert refund.status is status
        assert refund.history == history
        assert refund.events == []
        assert counters(pay) == before


@pytest.mark.parametrize("status", ALL)
def test_only_a_refund_being_submitted_can_become_unknown(status: RefundStatus) -> None:
    pay, refund = refund_in(status)
    refund.mark_unknown(pay, "timeout after retries", LATER)
    if status is S.SUBMITTING:
        assert refund.status is S.UNKNOWN
        assert refund.history[-1].detail == "timeout after retries"
    else:
        assert refund.status is status
        assert refund.events == []


@pytest.mark.parametrize("status", FINAL)
def test_a_final_status_never_moves_whatever_is_tried(status: RefundStatus) -> None:
    pay, refund = refund_in(status)
    before = counters(pay)
    for move, _ in MOVES.values():
        with contextlib.suppress(InvalidState):
            move(pay, refund)
    refund.mark_unknown(pay, "timeout", LATER)
    for state in PseRefundState:
        refund.apply_pse(pay, seen(state), LATER, "pse")
    assert refund.status is status
    assert [change.status for change in refund.history].count(status) == 1
    assert counters(pay) == before


# -- apply_pse: what the PSE says, applied monotonically ---------------------------------

P = PseRefundState
CHANGED, UNCHANGED, CONTRADICTS = Applied.CHANGED, Applied.UNCHANGED, Applied.CONTRADICTS
APPLY_PSE_TABLE: dict[RefundStatus, dict[PseRefundState, tuple[Applied, RefundStatus]]] = {
    S.PENDING_APPROVAL: {s: (CONTRADICTS, S.PENDING_APPROVAL) for s in P},
    S.OFFLINE_REQUIRED: {s: (CONTRADICTS, S.OFFLINE_REQUIRED) for s in P},
    S.APPROVED: {
        P.PENDING: (CHANGED, S.PENDING),
        P.SUCCEEDED: (CHANGED, S.SUCCEEDED),
        P.FAILED: (CHANGED, S.FAILED),
    },
    S.SUBMITTING: {
        P.PENDING: (CHANGED, S.PENDING),
        P.SUCCEEDED: (CHANGED, S.SUCCEEDED),
        P.FAILED: (CHANGED, S.FAILED),
    },
    S.UNKNOWN: {
        P.PENDING: (CHANGED, S.PENDING),
        P.SUCCEEDED: (CHANGED, S.SUCCEEDED),
        P.FAILED: (CHANGED, S.FAILED),
    },
    S.PENDING: {
        P.PENDING: (UNCHANGED, S.PENDING),
        P.SUCCEEDED: (CHANGED, S.SUCCEEDED),
        P.FAILED: (CHANGED, S.FAILED),
    },
    S.SUCCEEDED: {
        P.PENDING: (UNCHANGED, S.SUCCEEDED),
        P.SUCCEEDED: (UNCHANGED, S.SUCCEEDED),
        P.FAILED: (CONTRADICTS, S.SUCCEEDED),
    },
    S.FAILED: {
        # A refund we recorded as failed (and whose reserve we freed) that the PSE
        # reports as processing or paid needs a person.
        P.PENDING: (CONTRADICTS, S.FAILED),
        P.SUCCEEDED: (CONTRADICTS, S.FAILED),
        P.FAILED: (UNCHANGED, S.FAILED),
    },
    S.REJECTED: {s: (CONTRADICTS, S.REJECTED) for s in P},
    S.CANCELED: {s: (CONTRADICTS, S.CANCELED) for s in P},
    S.OFFLINE_PAID: {s: (CONTRADICTS, S.OFFLINE_PAID) for s in P},
}


@pytest.mark.parametrize("state", list(PseRefundState))
@pytest.mark.parametrize("status", ALL)
def test_a_pse_report_moves_the_refund_forward_or_is_reported_never_backward(
    status: RefundStatus, state: PseRefundState
) -> None:
    applied, after = APPLY_PSE_TABLE[status][state]
    pay, refund = refund_in(status)
    before = counters(pay)
    assert refund.apply_pse(pay, seen(state), LATER, "pse") is applied
    assert refund.status is after
    needs_attention = event_types(refund).count("refund.needs_attention")
    assert needs_attention == (1 if applied is CONTRADICTS else 0)
    if applied is not CHANGED:
        assert counters(pay) == before


def test_a_late_pending_after_success_changes_nothing() -> None:
    pay, refund = refund_in(S.SUCCEEDED)
    before = counters(pay)
    assert refund.apply_pse(pay, seen(P.PENDING), LATER, "webhook") is UNCHANGED
    assert refund.status is S.SUCCEEDED
    assert refund.events == []
    assert counters(pay) == before


def test_a_failure_reported_after_success_is_a_contradiction_that_needs_attention() -> None:
    pay, refund = refund_in(S.SUCCEEDED)
    before = counters(pay)
    report = seen(P.FAILED, failure_code="expired_card", failure_message="card expired")
    assert refund.apply_pse(pay, report, LATER, "webhook") is CONTRADICTS
    assert refund.status is S.SUCCEEDED
    assert refund.failure_code is None
    assert counters(pay) == before == (3_000, 0, 9_000)
    (event,) = refund.events
    assert event.type == "refund.needs_attention"
    assert event.at == LATER
    assert "failed" in (event.detail or "")


def test_a_contradiction_keeps_the_refund_on_the_attention_list_with_the_pse_code() -> None:
    pay, refund = refund_in(S.SUCCEEDED)
    refund.apply_pse(pay, seen(P.FAILED, failure_code="account_closed"), LATER, "webhook")
    assert refund.attention is not None and "account_closed" in refund.attention
    assert refund.attention_at == LATER


def test_acknowledging_attention_clears_it_without_moving_the_refund() -> None:
    _pay, refund = refund_in(S.PENDING)
    refund.flag("stale: still pending after 24 h", LATER)
    assert refund.acknowledge_attention(LATER) == "stale: still pending after 24 h"
    assert refund.attention is None and refund.attention_at is None
    assert refund.status is S.PENDING
    with pytest.raises(InvalidState):
        refund.acknowledge_attention(LATER)


def test_a_repeated_success_report_is_applied_once() -> None:
    pay, refund = refund_in(S.SUBMITTING)
    assert refund.apply_pse(pay, seen(P.SUCCEEDED), NOW, "pse") is CHANGED
    assert refund.apply_pse(pay, seen(P.SUCCEEDED), LATER, "webhook") is UNCHANGED
    assert counters(pay) == (3_000, 0, 9_000)
    assert [c.status for c in refund.history].count(S.SUCCEEDED) == 1


def test_a_refund_the_pse_has_although_never_recorded_as_sent_is_recorded_as_submitted_first() -> (
    None
):
    pay, refund = refund_in(S.APPROVED)
    assert refund.apply_pse(pay, seen(P.SUCCEEDED), LATER, "pse") is CHANGED
    assert [c.status for c in refund.history] == [S.APPROVED, S.SUBMITTING, S.SUCCEEDED]
    assert event_types(refund) == ["refund.submitted", "refund.succeeded"]


def test_a_pse_report_for_a_refund_awaiting_approval_is_flagged_and_not_applied() -> None:
    pay, refund = refund_in(S.PENDING_APPROVAL)
    assert refund.apply_pse(pay, seen(P.SUCCEEDED), LATER, "pse") is CONTRADICTS
    assert refund.status is S.PENDING_APPROVAL
    assert event_types(refund) == ["refund.needs_attention"]
    assert counters(pay) == (0, 3_000, 9_000)


def test_the_pse_refund_id_is_recorded_from_the_first_report() -> None:
    pay, refund = refund_in(S.SUBMITTING)
    assert refund.pse_refund_id is None
    refund.apply_pse(pay, seen(P.PENDING, pse_refund_id="re_first"), NOW, "pse")
    assert refund.pse_refund_id == "re_first"
    refund.apply_pse(pay, seen(P.SUCCEEDED, pse_refund_id="re_other"), LATER, "pse")
    assert refund.pse_refund_id == "re_first"


def test_a_pse_failure_records_its_code_and_message() -> None:
    pay, refund = refund_in(S.PENDING)
    report = seen(P.FAILED, failure_code="insufficient_funds", failure_message="balance too low")
    refund.apply_pse(pay, report, LATER, "webhook")
    assert refund.status is S.FAILED
    assert refund.failure_code == "insufficient_funds"
    assert refund.failure_message == "balance too low"
    assert refund.history[-1].detail == "insufficient_funds"
    assert refund.history[-1].actor == "webhook"


def test_a_pse_failure_without_a_code_gets_a_generic_one() -> None:
    pay, refund = refund_in(S.SUBMITTING)
    refund.apply_pse(pay, seen(P.FAILED), LATER, "pse")
    assert refund.failure_code == "pse_failed"


def test_the_fee_and_the_fx_difference_are_recorded_from_the_settlement_the_pse_reports() -> None:
    pay = payment(amount=12_000, settlement_currency="USD", settlement_rate=Decimal("0.0067"))
    refund = request(pay)
    assert refund.settlement_amount == 8_040
    assert refund.settlement_currency == "USD"
    refund.start_submission(pay, NOW)
    report = seen(P.SUCCEEDED, settlement_amount=Money(8_000, "USD"), fee=Money(30, "USD"))
    refund.apply_pse(pay, report, LATER, "pse")
    assert refund.fee_amount == 30
    assert refund.fx_difference == -40


def test_a_report_without_settlement_figures_leaves_them_unset() -> None:
    pay, refund = refund_in(S.SUBMITTING)
    refund.apply_pse(pay, seen(P.SUCCEEDED), LATER, "pse")
    assert refund.fee_amount is None
    assert refund.fx_difference is None


def test_a_contradicting_report_does_not_overwrite_the_fee_or_the_fx_difference() -> None:
    pay = payment(amount=12_000, settlement_currency="USD", settlement_rate=Decimal("0.0067"))
    refund = request(pay)
    refund.start_submission(pay, NOW)
    good = seen(P.SUCCEEDED, settlement_amount=Money(8_000, "USD"), fee=Money(30, "USD"))
    refund.apply_pse(pay, good, NOW, "pse")
    late = seen(P.FAILED, settlement_amount=Money(0, "USD"), fee=Money(0, "USD"))
    assert refund.apply_pse(pay, late, LATER, "webhook") is CONTRADICTS
    assert (refund.fee_amount, refund.fx_difference) == (30, -40)


def test_a_refused_require_offline_leaves_a_succeeded_refund_untouched() -> None:
    pay, refund = refund_in(S.SUCCEEDED)
    with pytest.raises(InvalidState):
        refund.require_offline(pay, "card_expired", "card expired", LATER, "pse")
    assert (refund.failure_code, refund.offline, refund.offline_reason) == (None, False, None)


def test_a_refused_decline_leaves_a_succeeded_refund_untouched() -> None:
    pay, refund = refund_in(S.SUCCEEDED)
    with pytest.raises(InvalidState):
        refund.decline(pay, "declined", "declined", LATER, "pse")
    assert (refund.failure_code, refund.failure_message) == (None, None)


def test_a_pse_confirming_the_failure_of_a_refund_it_sent_offline_raises_no_alarm() -> None:
    pay, refund = refund_in(S.SUBMITTING)
    refund.require_offline(pay, "card_expired", "the card has expired", NOW, "pse")
    refund.events.clear()
    report = seen(P.FAILED, failure_code="card_expired")
    assert refund.apply_pse(pay, report, LATER, "webhook") is UNCHANGED
    assert refund.status is S.OFFLINE_REQUIRED
    assert refund.events == []


def test_a_pse_paying_a_refund_already_sent_offline_needs_attention() -> None:
    pay, refund = refund_in(S.SUBMITTING)
    refund.require_offline(pay, "card_expired", None, NOW, "pse")
    refund.events.clear()
    assert refund.apply_pse(pay, seen(P.SUCCEEDED), LATER, "webhook") is CONTRADICTS
    assert refund.status is S.OFFLINE_REQUIRED
    assert event_types(refund) == ["refund.needs_attention"]
    assert counters(pay) == (0, 3_000, 9_000)


def test_a_submission_the_pse_cannot_return_to_the_card_goes_offline_with_its_reason() -> None:
    pay, refund = refund_in(S.SUBMITTING)
    refund.require_offline(pay, "card_expired", "the card has expired", LATER, "pse")
    assert refund.status is S.OFFLINE_REQUIRED
    assert refund.offline
    assert refund.offline_reason == "card_expired"
    assert refund.failure_code == "card_expired"
    assert counters(pay) == (0, 3_000, 9_000)
    assert event_types(refund) == ["refund.offline_required"]


def test_every_attempt_to_submit_is_counted_and_uses_the_same_pse_idempotency_key() -> None:
    pay, refund = refund_in(S.APPROVED)
    key = refund.idempotency_key
    refund.start_submission(pay, NOW)
    assert refund.submit_attempts == 1
    assert refund.idempotency_key == key == "rfnd-rf_1"


# -- request_refund: the contract's rules in order ----------------------------------


def test_a_small_refund_is_approved_automatically_and_reserves_its_amount() -> None:
    pay = payment(amount=12_000)
    refund = request(pay, 3_000, policy=TIERED)
    assert refund.status is S.APPROVED
    assert refund.auto_approved
    assert refund.required_approvals == []
    assert refund.amount == Money(3_000, "JPY")
    assert counters(pay) == (0, 3_000, 9_000)
    assert event_types(refund) == ["refund.created", "refund.approved"]
    assert [(c.status, c.actor) for c in refund.history] == [(S.APPROVED, "policy")]


def test_a_refund_records_what_the_store_sent() -> None:
    refund = request(payment(), 3_000)
    assert (refund.payment_id, refund.pse_account) == ("pay_1", "komoju_jp")
    assert refund.note == "size too small"
    assert refund.metadata == {"rma": "R-77"}
    assert refund.created_by == STORE.id
    assert refund.created_at == refund.updated_at == NOW


def test_an_omitted_amount_refunds_the_whole_refundable_amount() -> None:
    pay = payment(amount=12_000)
    request(pay, 3_000, refund_id="rf_a")
    refund = request(pay, None, refund_id="rf_b")
    assert refund.amount == Money(9_000, "JPY")
    assert counters(pay) == (0, 12_000, 0)


def test_a_refund_over_a_tier_waits_for_approval() -> None:
    pay = payment(amount=50_000)
    refund = request(pay, 20_000, policy=TIERED)
    assert refund.status is S.PENDING_APPROVAL
    assert not refund.auto_approved
    assert refund.required_approvals == [1]
    assert counters(pay) == (0, 20_000, 30_000)
    assert event_types(refund) == ["refund.created", "refund.approval_required"]


def test_a_konbini_refund_requires_an_offline_payout() -> None:
    pay = payment(payment_method="konbini")
    refund = request(pay, 3_000)
    assert refund.status is S.OFFLINE_REQUIRED
    assert refund.offline_reason == "payment_method_not_refundable"
    assert not refund.auto_approved
    assert counters(pay) == (0, 3_000, 9_000)
    assert event_types(refund) == ["refund.created", "refund.offline_required"]


def test_a_refund_past_the_window_needs_an_offline_payout() -> None:
    pay = payment()
    refund = request(pay, 3_000, now=PAST_WINDOW)
    assert refund.status is S.OFFLINE_REQUIRED
    assert refund.offline_reason == "refund_window_passed"
    assert refund.history[-1].detail == "refund_window_passed"


def test_the_accounts_window_decides_whether_a_refund_goes_offline() -> None:
    pay = payment()
    now = CAPTURED_AT + timedelta(days=40)
    assert request(pay, 1_000, now=now, window_days=30, refund_id="a").status is S.OFFLINE_REQUIRED
    assert request(pay, 1_000, now=now, window_days=60, refund_id="b").status is S.APPROVED


def test_a_high_risk_payment_waits_for_one_approval_even_for_a_small_refund() -> None:
    pay = payment(risk_level=RiskLevel.HIGH)
    refund = request(pay, 1)
    assert refund.status is S.PENDING_APPROVAL
    assert refund.required_approvals == [1]


def test_a_refund_passing_the_daily_auto_approve_limit_waits_for_approval() -> None:
    policy = RefundPolicy(daily_auto_approve_limit={"JPY": 10_000})
    pay = payment(amount=20_000)
    within = request(pay, 4_000, policy=policy, auto_approved_today=6_000, refund_id="a")
    beyond = request(pay, 4_001, policy=policy, auto_approved_today=6_000, refund_id="b")
    assert within.status is S.APPROVED
    assert beyond.status is S.PENDING_APPROVAL
    assert beyond.required_approvals == [1]


def test_the_settlement_amount_is_the_refund_converted_at_the_payments_rate() -> None:
    pay = payment(amount=12_000, settlement_currency="USD", settlement_rate=Decimal("0.0067"))
    refund = request(pay, 6_000)
    assert (refund.settlement_amount, refund.settlement_currency) == (4_020, "USD")


def test_a_refund_in_the_payments_own_currency_settles_one_to_one() -> None:
    refund = request(payment(amount=12_000), 3_000)
    assert (refund.settlement_amount, refund.settlement_currency) == (3_000, "JPY")


@pytest.mark.parametrize(
    ("amount", "policy", "error"),
    [
        (Money(0, "JPY"), RefundPolicy(), AmountExceedsRefundable),
        (Money(9_001, "JPY"), RefundPolicy(), AmountExceedsRefundable),
        (Money(6_000, "JPY"), RefundPolicy(max_refund_amount={"JPY": 5_000}), AmountExceedsLimit),
        (Money(100, "USD"), RefundPolicy(), CurrencyMismatch),
    ],
    ids=["zero", "over-refundable", "over-cap", "other-currency"],
)
def test_a_refused_request_creates_nothing_and_reserves_nothing(
    amount: Money, policy: RefundPolicy, error: type[Exception]
) -> None:
    pay = payment(amount=12_000)
    request(pay, 3_000, refund_id="rf_first")
    with pytest.raises(error):
        pay.request_refund(
            refund_id="rf_second",
            amount=amount,
            reason=RefundReason.OTHER,
            note=None,
            metadata={},
            policy=policy,
            window_days=None,
            now=NOW,
            created_by=STORE,
        )
    assert counters(pay) == (0, 3_000, 9_000)


def test_two_refunds_together_can_never_exceed_the_payment() -> None:
    pay = payment(amount=12_000)
    request(pay, 8_000, refund_id="a")
    with pytest.raises(AmountExceedsRefundable):
        request(pay, 5_000, refund_id="b")
    request(pay, 4_000, refund_id="c")
    with pytest.raises(AmountExceedsRefundable):
        request(pay, None, refund_id="d")
    assert counters(pay) == (0, 12_000, 0)


# -- the payment's counters through each ending ------------------------------------------


def test_a_succeeded_refund_moves_its_amount_from_reserved_to_refunded() -> None:
    pay, refund = refund_in(S.PENDING)
    assert counters(pay) == (0, 3_000, 9_000)
    refund.apply_pse(pay, seen(P.SUCCEEDED), LATER, "pse")
    assert counters(pay) == (3_000, 0, 9_000)
    assert pay.updated_at == LATER


@pytest.mark.parametrize(
    ("status", "end"),
    [
        (S.SUBMITTING, lambda p, r: r.decline(p, "declined", None, LATER, "pse")),
        (S.PENDING, lambda p, r: r.apply_pse(p, seen(P.FAILED), LATER, "pse")),
        (S.APPROVED, lambda p, r: r.cancel(p, STORE, LATER)),
        (S.OFFLINE_REQUIRED, lambda p, r: r.cancel(p, OPS, LATER)),
        (S.PENDING_APPROVAL, lambda p, r: r.cancel(p, STORE, LATER)),
        (S.PENDING_APPROVAL, lambda p, r: r.reject(p, APPROVER_2, "no", LATER)),
    ],
    ids=["declined", "failed", "canceled", "offline-canceled", "canceled-waiting", "rejected"],
)
def test_a_refund_ending_without_payout_gives_its_amount_back_to_the_payment(
    status: RefundStatus, end: Move
) -> None:
    pay, refund = refund_in(status)
    assert counters(pay) == (0, 3_000, 9_000)
    end(pay, refund)
    assert refund.status.is_final
    assert counters(pay) == (0, 0, 12_000)


def test_an_offline_payout_counts_as_refunded_and_records_its_reference() -> None:
    pay, refund = refund_in(S.OFFLINE_REQUIRED)
    paid_at = NOW - timedelta(hours=2)
    refund.mark_offline_paid(pay, OPS, "bank-transfer-77", paid_at, LATER)
    assert refund.status is S.OFFLINE_PAID
    assert (refund.offline_reference, refund.offline_paid_at) == ("bank-transfer-77", paid_at)
    assert counters(pay) == (3_000, 0, 9_000)
    assert refund.history[-1].actor == OPS.name
    assert event_types(refund) == ["refund.offline_paid"]


def test_a_failed_refund_frees_its_amount_for_a_new_refund() -> None:
    pay, refund = refund_in(S.SUBMITTING, amount=12_000)
    assert pay.refundable == Money(0, "JPY")
    refund.decline(pay, "declined", None, LATER, "pse")
    again = request(pay, None, refund_id="rf_again")
    assert again.amount == Money(12_000, "JPY")


@pytest.mark.parametrize(
    ("start", "move", "event"),
    [
        (S.PENDING_APPROVAL, MOVES["approve"][0], "refund.approved"),
        (S.APPROVED, MOVES["start_submission"][0], "refund.submitted"),
        (
            S.PENDING,
            lambda p, r: r.apply_pse(p, seen(P.SUCCEEDED), LATER, "pse"),
            "refund.succeeded",
        ),
        (S.UNKNOWN, MOVES["decline"][0], "refund.failed"),
        (S.PENDING_APPROVAL, MOVES["reject"][0], "refund.rejected"),
        (S.APPROVED, MOVES["cancel"][0], "refund.canceled"),
        (S.SUBMITTING, MOVES["require_offline"][0], "refund.offline_required"),
        (S.OFFLINE_REQUIRED, MOVES["mark_offline_paid"][0], "refund.offline_paid"),
    ],
    ids=["approved", "submitted", "succeeded", "failed", "rejected", "canceled", "offline", "paid"],
)
def test_each_status_change_raises_the_contracts_event(
    start: RefundStatus, move: Move, event: str
) -> None:
    pay, refund = refund_in(start)
    move(pay, refund)
    (raised,) = refund.events
    assert (raised.type, raised.refund_id, raised.at) == (event, refund.id, LATER)


# -- approvals --------------------------------------------------------------------------


def waiting(
    policy: RefundPolicy = TWO_APPROVERS, created_by: Actor = STORE
) -> tuple[Payment, Refund]:
    pay = payment(amount=12_000)
    refund = request(pay, 3_000, policy=policy, created_by=created_by)
    assert refund.status is S.PENDING_APPROVAL
    refund.events.clear()
    return pay, refund


def test_the_key_that_created_a_refund_cannot_approve_it() -> None:
    pay, refund = waiting(created_by=APPROVER_2.actor)
    with pytest.raises(SelfApprovalForbidden) as info:
        refund.approve(pay, APPROVER_2, "mine", LATER)
    assert info.value.code == "self_approval_forbidden"
    assert refund.approvals == []


def test_the_key_that_created_a_refund_cannot_reject_it() -> None:
    pay, refund = waiting(created_by=APPROVER_3.actor)
    with pytest.raises(SelfApprovalForbidden):
        refund.reject(pay, APPROVER_3, "mine", LATER)
    assert refund.status is S.PENDING_APPROVAL


def test_an_approver_decides_only_once() -> None:
    pay, refund = waiting()
    refund.approve(pay, APPROVER_2, "ok", NOW)
    with pytest.raises(AlreadyDecided) as info:
        refund.approve(pay, APPROVER_2, "ok again", LATER)
    assert info.value.code == "already_decided"
    with pytest.raises(AlreadyDecided):
        refund.reject(pay, APPROVER_2, "changed my mind", LATER)
    assert refund.status is S.PENDING_APPROVAL
    assert len(refund.approvals) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [(APPROVER_1, APPROVER_2), (APPROVER_2, APPROVER_1), (APPROVER_2, APPROVER_2B)],
    ids=["1-then-2", "2-then-1", "2-then-2"],
)
def test_two_approvers_one_of_level_two_approve_a_refund_of_a_two_approval_tier(
    first: Approver, second: Approver
) -> None:
    pay, refund = waiting()
    assert refund.required_approvals == [2, 1]
    refund.approve(pay, first, "first", NOW)
    assert refund.status is S.PENDING_APPROVAL
    assert refund.events == []
    refund.approve(pay, second, "second", LATER)
    assert refund.status is S.APPROVED
    assert [(a.level, a.decision) for a in refund.approvals] == [
        (first.level, Decision.APPROVED),
        (second.level, Decision.APPROVED),
    ]
    assert refund.history[-1].actor == second.actor.name
    assert event_types(refund) == ["refund.approved"]
    assert counters(pay) == (0, 3_000, 9_000)


def test_a_second_level_one_approval_cannot_fill_the_level_two_slot() -> None:
    pay, refund = waiting()
    refund.approve(pay, APPROVER_1, "first", NOW)
    with pytest.raises(ApprovalLevelInsufficient) as info:
        refund.approve(pay, APPROVER_1B, "second", LATER)
    assert info.value.code == "approval_level_insufficient"
    assert refund.status is S.PENDING_APPROVAL
    assert [a.approver_id for a in refund.approvals] == [APPROVER_1.actor.id]


def test_an_approver_below_the_only_slots_level_cannot_approve() -> None:
    policy = RefundPolicy(approval_tiers=(ApprovalTier("JPY", above=0, approvals=1, min_level=3),))
    pay, refund = waiting(policy)
    with pytest.raises(ApprovalLevelInsufficient):
        refund.approve(pay, APPROVER_2, "ok", LATER)
    refund.approve(pay, APPROVER_3, "ok", LATER)
    assert refund.status is S.APPROVED


def test_an_approval_records_who_at_which_level_when_and_why() -> None:
    pay, refund = waiting()
    refund.approve(pay, APPROVER_2, "looks right", NOW)
    (approval,) = refund.approvals
    assert approval.approver_id == APPROVER_2.actor.id
    assert approval.approver == APPROVER_2.actor.name
    assert approval.level == 2
    assert approval.decision is Decision.APPROVED
    assert approval.note == "looks right"
    assert approval.at == NOW


def test_rejecting_needs_the_highest_required_level() -> None:
    pay, refund = waiting()
    with pytest.raises(ApprovalLevelInsufficient):
        refund.reject(pay, APPROVER_1, "no", LATER)
    assert refund.status is S.PENDING_APPROVAL
    refund.reject(pay, APPROVER_2, "no", LATER)
    assert refund.status is S.REJECTED
    assert refund.approvals[-1].decision is Decision.REJECTED
    assert refund.history[-1].detail == "no"
    assert event_types(refund) == ["refund.rejected"]
    assert counters(pay) == (0, 0, 12_000)


def test_one_rejection_ends_a_refund_already_partly_approved() -> None:
    pay, refund = waiting()
    refund.approve(pay, APPROVER_1, "fine by me", NOW)
    refund.reject(pay, APPROVER_2, "not by me", LATER)
    assert refund.status is S.REJECTED
    assert counters(pay) == (0, 0, 12_000)


@pytest.mark.parametrize("status", sorted(set(ALL) - {S.PENDING_APPROVAL}))
def test_only_a_refund_waiting_for_approval_can_be_decided(status: RefundStatus) -> None:
    pay, refund = refund_in(status)
    decided = list(refund.approvals)
    with pytest.raises(InvalidState):
        refund.approve(pay, APPROVER_3, "ok", LATER)
    with pytest.raises(InvalidState):
        refund.reject(pay, APPROVER_3, "no", LATER)
    assert refund.approvals == decided
    assert refund.status is status


def test_a_past_window_refund_needing_approval_goes_offline_once_approved() -> None:
    pay = payment(amount=200_000)
    refund = request(pay, 150_000, policy=TIERED, now=PAST_WINDOW)
    assert refund.status is S.PENDING_APPROVAL
    assert refund.required_approvals == [2, 1]
    refund.approve(pay, APPROVER_1, "ok", LATER)
    refund.approve(pay, APPROVER_2, "ok", LATER)
    assert refund.status is S.OFFLINE_REQUIRED
    assert refund.history[-1].detail == "refund_window_passed"
    assert event_types(refund)[-1] == "refund.offline_required"
    assert counters(pay) == (0, 150_000, 50_000)
    refund.mark_offline_paid(pay, OPS, "bank-ref-1", LATER, LATER)
    assert counters(pay) == (150_000, 0, 50_000)


def test_a_high_risk_konbini_refund_goes_offline_once_approved() -> None:
    pay = payment(payment_method="konbini", risk_level=RiskLevel.HIGH)
    refund = request(pay, 3_000)
    assert refund.status is S.PENDING_APPROVAL
    refund.approve(pay, APPROVER_1, None, LATER)
    assert refund.status is S.OFFLINE_REQUIRED
    assert refund.offline_reason == "payment_method_not_refundable"


# -- the payment's counters under any sequence of operations ------------------------------

OPERATIONS = (
    "request",
    "approve",
    "submit",
    "pending",
    "succeed",
    "fail",
    "decline",
    "unknown",
    "cancel",
    "reject",
    "require_offline",
    "offline_paid",
)


@dataclass
class Run:
    pay: Payment
    refunds: list[Refund]
    approvals: int = 0

    def next_approver(self) -> Approver:
        self.approvals += 1
        return Approver(Actor(id=f"key_appr_{self.approvals}", name="approver"), level=3)


def run(state: Run, op: str, index: int, amount: int | None, now: datetime) -> None:
    pay = state.pay
    if op == "request":
        refund = request(pay, amount, policy=TIERED, refund_id=f"rf_{len(state.refunds)}", now=now)
        state.refunds.append(refund)
        return
    if not state.refunds:
        return
    refund = state.refunds[index % len(state.refunds)]
    if op == "approve":
        refund.approve(pay, state.next_approver(), None, now)
    elif op == "submit":
        refund.start_submission(pay, now)
    elif op == "pending":
        refund.apply_pse(pay, seen(P.PENDING), now, "pse")
    elif op == "succeed":
        refund.apply_pse(pay, seen(P.SUCCEEDED), now, "pse")
    elif op == "fail":
        refund.apply_pse(pay, seen(P.FAILED), now, "pse")
    elif op == "decline":
        refund.decline(pay, "declined", None, now, "pse")
    elif op == "unknown":
        refund.mark_unknown(pay, "timeout", now)
    elif op == "cancel":
        refund.cancel(pay, STORE, now)
    elif op == "reject":
        refund.reject(pay, state.next_approver(), "no", now)
    elif op == "require_offline":
        refund.require_offline(pay, "card_expired", None, now, "pse")
    elif op == "offline_paid":
        refund.mark_offline_paid(pay, OPS, "ref", now, now)


Step = tuple[str, int, int | None]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[Step]]:
    """A payment amount and a sequence of operations on its refunds (by index).

    Requests ask for a small share, any share, the whole refundable amount (None)
    or an amount just outside the allowed range; a request is drawn more often
    than any single other operation so that refunds exist to act on.
    """
    total = draw(st.integers(min_value=1, max_value=200_000))
    amounts = st.one_of(
        st.none(),
        st.integers(min_value=1, max_value=max(1, total // 4)),
        st.integers(min_value=1, max_value=total),
        st.sampled_from([0, -1, total + 1]),
    )
    step = st.tuples(
        st.sampled_from(("request",) * 4 + OPERATIONS),
        st.integers(min_value=0, max_value=5),
        amounts,
    )
    return total, draw(st.lists(step, min_size=1, max_size=50))


@settings(max_examples=300, deadline=None, database=None)
@given(
    scenario=scenarios(),
    method=st.sampled_from(["card", "konbini"]),
    risk=st.sampled_from(list(RiskLevel)),
    past_window=st.booleans(),
)
def test_the_payments_counters_always_add_up_whatever_happens_to_its_refunds(
    scenario: tuple[int, list[Step]], method: str, risk: RiskLevel, past_window: bool
) -> None:
    total, steps = scenario
    state = Run(payment(amount=total, payment_method=method, risk_level=risk), [])
    now = PAST_WINDOW if past_window else NOW
    for op, index, amount in steps:
        with contextlib.suppress(InvalidState, AmountExceedsRefundable):
            run(state, op, index, amount, now)
        pay = state.pay
        paid_out = sum(
            r.amount.amount for r in state.refunds if r.status in (S.SUCCEEDED, S.OFFLINE_PAID)
        )
        open_amounts = sum(r.amount.amount for r in state.refunds if not r.status.is_final)
        assert pay.refunded_amount + pay.reserved_amount <= total
        assert pay.refundable.amount >= 0
        assert pay.reserved_amount >= 0
        assert pay.refunded_amount == paid_out
        assert pay.reserved_amount == open_amounts
        assert pay.refundable.amount == total - paid_out - open_amounts


GRACE = timedelta(seconds=60)


@pytest.mark.parametrize("status", ALL)
def test_a_resend_is_dated_before_it_is_made_without_moving_the_refund(
    status: RefundStatus,
) -> None:
    _, refund = refund_in(status)
    attempts, history = refund.submit_attempts, list(refund.history)
    if status in (S.SUBMITTING, S.UNKNOWN):
        refund.start_resend(LATER)
        assert refund.updated_at == LATER and refund.submit_attempts == attempts + 1
    else:
        with pytest.raises(InvalidState):
            refund.start_resend(LATER)
        assert refund.submit_attempts == attempts
    assert refund.status is status and refund.history == history and refund.events == []


def test_a_call_may_be_in_flight_for_the_grace_after_a_submission_or_a_resend() -> None:
    _, submitting = refund_in(S.SUBMITTING)
    assert submitting.call_in_flight(NOW + GRACE - timedelta(seconds=1), GRACE)
    assert not submitting.call_in_flight(NOW + GRACE, GRACE)
    _, unknown = refund_in(S.UNKNOWN)
    # Became unknown: the call that made it so has ended; nothing is in flight.
    assert not unknown.call_in_flight(NOW, GRACE)
    unknown.start_resend(LATER)
    assert unknown.call_in_flight(LATER + GRACE - timedelta(seconds=1), GRACE)
    assert not unknown.call_in_flight(LATER + GRACE, GRACE)
    _, pending = refund_in(S.PENDING)
    assert not pending.call_in_flight(NOW, GRACE)
