"""Disputes (chargebacks) on payments, and what they do to refunds.

The costliest refund mistake after a double refund is paying twice another
way: refunding a payment while the customer's bank charges it back. So:

- a payment with an open dispute takes no new refund (`payment_disputed`);
- when a dispute opens, the payment's refunds not yet sent to the PSE are
  held (back to `pending_approval`, reason `payment_disputed`) or canceled,
  by policy (`on_dispute`); those already sent are flagged;
- a lost dispute counts toward the payment like a refund
  (`disputed_amount`), never beyond what is left of it: always
  `refunded + reserved + disputed <= amount`; what it could not count was
  lost twice, and the payment's paid refunds are flagged;
- won or closed disputes release the holds once none is open; a lost one
  cancels them (the customer has the money back already).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from app.domain.errors import InvalidInput
from app.domain.models import PAID_OUT, Actor, Payment, Refund
from app.domain.money import Money
from app.domain.policy import OnDispute

_POLICY = Actor("policy", "policy")


class DisputeStatus(StrEnum):
    OPEN = "open"
    WON = "won"  # decided for the merchant: funds (if taken) come back
    LOST = "lost"  # decided for the customer: the funds are gone
    CLOSED = "closed"  # ended without a decision against the merchant (withdrawn, accepted…)

    @property
    def is_final(self) -> bool:
        return self is not DisputeStatus.OPEN


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """An event about a payment, for the store backend (outbox)."""

    type: str  # payment.dispute_opened | payment.dispute_closed
    payment_id: str
    at: datetime
    data: dict[str, object]


@dataclass(slots=True)
class Dispute:
    id: str
    payment_id: str
    pse_account: str
    pse_dispute_id: str
    amount: Money
    reason: str | None
    status: DisputeStatus
    opened_at: datetime
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    evidence_due_by: datetime | None = None
    # What a lost dispute counted in the payment's `disputed_amount`.
    counted_amount: int = 0
    # Where it was learnt: "pse" (a webhook) or "api" (reported by a person or the store).
    source: str = "api"


@dataclass(frozen=True, slots=True)
class DisputeReport:
    """What a PSE webhook, or a person, says about a dispute now."""

    pse_dispute_id: str
    status: DisputeStatus
    amount: Money | None = None
    reason: str | None = None
    evidence_due_by: datetime | None = None
    opened_at: datetime | None = None
    # The PSE's ids of the disputed payment (a webhook may name more than one,
    # e.g. Stripe's charge and PaymentIntent): how the payment is found.
    pse_payment_ids: tuple[str, ...] = ()


@dataclass
class DisputeChange:
    dispute: Dispute
    created: bool = False
    opened: bool = False  # became open now (new)
    closed: bool = False  # reached a final status now
    reinstated: bool = False  # lost, then won: the counted amount given back
    changed_refunds: list[Refund] = field(default_factory=list)
    events: list[PaymentEvent] = field(default_factory=list)


def _check(report: DisputeReport, payment: Payment) -> None:
    if report.amount is not None:
        if report.amount.currency != payment.currency:
            raise InvalidInput(
                f"the dispute is in {report.amount.currency}, the payment in {payment.currency}"
            )
        if not 1 <= report.amount.amount <= payment.amount.amount:
            raise InvalidInput(
                f"a dispute's amount must be between 1 and the payment's {payment.amount.amount}"
            )


def apply_report(
    payment: Payment,
    existing: Dispute | None,
    report: DisputeReport,
    refunds: list[Refund],
    *,
    new_id: str,
    pse_account: str,
    source: str,
    on_dispute: OnDispute,
    now: datetime,
) -> DisputeChange:
    """Apply what is now known of a dispute to the payment and its refunds.

    Call with the payment locked, and with every refund of the payment.
    Statuses move forward only: an open dispute may end (won, lost, closed);
    a final one moves only from lost to won (funds reinstated). A report that
    would move it otherwise changes nothing but its details.
    """
    _check(report, payment)
    if existing is None:
        dispute = Dispute(
            id=new_id,
            payment_id=payment.id,
            pse_account=pse_account,
            pse_dispute_id=report.pse_dispute_id,
            amount=report.amount or payment.amount,
            reason=report.reason,
            status=DisputeStatus.OPEN,
            opened_at=report.opened_at or now,
            created_at=now,
            updated_at=now,
            evidence_due_by=report.evidence_due_by,
            source=source,
        )
        change = DisputeChange(dispute, created=True, opened=True)
        payment.open_disputes += 1
        payment.updated_at = now
        change.events.append(_opened(dispute, now))
        cancel = on_dispute is OnDispute.CANCEL
        for refund in refunds:
            before = (refund.status, refund.hold, refund.attention)
            refund.hold_for_dispute(payment, now, cancel=cancel)
            if (refund.status, refund.hold, refund.attention) != before:
                change.changed_refunds.append(refund)
    else:
        dispute = existing
        change = DisputeChange(dispute)
        if report.amount is not None and dispute.status is DisputeStatus.OPEN:
            dispute.amount = report.amount
        dispute.reason = report.reason or dispute.reason
        dispute.evidence_due_by = report.evidence_due_by or dispute.evidence_due_by
        dispute.updated_at = now

    if report.status is DisputeStatus.OPEN or report.status is dispute.status:
        return change
    if dispute.status is DisputeStatus.OPEN:
        _close(payment, dispute, report.status, refunds, change, now)
    elif dispute.status is DisputeStatus.LOST and report.status is DisputeStatus.WON:
        payment.disputed_amount -= dispute.counted_amount
        dispute.counted_amount = 0
        dispute.status = DisputeStatus.WON
        payment.updated_at = now
        change.reinstated = True
        change.events.append(_closed(dispute, now, reinstated=True))
    return change


def _close(
    payment: Payment,
    dispute: Dispute,
    outcome: DisputeStatus,
    refunds: list[Refund],
    change: DisputeChange,
    now: datetime,
) -> None:
    dispute.status = outcome
    dispute.closed_at = now
    payment.open_disputes -= 1
    payment.updated_at = now
    change.closed = True
    held = [r for r in refunds if r.hold is not None]
    if outcome is DisputeStatus.LOST:
        # The customer has the money back: refunds still held would pay it twice.
        for refund in held:
            refund.hold = None
            refund.cancel(payment, _POLICY, now, "payment charged back: dispute lost")
            refund.flag("canceled: the payment's dispute was lost", now)
            _note(change, refund)
        room = payment.refundable.amount
        dispute.counted_amount = max(0, min(dispute.amount.amount, room))
        payment.disputed_amount += dispute.counted_amount
        if dispute.counted_amount < dispute.amount.amount:
            for refund in refunds:
                if refund.status in PAID_OUT or not refund.status.is_final:
                    refund.flag(
                        "the payment was refunded and charged back: "
                        f"{dispute.amount.amount - dispute.counted_amount} "
                        f"{payment.currency} lost twice",
                        now,
                    )
                    _note(change, refund)
    elif payment.open_disputes == 0:
        for refund in held:
            refund.release_hold(payment, now)
            _note(change, refund)
    change.events.append(_closed(dispute, now))


def _note(change: DisputeChange, refund: Refund) -> None:
    if refund not in change.changed_refunds:
        change.changed_refunds.append(refund)


def _opened(dispute: Dispute, now: datetime) -> PaymentEvent:
    return PaymentEvent(
        "payment.dispute_opened",
        dispute.payment_id,
        now,
        {
            "dispute_id": dispute.id,
            "pse_dispute_id": dispute.pse_dispute_id,
            "amount": dispute.amount.amount,
            "currency": dispute.amount.currency,
            "reason": dispute.reason,
            "evidence_due_by": dispute.evidence_due_by.isoformat()
            if dispute.evidence_due_by
            else None,
        },
    )


def _closed(dispute: Dispute, now: datetime, *, reinstated: bool = False) -> PaymentEvent:
    return PaymentEvent(
        "payment.dispute_closed",
        dispute.payment_id,
        now,
        {
            "dispute_id": dispute.id,
            "pse_dispute_id": dispute.pse_dispute_id,
            "outcome": dispute.status.value,
            "amount": dispute.amount.amount,
            "currency": dispute.amount.currency,
            "counted_amount": dispute.counted_amount,
            "reinstated": reinstated,
        },
    )
