"""Ports: what the domain and services need from the outside world.

Adapters implement these; `app.bootstrap` wires them. Services depend only
on these abstractions, which keeps them testable with fakes.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from app.domain.money import Money

# --------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------


class Clock(abc.ABC):
    @abc.abstractmethod
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""


# --------------------------------------------------------------------------
# PSE gateway
# --------------------------------------------------------------------------


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
    """The PSE has the refund (pending, succeeded, or failed by its own processing)."""

    refund: PseRefund


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


class InvalidWebhookSignature(Exception):
    """Missing or wrong signature, or a timestamp outside the tolerance."""


class InvalidWebhookPayload(Exception):
    """The signature is right but the body is not an event we can read."""


class PseGateway(abc.ABC):
    """One PSE account, in the domain's words."""

    @abc.abstractmethod
    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
        """Ask the PSE to refund. Retries transient failures with the same idempotency key."""

    @abc.abstractmethod
    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        """Find the refund by PSE id, else by our reference among the payment's refunds."""

    @abc.abstractmethod
    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        """Verify the signature (headers lower-cased) over the raw body, then translate.

        Raises InvalidWebhookSignature or InvalidWebhookPayload."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
