"""Disputes on payments: no refund while one is open, holds, lost disputes
counting like refunds, and the payment's invariant under any sequence."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.disputes import (
    Dispute,
    DisputeReport,
    DisputeStatus,
    apply_report,
)
from app.domain.errors import InvalidInput, PaymentDisputed
from app.domain.models import DISPUTE_HOLD, Payment, Refund, RefundStatus
from app.domain.money import Money
from app.domain.policy import OnDispute, RefundPolicy
from app.domain.pse import PseRefundState
from tests.unit.builders import (
    APPROVER_1,
    APPROVER_2,
    APPROVER_2B,
    CONTRACT_TIERS,
    NOW,
    OPS,
    payment,
    refund_in,
    request,
    seen,
)

S = RefundStatus
D = DisputeStatus
TIERED = RefundPolicy(approval_tiers=CONTRACT_TIERS)


def report(status: DisputeStatus = D.OPEN, amount: int | None = None, pse_id: str = "dp_1"):
    return DisputeReport(
        pse_dispute_id=pse_id,
        status=status,
        amount=None if amount is None else Money(amount, "JPY"),
        reason="fraudulent",
        evidence_due_by=NOW + timedelta(days=7),
    )


def apply(
    pay: Payment,
    refunds: list[Refund],
    rep: DisputeReport,
    existing: Dispute | None = None,
    on_dispute: OnDispute = OnDispute.HOLD,
):
    return apply_report(
        pay,
        existing,
        rep,
        refunds,
        new_id="dsp_1",
        pse_account=pay.pse_account,
        source="pse",
        on_dispute=on_dispute,
        now=NOW,
    )


def test_no_refund_on_a_payment_with_an_open_dispute():
    pay = payment()
    apply(pay, [], report())
    assert pay.open_disputes == 1
    with pytest.raises(PaymentDisputed):
        request(pay, 1_000)
    assert pay.reserved_amount == 0


def test_an_approved_refund_is_held_back_to_pending_approval_and_flagged():
    pay, refund = refund_in(S.APPROVED)
    change = apply(pay, [refund], report())
    assert refund.status is S.PENDING_APPROVAL and refund.hold == DISPUTE_HOLD
    assert refund.attention is not None and "dispute" in refund.attention
    assert change.changed_refunds == [refund]
    assert [e.type for e in change.events] == ["payment.dispute_opened"]
    assert "refund.needs_attention" in [e.type for e in refund.events]
    # Still reserved: the hold keeps its amount until the dispute ends.
    assert pay.reserved_amount == refund.amount.amount


def test_a_held_refund_cannot_be_approved_nor_paid_out_offline():
    pay = payment()
    refund = request(pay, 20_000 if pay.amount.amount > 20_000 else 11_000, policy=TIERED)
    assert refund.status is S.PENDING_APPROVAL
    apply(pay, [refund], report())
    with pytest.raises(PaymentDisputed):
        refund.approve(pay, APPROVER_1, None, NOW)
    offline_pay, offline = refund_in(S.OFFLINE_REQUIRED)
    apply(offline_pay, [offline], report())
    with pytest.raises(PaymentDisputed):
        offline.mark_offline_paid(offline_pay, OPS, "bank-1", NOW, NOW)
    assert offline.status is S.OFFLINE_REQUIRED


def test_the_cancel_policy_cancels_what_is_not_yet_sent():
    pay, refund = refund_in(S.APPROVED)
    apply(pay, [refund], report(), on_dispute=OnDispute.CANCEL)
    assert refund.status is S.CANCELED and refund.attention is not None
    assert pay.reserved_amount == 0


@pytest.mark.parametrize("status", [S.SUBMITTING, S.UNKNOWN, S.PENDING, S.SUCCEEDED])
def test_a_refund_already_sent_is_flagged_not_moved(status):
    pay, refund = refund_in(status)
    apply(pay, [refund], report())
    assert refund.status is status and refund.hold is None
    assert refund.attention is not None and "twice" in refund.attention


@pytest.mark.parametrize("outcome", [D.WON, D.CLOSED])
def test_a_won_or_closed_dispute_releases_the_hold(outcome):
    pay, refund = refund_in(S.APPROVED)
    dispute = apply(pay, [refund], report()).dispute
    change = apply(pay, [refund], report(outcome), existing=dispute)
    assert change.closed and dispute.status is outcome and dispute.closed_at == NOW
    assert refund.status is S.APPROVED and refund.hold is None
    assert pay.open_disputes == 0 and pay.disputed_amount == 0
    assert [e.type for e in change.events] == ["payment.dispute_closed"]
    assert change.events[0].data["outcome"] == outcome.value


def test_a_released_refund_still_missing_approvals_keeps_waiting_for_them():
    pay = payment(amount=500_000)
    refund = request(pay, 200_000, policy=TIERED)
    refund.approve(pay, APPROVER_2, None, NOW)
    dispute = apply(pay, [refund], report()).dispute
    apply(pay, [refund], report(D.WON), existing=dispute)
    assert refund.status is S.PENDING_APPROVAL and refund.hold is None
    refund.approve(pay, APPROVER_2B, None, NOW)
    assert refund.status is S.APPROVED


def test_the_hold_stays_while_another_dispute_is_open():
    pay, refund = refund_in(S.APPROVED)
    first = apply(pay, [refund], report(pse_id="dp_1")).dispute
    apply_report(
        pay, None, report(pse_id="dp_2"), [refund], new_id="dsp_2", pse_account="k",
        source="pse", on_dispute=OnDispute.HOLD, now=NOW,
    )  # fmt: skip
    apply(pay, [refund], report(D.WON, pse_id="dp_1"), existing=first)
    assert pay.open_disputes == 1 and refund.hold == DISPUTE_HOLD


def test_a_lost_dispute_reduces_the_refundable_amount_and_cancels_the_held():
    pay, refund = refund_in(S.APPROVED, amount=3_000)
    dispute = apply(pay, [refund], report(amount=5_000)).dispute
    change = apply(pay, [refund], report(D.LOST), existing=dispute)
    assert refund.status is S.CANCELED
    assert pay.disputed_amount == 5_000 and dispute.counted_amount == 5_000
    assert pay.refundable.amount == 12_000 - 5_000
    assert change.events[-1].data["outcome"] == "lost"


def test_a_lost_dispute_after_a_refund_never_counts_past_the_payment_and_flags_it():
    pay, refund = refund_in(S.SUCCEEDED, amount=10_000)
    dispute = apply(pay, [refund], report(amount=12_000)).dispute
    apply(pay, [refund], report(D.LOST), existing=dispute)
    assert dispute.counted_amount == 2_000 and pay.disputed_amount == 2_000
    assert pay.refunded_amount + pay.reserved_amount + pay.disputed_amount == 12_000
    assert refund.attention is not None and "10000 JPY lost twice" in refund.attention


def test_funds_reinstated_after_a_loss_give_the_amount_back():
    pay = payment()
    dispute = apply(pay, [], report(amount=4_000)).dispute
    apply(pay, [], report(D.LOST), existing=dispute)
    change = apply(pay, [], report(D.WON), existing=dispute)
    assert change.reinstated and pay.disputed_amount == 0 and dispute.status is D.WON


def test_final_disputes_do_not_reopen_and_repeats_change_nothing():
    pay = payment()
    dispute = apply(pay, [], report()).dispute
    again = apply(pay, [], report(), existing=dispute)
    assert not again.events and pay.open_disputes == 1
    apply(pay, [], report(D.CLOSED), existing=dispute)
    reopened = apply(pay, [], report(D.OPEN), existing=dispute)
    assert dispute.status is D.CLOSED and not reopened.events and pay.open_disputes == 0


def test_a_dispute_in_another_currency_or_above_the_payment_is_refused():
    pay = payment()
    with pytest.raises(InvalidInput):
        apply(pay, [], DisputeReport("dp_x", D.OPEN, Money(100, "USD")))
    with pytest.raises(InvalidInput):
        apply(pay, [], report(amount=12_001))
    assert pay.open_disputes == 0


# -- the invariant under any sequence ---------------------------------------

Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("refund"), st.integers(1, 6_000)),
        st.tuples(st.just("open"), st.integers(1, 12_000)),
        st.tuples(st.sampled_from(["won", "lost", "closed"]), st.integers(0, 3)),
        st.tuples(st.sampled_from(["send", "succeed", "fail", "cancel"]), st.integers(0, 9)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, on_dispute=st.sampled_from(list(OnDispute)))
def test_refunded_reserved_and_lost_never_exceed_the_payment(steps, on_dispute):
    pay = payment(amount=12_000)
    refunds: list[Refund] = []
    disputes: list[Dispute] = []
    for number, (action, value) in enumerate(steps):
        if action == "refund":
            try:
                refunds.append(request(pay, value, refund_id=f"rf_{number}"))
            except PaymentDisputed:
                assert pay.open_disputes > 0
            except Exception as exc:  # over the refundable amount
                assert type(exc).__name__ == "AmountExceedsRefundable"
        elif action == "open":
            change = apply_report(
                pay, None, report(amount=value, pse_id=f"dp_{number}"), refunds,
                new_id=f"dsp_{number}", pse_account="k", source="pse",
                on_dispute=on_dispute, now=NOW,
            )  # fmt: skip
            disputes.append(change.dispute)
        elif action in ("won", "lost", "closed") and disputes:
            dispute = disputes[value % len(disputes)]
            apply(pay, refunds, report(D(action), pse_id=dispute.pse_dispute_id), dispute)
        elif refunds:
            refund = refunds[value % len(refunds)]
            if action == "send" and refund.status is S.APPROVED:
                refund.start_submission(pay, NOW)
            elif action == "succeed" and refund.status is S.SUBMITTING:
                refund.apply_pse(pay, seen(PseRefundState.SUCCEEDED), NOW, "pse")
            elif action == "fail" and refund.status is S.SUBMITTING:
                refund.decline(pay, "card_closed", "closed", NOW, "pse")
            elif action == "cancel" and refund.status in (S.APPROVED, S.PENDING_APPROVAL):
                refund.cancel(pay, OPS, NOW)
        total = pay.refunded_amount + pay.reserved_amount + pay.disputed_amount
        assert 0 <= total <= pay.amount.amount
        assert pay.reserved_amount == sum(r.amount.amount for r in refunds if not r.status.is_final)
        assert pay.open_disputes == sum(1 for d in disputes if d.status is D.OPEN)
        # Nothing goes to the PSE while the payment is disputed.
        if pay.open_disputes:
            assert not any(r.status is S.APPROVED for r in refunds)
