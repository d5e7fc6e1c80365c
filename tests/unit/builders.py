"""Builders for domain objects in unit tests: payments, actors, refunds in any status.

Everything is in memory; times are fixed, timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from app.domain.models import (
    Actor,
    Approver,
    Payment,
    Refund,
    RefundReason,
    RefundStatus,
    RiskLevel,
)
from app.domain.money import Money
from app.domain.policy import ApprovalTier, RefundPolicy
from app.domain.pse import (
    PseRefund,
    PseRefundState,
)

CAPTURED_AT = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)

STORE = Actor(id="key_store", name="store")
OPS = Actor(id="key_ops", name="ops")
APPROVER_1 = Approver(Actor(id="key_appr_1", name="approver one"), level=1)
APPROVER_1B = Approver(Actor(id="key_appr_1b", name="approver one-b"), level=1)
APPROVER_2 = Approver(Actor(id="key_appr_2", name="approver two"), level=2)
APPROVER_2B = Approver(Actor(id="key_appr_2b", name="approver two-b"), level=2)
APPROVER_3 = Approver(Actor(id="key_appr_3", name="approver three"), level=3)

# JPY tiers of the contract's example configuration.
CONTRACT_TIERS = (
    ApprovalTier(currency="JPY", above=10_000, approvals=1, min_level=1),
    ApprovalTier(currency="JPY", above=100_000, approvals=2, min_level=2),
)


def payment(
    *,
    amount: int = 12_000,
    currency: str = "JPY",
    payment_method: str | None = "card",
    risk_level: RiskLevel = RiskLevel.NORMAL,
    settlement_currency: str | None = None,
    settlement_rate: Decimal = Decimal(1),
    captured_at: datetime = CAPTURED_AT,
    refunded_amount: int = 0,
    reserved_amount: int = 0,
    payment_id: str = "pay_1",
) -> Payment:
    return Payment(
        id=payment_id,
        pse_account="komoju_jp",
        pse_payment_id="pse_pay_abc",
        order_id="ORD-1001",
        amount=Money(amount, currency),
        captured_at=captured_at,
        payment_method=payment_method,
        risk_level=risk_level,
        settlement_currency=settlement_currency or currency,
        settlement_rate=settlement_rate,
        refunded_amount=refunded_amount,
        reserved_amount=reserved_amount,
    )


def request(
    pay: Payment,
    amount: int | None = None,
    *,
    policy: RefundPolicy | None = None,
    now: datetime = NOW,
    window_days: int | None = None,
    refund_id: str = "rf_1",
    created_by: Actor = STORE,
    auto_approved_today: int = 0,
) -> Refund:
    refund, _ = pay.request_refund(
        refund_id=refund_id,
        amount=None if amount is None else Money(amount, pay.currency),
        reason=RefundReason.REQUESTED_BY_CUSTOMER,
        note="size too small",
        metadata={"rma": "R-77"},
        policy=policy or RefundPolicy(),
        window_days=window_days,
        now=now,
        created_by=created_by,
        auto_approved_today=auto_approved_today,
    )
    return refund


def seen(
    state: PseRefundState,
    *,
    pse_refund_id: str = "re_1",
    failure_code: str | None = None,
    failure_message: str | None = None,
    settlement_amount: Money | None = None,
    fee: Money | None = None,
) -> PseRefund:
    return PseRefund(
        pse_refund_id=pse_refund_id,
        state=state,
        failure_code=failure_code,
        failure_message=failure_message,
        settlement_amount=settlement_amount,
        fee=fee,
    )


S = RefundStatus


def refund_in(status: RefundStatus, amount: int = 3_000) -> tuple[Payment, Refund]:
    """A JPY 12,000 payment and a refund of `amount` brought to `status` the way production does."""
    if status is S.OFFLINE_REQUIRED or status is S.OFFLINE_PAID:
        pay = payment(payment_method="konbini")
    elif status is S.PENDING_APPROVAL or status is S.REJECTED:
        pay = payment(risk_level=RiskLevel.HIGH)
    else:
        pay = payment()
    refund = request(pay, amount)
    if status is S.REJECTED:
        refund.reject(pay, APPROVER_1, "not convinced", NOW)
    elif status is S.OFFLINE_PAID:
        refund.mark_offline_paid(pay, OPS, "bank-transfer-1", NOW, NOW)
    elif status is S.CANCELED:
        refund.cancel(pay, STORE, NOW)
    elif status in (S.SUBMITTING, S.UNKNOWN, S.PENDING, S.SUCCEEDED, S.FAILED):
        refund.start_submission(pay, NOW)
        if status is S.UNKNOWN:
            refund.mark_unknown(pay, "timeout", NOW)
        elif status is S.PENDING:
            refund.apply_pse(pay, seen(PseRefundState.PENDING), NOW, "pse")
        elif status is S.SUCCEEDED:
            refund.apply_pse(pay, seen(PseRefundState.SUCCEEDED), NOW, "pse")
        elif status is S.FAILED:
            refund.decline(pay, "card_closed", "the card is closed", NOW, "pse")
    assert refund.status is status
    refund.events.clear()
    return pay, refund


def counters(pay: Payment) -> tuple[int, int, int]:
    """(refunded, reserved, refundable) of a payment."""
    return pay.refunded_amount, pay.reserved_amount, pay.refundable.amount
