"""Plain records the service keeps beside the aggregates: API keys, idempotency
records, stored PSE webhooks and outbox events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple


class Role(StrEnum):
    STORE = "store"
    APPROVER = "approver"
    OPS = "ops"
    ADMIN = "admin"


# The PSE accounts a key may see and act on; None: every account.
AccountScope = frozenset[str] | None


def in_scope(scope: AccountScope, pse_account: str | None) -> bool:
    """Whether something of `pse_account` is within `scope` (nothing of no
    account is within a scope that names accounts)."""
    return scope is None or (pse_account is not None and pse_account in scope)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    roles: frozenset[Role]
    approval_level: int | None
    created_at: datetime
    revoked_at: datetime | None = None
    # The PSE accounts whose payments, refunds, events and audit records the
    # key sees and acts on; None: every account (a key made without --account).
    accounts: frozenset[str] | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def may_see(self, pse_account: str | None) -> bool:
        """Whether the key may see (and act on) what belongs to `pse_account`."""
        return in_scope(self.accounts, pse_account)

    def has_any(self, *roles: Role) -> bool:
        return Role.ADMIN in self.roles or any(r in self.roles for r in roles)

    @property
    def effective_approval_level(self) -> int | None:
        """Approvers decide at their level; an admin without one decides at the top level."""
        if Role.APPROVER in self.roles and self.approval_level:
            return self.approval_level
        if Role.ADMIN in self.roles:
            return self.approval_level or 3
        return None


class IdempotencyState(StrEnum):
    STARTED = "started"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    """A verified webhook, not stored yet: stored once, with what became of it."""

    pse_account: str
    event_id: str
    event_type: str
    body: str
    # The translated PSE view, to apply (later, if applying it now fails).
    refund: dict[str, Any] | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    """What became of a webhook (`status`), and the refund it was applied to.
    `webhook` is the id of the stored event, or the event received now, which
    is stored with its outcome: a repeat of one stored before is refused
    (`AlreadyExists`) and nothing of its unit of work is written."""

    webhook: int | ReceivedWebhook
    status: WebhookStatus
    refund_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class WaitingFor:
    """Which stored webhooks to look for: those of `pse_account` naming a
    refund by our reference or by the PSE's id that are not applied yet."""

    pse_account: str
    pse_refund_id: str | None
    reference: str


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """The answer a request gave, kept under its caller's Idempotency-Key."""

    api_key_id: str
    key: str
    status: int
    body: bytes


@dataclass(slots=True)
class IdempotencyRecord:
    api_key_id: str
    key: str
    method: str
    path: str
    request_hash: str
    state: IdempotencyState
    created_at: datetime
    locked_at: datetime | None = None
    response_status: int | None = None
    response_body: bytes | None = None


class WebhookStatus(StrEnum):
    RECEIVED = "received"  # stored, not yet applied
    APPLIED = "applied"
    UNMATCHED = "unmatched"  # no refund matches yet: applied when one appears
    IGNORED = "ignored"  # an event type we do not act on
    CONFLICT = "conflict"  # contradicts a final status: recorded, nothing changed
    # Names our refund by reference but is about another PSE refund, payment or
    # amount: recorded, nothing changed, the refund flagged.
    MISMATCHED = "mismatched"


@dataclass(slots=True)
class StoredWebhook:
    id: int
    pse_account: str
    event_id: str
    event_type: str
    status: WebhookStatus
    received_at: datetime
    pse_refund_id: str | None = None
    reference: str | None = None
    refund: dict[str, Any] | None = None
    refund_id: str | None = None
    applied_at: datetime | None = None


class DeliveryStatus(StrEnum):
    NONE = "none"  # no store webhook was configured when the event was written
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # retried for the whole retry window without a 2xx


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    id: str
    type: str
    refund_id: str | None
    payment_id: str | None
    created_at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None
    seq: int | None = None
    tx: int | None = None
    delivery_status: DeliveryStatus = DeliveryStatus.NONE
    delivery_attempts: int = 0
    next_delivery_at: datetime | None = None
    first_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_error: str | None = None

    @property
    def position(self) -> tuple[int, int]:
        """Where the event stands in the feed: (writing transaction, sequence)."""
        return (self.tx or 0, self.seq or 0)


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    event_id: str
    attempt: int
    at: datetime
    url: str
    status_code: int | None
    duration_ms: int
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(slots=True)
class Reconciliation:
    id: str
    pse_account: str
    status: str
    created_at: datetime
    filename: str | None = None
    file_format: str | None = None
    rows_total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    range_from: datetime | None = None
    range_to: datetime | None = None
    adopted: int = 0
    error: str | None = None
    created_by: str | None = None
    completed_at: datetime | None = None


class ReconciliationLine(NamedTuple):
    """One outcome of a reconciliation: a file line, or a refund missing from the file.

    A named tuple: a million of them are built per large file, and the field
    order is the column order they are copied into the database with."""

    reconciliation_id: str
    line: int | None
    outcome: str
    pse_refund_id: str | None = None
    reference: str | None = None
    refund_id: str | None = None
    file_amount: int | None = None
    file_status: str | None = None
    our_amount: int | None = None
    our_status: str | None = None
    currency: str | None = None
    settled_at: datetime | None = None
    fee: int | None = None
    settlement_amount: int | None = None
    settlement_currency: str | None = None
    detail: str | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class FxTotal:
    settlement_currency: str
    refunds: int
    fx_difference: int
    fees: int
    refunds_with_actual_settlement: int


@dataclass(frozen=True, slots=True)
class RefundRow:
    """A refund as lists and exports show it: its own columns and its
    payment's order id, without history or approvals."""

    id: str
    created_at: datetime
    payment_id: str
    order_id: str | None
    pse_account: str
    amount: int
    currency: str
    status: str
    reason: str
    pse_refund_id: str | None
    failure_code: str | None
    updated_at: datetime
    attention: str | None = None


@dataclass(frozen=True, slots=True)
class Volume:
    """How many, and how much in minor units, of one currency."""

    currency: str
    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class SuccessTimes:
    """Time from request to `succeeded` of one PSE account's refunds, in seconds."""

    pse_account: str
    refunds: int
    median_seconds: float
    p95_seconds: float


@dataclass(frozen=True, slots=True)
class DisputeFigures:
    """One PSE account's disputes in one currency: how many are open and
    how much they are for, and what lost ones counted against their payments
    (minor units)."""

    pse_account: str
    currency: str
    open: int
    open_amount: int
    lost_amount: int
