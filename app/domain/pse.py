"""What a PSE says and is told about a refund, in the domain's words.

Adapters translate each provider's units, statuses and errors into these;
the refund aggregate and reconciliation read them. They depend on nothing
but money.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from app.domain.money import Money

if TYPE_CHECKING:
    from app.domain.disputes import DisputeReport


class PseRefundState(StrEnum):
    """A PSE's view of a refund, reduced to what the domain acts on."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PseRefund:
    """What a PSE says about one refund (from a create answer, a look-up or a webhook)."""

    pse_refund_id: str
    state: PseRefundState
    amount: Money | None = None
    # Our refund reference when the PSE echoes it back (metadata, notes, reference_id…).
    reference: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    # What the PSE settled in the settlement currency, and its fee, when it says so.
    settlement_amount: Money | None = None
    fee: Money | None = None
    # The ids the PSE gives the payment the refund belongs to, when it says
    # (Stripe names both the payment intent and the charge).
    pse_payment_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RefundSubmission:
    """Everything an adapter needs to create or find one refund at its PSE."""

    reference: str  # our refund id; stored at the PSE where it can be
    idempotency_key: str  # stable for the life of the refund: every resend uses it
    pse_payment_id: str
    amount: Money
    reason: str
    payment_method: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    pse_refund_id: str | None = None  # known after the PSE first answered


@dataclass(frozen=True, slots=True)
class Accepted:
    """The PSE has the refund (pending, succeeded, or failed by its own processing).

    `other_money_moving`: further refunds the PSE holds under our reference that
    also moved money (succeeded or pending) — the PSE refunded more than once.
    `refund` is still the one to apply; a person must look at the others.
    """

    refund: PseRefund
    other_money_moving: tuple[PseRefund, ...] = ()


@dataclass(frozen=True, slots=True)
class Declined:
    """The PSE answered definitively that it did not make this refund.

    `offline`: the money cannot go back to the payer through the PSE any more
    (past the window, cash method): the refund must be paid out another way.
    `retriable`: a passing condition (e.g. insufficient balance): the same
    refund may be sent again later.
    """

    code: str
    message: str
    offline: bool = False
    retriable: bool = False


@dataclass(frozen=True, slots=True)
class Unanswered:
    """No definitive answer: timeouts, connection errors, 5xx or 429 after every
    retry, or a reply the adapter does not recognise. The PSE may or may not have it."""

    reason: str


@dataclass(frozen=True, slots=True)
class NotFound:
    """The PSE proves it has no refund with our reference for this payment."""


SubmitResult = Accepted | Declined | Unanswered
LookupResult = Accepted | NotFound | Unanswered


@dataclass(frozen=True, slots=True)
class PseWebhookEvent:
    """A verified webhook, translated. `refund` is None for events we acknowledge
    but do not act on (other event types)."""

    event_id: str
    event_type: str
    refund: PseRefund | None
    # A dispute (chargeback) event: what the PSE says of the dispute now.
    dispute: DisputeReport | None = None


class InvalidWebhookSignature(Exception):
    """Missing or wrong signature, or a timestamp outside the tolerance."""


class InvalidWebhookPayload(Exception):
    """The signature is right but the body is not an event we can read."""
