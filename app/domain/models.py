"""Payments and refunds: the aggregates that decide.

A refund's status only moves through its methods, along the transitions of
the contract; a final status never moves again. Every state change that
touches money also updates the payment's counters, so the refundable amount
is always `amount - refunded - reserved`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from app.domain.errors import (
    AlreadyDecided,
    ApprovalLevelInsufficient,
    CurrencyMismatch,
    InvalidState,
    PaymentDisputed,
    SelfApprovalForbidden,
)
from app.domain.money import Money
from app.domain.policy import (
    RefundDecision,
    RefundPolicy,
    approvals_satisfied,
    can_fill_a_slot,
    open_slots,
)
from app.domain.pse import (
    PseRefund,
    PseRefundState,
)


class RefundStatus(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    OFFLINE_REQUIRED = "offline_required"
    APPROVED = "approved"
    SUBMITTING = "submitting"
    UNKNOWN = "unknown"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELED = "canceled"
    OFFLINE_PAID = "offline_paid"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


S = RefundStatus
FINAL_STATUSES = frozenset({S.SUCCEEDED, S.FAILED, S.REJECTED, S.CANCELED, S.OFFLINE_PAID})
TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    S.PENDING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.CANCELED, S.OFFLINE_REQUIRED}),
    S.OFFLINE_REQUIRED: frozenset({S.OFFLINE_PAID, S.CANCELED}),
    # Back to pending_approval only when held: its payment is disputed.
    S.APPROVED: frozenset({S.SUBMITTING, S.CANCELED, S.OFFLINE_REQUIRED, S.PENDING_APPROVAL}),
    S.SUBMITTING: frozenset({S.PENDING, S.SUCCEEDED, S.FAILED, S.UNKNOWN, S.OFFLINE_REQUIRED}),
    S.UNKNOWN: frozenset({S.PENDING, S.SUCCEEDED, S.FAILED}),
    S.PENDING: frozenset({S.SUCCEEDED, S.FAILED}),
    **{final: frozenset() for final in FINAL_STATUSES},
}
# Statuses that hold part of the payment's refundable amount.
RESERVING = frozenset(set(RefundStatus) - FINAL_STATUSES)
# Final statuses in which the money went back to the customer.
PAID_OUT = frozenset({S.SUCCEEDED, S.OFFLINE_PAID})
# Statuses a refund can still be canceled in: nothing was sent to a PSE.
CANCELABLE = frozenset({S.PENDING_APPROVAL, S.APPROVED, S.OFFLINE_REQUIRED})

# Not yet with a PSE: a dispute opening on the payment holds (or cancels) them.
HOLDABLE = frozenset({S.PENDING_APPROVAL, S.APPROVED, S.OFFLINE_REQUIRED})
# Why a held refund waits.
DISPUTE_HOLD = "payment_disputed"

# The event each status change raises for the store backend.
EVENT_FOR_STATUS: dict[RefundStatus, str] = {
    S.PENDING_APPROVAL: "refund.approval_required",
    S.OFFLINE_REQUIRED: "refund.offline_required",
    S.APPROVED: "refund.approved",
    S.SUBMITTING: "refund.submitted",
    S.PENDING: "refund.pending",
    S.UNKNOWN: "refund.unknown",
    S.SUCCEEDED: "refund.succeeded",
    S.FAILED: "refund.failed",
    S.REJECTED: "refund.rejected",
    S.CANCELED: "refund.canceled",
    S.OFFLINE_PAID: "refund.offline_paid",
}


class RefundReason(StrEnum):
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    REQUESTED_BY_CUSTOMER = "requested_by_customer"
    PRODUCT_NOT_RECEIVED = "product_not_received"
    PRODUCT_NOT_AS_DESCRIBED = "product_not_as_described"
    ORDER_CANCELED = "order_canceled"
    OTHER = "other"


class RiskLevel(StrEnum):
    NORMAL = "normal"
    HIGH = "high"


class Decision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class DecisionBlock(StrEnum):
    """Why an approver cannot approve a refund waiting for approval."""

    SELF_APPROVAL = "self_approval"  # its key created the refund
    ALREADY_DECIDED = "already_decided"  # it approved the refund already
    LEVEL = "level"  # its level fills none of the slots still open


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an API key (id and name), the PSE, the worker or the system."""

    id: str
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Approver:
    actor: Actor
    level: int


