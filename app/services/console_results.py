"""What the console's queries answer: pages of results and the facts each
page shows, as plain values (no HTML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Generic, TypeVar

from app.domain.disputes import Dispute
from app.domain.models import (
    DecisionBlock,
    Payment,
    Refund,
    RefundStatus,
    RiskLevel,
)
from app.domain.money import Money
from app.domain.policy import ApprovalReason
from app.domain.reconciliation import DISPUTE_OUTCOMES
from app.domain.records import (
    Reconciliation,
    ReconciliationLine,
)
from app.services.timeline import (
    Timeline,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    # The id the next page starts after (pass it back as `cursor`); None on the last page.
    next_cursor: str | None


# -- approvals ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApprovalItem:
    """A refund awaiting approval, as one approver sees it."""

    refund: Refund
    payment: Payment
    age: timedelta
    # Why it waits for people, most demanding first.
    reasons: tuple[ApprovalReason, ...]
    # The levels of the approval slots still open, most demanding first.
    open_slots: tuple[int, ...]
    # None in the inbox; in the list of refunds it cannot decide, why.
    blocked: DecisionBlock | None
    # Whether it may also veto: a level-1 key may fill the second, any-level
    # slot of a refund whose veto needs level 2. (Never when blocked.)
    can_reject: bool

    @property
    def payment_id(self) -> str:
        return self.refund.payment_id

    @property
    def order_id(self) -> str | None:
        return self.payment.order_id

    @property
    def amount(self) -> Money:
        return self.refund.amount

    @property
    def risk_level(self) -> RiskLevel:
        return self.payment.risk_level


@dataclass(frozen=True, slots=True)
class ApprovalCounts:
    inbox: int
    blocked: int


# -- search -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefundSearch:
    """The filters of the refund search; every one optional, all of them ANDed."""

    statuses: tuple[RefundStatus, ...] = ()
    pse_account: str | None = None
    # A payment id or an order id (whichever it is).
    payment_or_order_id: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    # Minor units of `currency`, both bounds inclusive.
    currency: str | None = None
    amount_min: int | None = None
    amount_max: int | None = None
    # Not final and older than the SLA (`stale_after_hours`).
    stale: bool = False
    needs_attention: bool = False
    oldest_first: bool = False


# -- one refund ---------------------------------------------------------------


class RefundAction(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    CANCEL = "cancel"
    SYNC = "sync"
    OFFLINE_PAYOUT = "offline_payout"
    ACKNOWLEDGE = "acknowledge"


@dataclass(frozen=True, slots=True)
class RefundDetail:
    refund: Refund
    payment: Payment
    timeline: Timeline
    # What the viewer may do now: the refund's status and the roles the API asks for.
    actions: frozenset[RefundAction]
    # While the refund awaits approval: why the viewer cannot approve it, if it cannot.
    decision_block: DecisionBlock | None
    # Why it waited (or waits) for people; () when it needed no approval.
    approval_reasons: tuple[ApprovalReason, ...]
    refund_deadline: datetime
    # The payment's disputes, oldest first.
    disputes: tuple[Dispute, ...] = ()
    # Why the refund is held back from the PSE (`payment_disputed`), if it is:
    # the domain then refuses its approval and its offline payout.
    hold: str | None = None

    @property
    def open_disputes(self) -> tuple[Dispute, ...]:
        return tuple(d for d in self.disputes if not d.status.is_final)


# -- home and attention ---------------------------------------------------------


class AttentionQueue(StrEnum):
    STALE = "stale"
    UNKNOWN = "unknown"
    NEEDS_ATTENTION = "needs_attention"
    OFFLINE_REQUIRED = "offline_required"


@dataclass(frozen=True, slots=True)
class AttentionCounts:
    stale: int
    unknown: int
    needs_attention: int
    offline_required: int
    failed_deliveries: int
    open_disputes: int = 0
    # Open disputes past their evidence deadline.
    overdue_disputes: int = 0


@dataclass(frozen=True, slots=True)
class OpenDispute:
    """An open dispute on the attention list, with its payment."""

    dispute: Dispute
    payment: Payment
    # Its evidence deadline has passed (a dispute without one never is).
    overdue: bool

    @property
    def due_by(self) -> datetime | None:
        return self.dispute.evidence_due_by


@dataclass(frozen=True, slots=True)
class TimeToRefund:
    """From request to `succeeded`, for refunds that succeeded in the window."""

    pse_account: str
    window_days: int
    refunds: int
    median: timedelta
    p95: timedelta


@dataclass(frozen=True, slots=True)
class RefundRate:
    """Refunds requested in the window (those not rejected, canceled or
    failed) against payments registered in it, for one currency."""

    window_days: int
    currency: str
    payments: int
    payment_amount: Money
    refunds: int
    refund_amount: Money

    @property
    def by_amount(self) -> Decimal | None:
        """Refunded over paid, None without payments (0.0125 is 1.25 %)."""
        if not self.payment_amount.amount:
            return None
        return Decimal(self.refund_amount.amount) / Decimal(self.payment_amount.amount)

    @property
    def by_count(self) -> Decimal | None:
        if not self.payments:
            return None
        return Decimal(self.refunds) / Decimal(self.payments)


@dataclass(frozen=True, slots=True)
class Home:
    queues: AttentionCounts
    # The viewer's approvals (None for a key without an approval level).
    approvals: ApprovalCounts | None
    # Refunds requested since 00:00 UTC today, by their status now.
    today: dict[str, int]
    today_from: datetime
    time_to_refund: list[TimeToRefund]
    refund_rate: list[RefundRate]


# -- reconciliations -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconciliationDetail:
    run: Reconciliation
    # Lines (of one outcome when asked), in file order; `missing_in_file` lines last.
    lines: Page[ReconciliationLine]
    outcome: str | None
    # The disputes the page's dispute lines matched, by id.
    disputes: dict[str, Dispute] = field(default_factory=dict)

    @staticmethod
    def is_dispute_line(line: ReconciliationLine) -> bool:
        return line.outcome in DISPUTE_OUTCOMES