@dataclass(frozen=True, slots=True)
class Approval:
    approver_id: str
    approver: str
    level: int
    decision: Decision
    note: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class StatusChange:
    status: RefundStatus
    at: datetime
    actor: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class DomainEvent:
    type: str
    refund_id: str
    at: datetime
    detail: str | None = None


@dataclass(slots=True)
class Payment:
    id: str
    pse_account: str
    pse_payment_id: str
    order_id: str | None
    amount: Money
    captured_at: datetime
    payment_method: str | None
    risk_level: RiskLevel
    settlement_currency: str
    settlement_rate: Decimal
    refunded_amount: int = 0
    reserved_amount: int = 0
    # Disputes lost (the money taken back by the customer's bank) count like
    # refunds; while a dispute is open, no refund may be requested.
    disputed_amount: int = 0
    open_disputes: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # The counters (refunded, reserved, updated_at) as storage last held them,
    # None until stored: recorded by the storage adapter, so that saving a
    # refund writes its payment only when they moved.
    stored_counters: tuple[int, int, datetime | None] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def currency(self) -> str:
        return self.amount.currency

    @property
    def counters(self) -> tuple[int, int, datetime | None]:
        return self.refunded_amount, self.reserved_amount, self.updated_at

    @property
    def refundable(self) -> Money:
        return Money(
            self.amount.amount - self.refunded_amount - self.reserved_amount - self.disputed_amount,
            self.currency,
        )

    def registration(self) -> tuple[Any, ...]:
        """The fields a store sends; registering again must repeat them exactly."""
        return (
            self.pse_account,
            self.pse_payment_id,
            self.order_id,
            self.amount,
            self.captured_at,
            self.payment_method,
            self.risk_level,
            self.settlement_currency,
            self.settlement_rate,
        )

    def request_refund(
        self,
        *,
        refund_id: str,
        amount: Money | None,
        reason: RefundReason,
        note: str | None,
        metadata: dict[str, str],
        policy: RefundPolicy,
        window_days: int | None,
        now: datetime,
        created_by: Actor,
        auto_approved_today: int = 0,
    ) -> tuple[Refund, RefundDecision]:
        """Check the rules in the contract's order and reserve the amount.

        Call with the payment locked: the check and the reservation are one step.
        A payment with an open dispute takes no new refund: its customer's bank
        may be giving the money back already.
        """
        if self.open_disputes:
            raise PaymentDisputed(
                f"payment {self.id} has an open dispute: no refund until it is closed"
            )
        money = amount if amount is not None else self.refundable
        if money.currency != self.currency:
            raise CurrencyMismatch(self.currency, money.currency)
        policy.check_amount(money, self.refundable)
        decision = policy.decide(
            amount=money,
            captured_at=self.captured_at,
            payment_method=self.payment_method,
            high_risk=self.risk_level is RiskLevel.HIGH,
            now=now,
            window_days=window_days,
            auto_approved_today=auto_approved_today,
        )
        self.reserved_amount += money.amount
        self.updated_at = now
        refund = Refund(
            id=refund_id,
            payment_id=self.id,
            pse_account=self.pse_account,
            amount=money,
            status=RefundStatus.PENDING_APPROVAL,
            reason=reason,
            note=note,
            metadata=dict(metadata),
            required_approvals=list(decision.required_approvals),
            offline=decision.offline,
            offline_reason=decision.offline_reason,
            auto_approved=False,
            created_by=created_by.id,
            created_at=now,
            updated_at=now,
        )
        refund.settlement_amount = money.convert(
            self.settlement_rate, self.settlement_currency
        ).amount
        refund.settlement_currency = self.settlement_currency
        refund.events.append(DomainEvent("refund.created", refund.id, now))
        if decision.needs_approval:
            refund._enter(S.PENDING_APPROVAL, now, created_by.name, None)
        elif decision.offline:
            refund._enter(S.OFFLINE_REQUIRED, now, created_by.name, decision.offline_reason)
        else:
            refund.auto_approved = True
            refund._enter(S.APPROVED, now, "policy", "approved automatically")
        return refund, decision

    def settle_refund(self, refund: Refund, previous: RefundStatus, at: datetime) -> None:
        """Apply a refund's move from `previous` to its current status to the
        counters: its amount leaves `reserved` when it reaches a final status,
        and counts as refunded when it was paid out (the payment changes, and
        says when, only then)."""
        if refund.payment_id != self.id:
            raise ValueError("refund moved with another payment's counters")
        if previous in RESERVING and refund.status.is_final:
            self.reserved_amount -= refund.amount.amount
            if refund.status in PAID_OUT:
                self.refunded_amount += refund.amount.amount
            self.updated_at = at


@dataclass(slots=True)
class Refund:
    id: str
    payment_id: str
    pse_account: str
    amount: Money
    status: RefundStatus
    reason: RefundReason
    note: str | None
    metadata: dict[str, str]
    required_approvals: list[int]
    offline: bool
    offline_reason: str | None
    auto_approved: bool
    created_by: str
    created_at: datetime
    updated_at: datetime
    approvals: list[Approval] = field(default_factory=list)
    history: list[StatusChange] = field(default_factory=list)
    pse_refund_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    settlement_amount: int | None = None
    settlement_currency: str | None = None
    fx_difference: int | None = None
    fee_amount: int | None = None
    offline_reference: str | None = None
    offline_paid_at: datetime | None = None
    submit_attempts: int = 0
    # Self-checks with the PSE (see resolution.CheckSchedule).
    resolve_attempts: int = 0
    next_check_at: datetime | None = None
    # Why the refund last raised `refund.needs_attention`, until a person acknowledges it.
    attention: str | None = None
    attention_at: datetime | None = None
    # Why the refund is held back from the PSE (DISPUTE_HOLD), until released.
    hold: str | None = None
    # Set when the status changed since the refund was loaded: its checks are rescheduled.
    status_changed: bool = False
    # Raised by the last operations, written to the outbox by the service.
    events: list[DomainEvent] = field(default_factory=list)
    # (from, change) of each status change since the last save, for the audit trail.
    transitions: list[tuple[RefundStatus | None, StatusChange]] = field(default_factory=list)
    # How many of `history` and `approvals` storage already holds, recorded by
    # the storage adapter when it loads or saves the refund: a save appends
    # only the entries after these.
    stored_history: int = field(default=0, compare=False, repr=False)
    stored_approvals: int = field(default=0, compare=False, repr=False)

    @property
    def currency(self) -> str:
        return self.amount.currency

    @property
    def idempotency_key(self) -> str:
        """The key every request to the PSE for this refund carries, for its whole life."""
        return f"rfnd-{self.id}"

    # -- transitions -------------------------------------------------------

    def _enter(self, to: RefundStatus, at: datetime, actor: str, detail: str | None) -> None:
        previous = self.history[-1].status if self.history else None
        self.status = to
        self.updated_at = at
        self.status_changed = True
        change = StatusChange(to, at, actor, detail)
        self.history.append(change)
        self.transitions.append((previous, change))
        self.events.append(DomainEvent(EVENT_FOR_STATUS[to], self.id, at, detail))

    def _move(
        self,
        payment: Payment,
        to: RefundStatus,
        at: datetime,
        actor: str,
        detail: str | None = None,
    ) -> None:
        if to not in TRANSITIONS[self.status]:
            raise InvalidState(f"a refund cannot go from {self.status} to {to}")
        previous = self.status
        if to.is_final:
            self.hold = None  # an ended refund holds nothing back
        self._enter(to, at, actor, detail)
        payment.settle_refund(self, previous, at)

    def can_move_to(self, to: RefundStatus) -> bool:
        return to in TRANSITIONS[self.status]

    def _require(self, to: RefundStatus) -> None:
        """Refuse before touching any field, so a refused call changes nothing."""
        if not self.can_move_to(to):
            raise InvalidState(f"a refund cannot go from {self.status} to {to}")

    # -- approvals ---------------------------------------------------------

    def _granted_levels(self) -> list[int]:
        return [a.level for a in self.approvals if a.decision is Decision.APPROVED]

    @property
    def open_slots(self) -> tuple[int, ...]:
        """The levels of the approval slots still open, most demanding first."""
        return open_slots(tuple(self.required_approvals), self._granted_levels())

    @property
    def reject_level(self) -> int:
        """The level a veto needs: the refund's highest required level."""
        return max(self.required_approvals, default=1)

    def decision_block(self, approver_id: str, level: int | None) -> DecisionBlock | None:
        """Why the key `approver_id` deciding at `level` (None: no approval level)
        cannot approve this refund, checked in `approve`'s order; None when it
        can. The status is not looked at: once the refund no longer awaits
        approval, no one decides it."""
        if approver_id == self.created_by:
            return DecisionBlock.SELF_APPROVAL
        if any(a.approver_id == approver_id for a in self.approvals):
            return DecisionBlock.ALREADY_DECIDED
        if level is None or not can_fill_a_slot(
            tuple(self.required_approvals), self._granted_levels(), level
        ):
            return DecisionBlock.LEVEL
        return None

    def _check_decider(self, approver: Approver) -> None:
        if self.status is not S.PENDING_APPROVAL:
            raise InvalidState(f"the refund is {self.status}, not pending_approval")
        block = self.decision_block(approver.actor.id, approver.level)
        if block is DecisionBlock.SELF_APPROVAL:
            raise SelfApprovalForbidden("the key that created this refund cannot decide on it")
        if block is DecisionBlock.ALREADY_DECIDED:
            raise AlreadyDecided("this approver already decided on the refund")

    def approve(self, payment: Payment, approver: Approver, note: str | None, at: datetime) -> None:
        self._check_decider(approver)
        if self.hold is not None:
            raise PaymentDisputed(
                "the payment has an open dispute: this refund is held until it is closed"
            )
        granted = self._granted_levels()
        if not can_fill_a_slot(tuple(self.required_approvals), granted, approver.level):
            raise ApprovalLevelInsufficient(
                f"the remaining approvals need level {max(self.required_approvals)}"
                f" or higher; this approver has level {approver.level}"
            )
        self.approvals.append(
            Approval(
                approver.actor.id, approver.actor.name, approver.level, Decision.APPROVED, note, at
            )
        )
        self.updated_at = at
        granted.append(approver.level)
        if approvals_satisfied(tuple(self.required_approvals), granted):
            if self.offline:
                self._move(
                    payment, S.OFFLINE_REQUIRED, at, approver.actor.name, self.offline_reason
                )
            else:
                self._move(payment, S.APPROVED, at, approver.actor.name, note)

    def reject(self, payment: Payment, approver: Approver, note: str, at: datetime) -> None:
        """One rejection ends the refund. Vetoing needs the refund's highest required level."""
        self._check_decider(approver)
        needed = self.reject_level
        if approver.level < needed:
            raise ApprovalLevelInsufficient(
                f"rejecting this refund needs level {needed}; this approver has level "
                f"{approver.level}"
            )
        self.approvals.append(
            Approval(
                approver.actor.id, approver.actor.name, approver.level, Decision.REJECTED, note, at
            )
        )
        self._move(payment, S.REJECTED, at, approver.actor.name, note)

    def cancel(self, payment: Payment, actor: Actor, at: datetime, note: str | None = None) -> None:
        if self.status not in CANCELABLE:
            raise InvalidState(f"a {self.status} refund can no longer be canceled")
        self._move(payment, S.CANCELED, at, actor.name, note)

    def mark_offline_paid(
        self, payment: Payment, actor: Actor, reference: str, paid_at: datetime, at: datetime
    ) -> None:
        if self.status is not S.OFFLINE_REQUIRED:
            raise InvalidState(f"the refund is {self.status}, not offline_required")
        if self.hold is not None:
            raise PaymentDisputed(
                "the payment has an open dispute: pay nothing out until it is closed"
            )
        self.offline_reference = reference
        self.offline_paid_at = paid_at
        self._move(payment, S.OFFLINE_PAID, at, actor.name, f"reference {reference}")

    # -- the PSE -----------------------------------------------------------

    def start_submission(self, payment: Payment, at: datetime, actor: str = "service") -> None:
        if self.status is not S.APPROVED:
            raise InvalidState(f"the refund is {self.status}, not approved")
        self.submit_attempts += 1
        self._move(payment, S.SUBMITTING, at, actor)

    def start_resend(self, at: datetime) -> None:
        """A request is about to be sent again (same key) for a refund the PSE
        proved it does not have: counted and dated (`updated_at`) before the
        call is made, which is what tells every other process that a call may
        be in flight (`call_in_flight`). The status does not move."""
        if self.status not in (S.SUBMITTING, S.UNKNOWN):
            raise InvalidState(f"the refund is {self.status}: nothing to resend")
        self.submit_attempts += 1
        self.updated_at = at

    def call_in_flight(self, now: datetime, grace: timedelta) -> bool:
        """Whether a request to the PSE for this refund may still be under way
        somewhere (in a process we cannot see, maybe one that lost its claim):
        sent within `grace` (longer than a call with all its retries can take)
        when the refund entered `submitting`, or by a resend. Such a refund is
        looked up, never sent again, until `grace` has passed."""
        if self.status is S.SUBMITTING:
            return now - self.updated_at < grace
        if self.status is S.UNKNOWN:
            # Dated after it became unknown: a resend was started (or a
            # person acknowledged its attention flag, which waits just the same).
            entered = self.history[-1].at if self.history else self.updated_at
            return self.updated_at > entered and now - self.updated_at < grace
        return False

    def mark_unknown(
        self,
        payment: Payment,
        reason: str,
        at: datetime,
        *,
        failure_code: str | None = None,
        failure_message: str | None = None,
    ) -> None:
        """No definitive answer (or a passing refusal, whose code is kept): the
        worker will find out. Never `failed`."""
        if failure_code is not None:
            self.failure_code, self.failure_message = failure_code, failure_message
        if self.status is S.SUBMITTING:
            self._move(payment, S.UNKNOWN, at, "service", reason)

    def require_offline(
        self, payment: Payment, code: str, message: str | None, at: datetime, actor: str
    ) -> None:
        self._require(S.OFFLINE_REQUIRED)
        self.failure_code = code
        self.failure_message = message
        self.offline = True
        self.offline_reason = code
        self._move(payment, S.OFFLINE_REQUIRED, at, actor, message or code)

    def decline(
        self, payment: Payment, code: str, message: str | None, at: datetime, actor: str
    ) -> None:
        """The PSE answered definitively that it did not make the refund."""
        self._require(S.FAILED)
        self.failure_code = code
        self.failure_message = message
        self._move(payment, S.FAILED, at, actor, message or code)

    def apply_pse(self, payment: Payment, seen: PseRefund, at: datetime, actor: str) -> Applied:
        """Apply what the PSE says, monotonically.

        pending < succeeded|failed. A final status never moves; a PSE view that
        contradicts it is reported, not applied.
        """
        target = {
            PseRefundState.PENDING: S.PENDING,
            PseRefundState.SUCCEEDED: S.SUCCEEDED,
            PseRefundState.FAILED: S.FAILED,
        }[seen.state]
        if self.status is target:
            self._learn(seen)
            return Applied.UNCHANGED
        if self.status.is_final:
            if target is S.PENDING and self.status is S.SUCCEEDED:
                return Applied.UNCHANGED  # a late "pending" after success is old news
            said = f" ({seen.failure_code})" if seen.failure_code else ""
            self.flag(f"PSE reports {seen.state}{said} but the refund is {self.status}", at)
            return Applied.CONTRADICTS
        if not self.can_move_to(target):
            if self.status is S.APPROVED:
                # The PSE has it although we never recorded sending it (a resend
                # after a lost commit): record the submission, then the outcome.
                self._move(payment, S.SUBMITTING, at, actor, "seen at the PSE")
            elif (
                self.status is S.OFFLINE_REQUIRED
                and target is S.FAILED
                and self.submit_attempts > 0
            ):
                # The PSE confirms the failure that sent this refund offline.
                return Applied.UNCHANGED
            elif self.status in (S.PENDING_APPROVAL, S.OFFLINE_REQUIRED):
                self.flag(f"PSE reports {seen.state} for a refund never sent to it", at)
                return Applied.CONTRADICTS
            else:
                return Applied.UNCHANGED
        if target is S.FAILED:
            self.failure_code = seen.failure_code or "pse_failed"
            self.failure_message = seen.failure_message
        self._learn(seen)
        self._move(payment, target, at, actor, seen.failure_code if target is S.FAILED else None)
        return Applied.CHANGED

    def _learn(self, seen: PseRefund) -> None:
        """Record the PSE's id, fee and settled amount from a report we accept."""
        if seen.pse_refund_id and not self.pse_refund_id:
            self.pse_refund_id = seen.pse_refund_id
        if seen.fee is not None:
            self.fee_amount = seen.fee.amount
        settled = seen.settlement_amount
        if (
            settled is not None
            and self.settlement_amount is not None
            and settled.currency == self.settlement_currency
        ):
            self.fx_difference = settled.amount - self.settlement_amount

    # -- disputes on the payment --------------------------------------------

    def hold_for_dispute(
        self, payment: Payment, at: datetime, *, cancel: bool, actor: str = "policy"
    ) -> None:
        """A dispute opened on the payment. Not yet with a PSE: held (an
        approved refund goes back to pending_approval) or, by policy, canceled.
        Already with the PSE, or paid: flagged, for a person to look at."""
        if self.status in HOLDABLE:
            if cancel:
                self.cancel(payment, Actor(actor, actor), at, "payment disputed")
                self.flag("canceled: a dispute opened on the payment", at)
                return
            self.hold = DISPUTE_HOLD
            if self.status is S.APPROVED:
                self._move(payment, S.PENDING_APPROVAL, at, actor, DISPUTE_HOLD)
            else:
                self.updated_at = at
            self.flag("held: a dispute opened on the payment", at)
        elif self.status in (S.SUBMITTING, S.UNKNOWN, S.PENDING, S.SUCCEEDED):
            self.flag(
                "a dispute opened on the payment after this refund was sent: the "
                "customer may get the money back twice",
                at,
            )

    def release_hold(self, payment: Payment, at: datetime, actor: str = "policy") -> None:
        """The payment's disputes are closed: the refund goes on from where it
        was held (approved again when its approvals were complete)."""
        if self.hold is None:
            return
        self.hold = None
        self.updated_at = at
        if self.status is S.PENDING_APPROVAL and approvals_satisfied(
            tuple(self.required_approvals), self._granted_levels()
        ):
            to = S.OFFLINE_REQUIRED if self.offline else S.APPROVED
            self._move(payment, to, at, actor, "dispute closed: hold released")

    def flag(self, detail: str, at: datetime) -> None:
        """Raise `refund.needs_attention` without changing the status; the refund
        stays in the attention list until a person acknowledges it."""
        self.attention, self.attention_at = detail, at
        self.events.append(DomainEvent("refund.needs_attention", self.id, at, detail))

    def acknowledge_attention(self, at: datetime) -> str:
        """A person has looked: the refund leaves the attention list. Returns
        what it was flagged for."""
        if self.attention is None:
            raise InvalidState(f"refund {self.id} is not flagged for attention")
        detail = self.attention
        self.attention = self.attention_at = None
        self.updated_at = at
        return detail


class Applied(StrEnum):
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    CONTRADICTS = "contradicts"
