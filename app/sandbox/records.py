"""The sandbox's own records: payments, refunds, disputes, and the error it answers with."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"

SANDBOX_DECLINED = "sandbox_declined"

# Dispute statuses: the domain's own words.
DISPUTE_OPEN = "open"
DISPUTE_STATUSES = ("open", "won", "lost", "closed")
# How long after a dispute is opened evidence is due, as card schemes give.
EVIDENCE_WINDOW = timedelta(days=7)


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class SandboxError(Exception):
    """An answer other than success, in the sandbox's `{"error": {...}}` envelope."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass(slots=True)
class SandboxRefund:
    id: str
    payment_id: str
    amount: int
    currency: str
    reference: str
    reason: str | None
    metadata: dict[str, str]
    created_at: datetime
    # Decided when the refund is committed (so one seeded generator gives one
    # sequence of outcomes), revealed only when it settles.
    outcome: str
    status: str = PENDING
    failure_code: str | None = None
    failure_message: str | None = None
    updated_at: datetime | None = None

    @property
    def counts_against_payment(self) -> bool:
        return self.status != FAILED

    def settle(self, at: datetime) -> None:
        self.status = self.outcome
        self.updated_at = at
        if self.outcome == FAILED:
            self.failure_code = SANDBOX_DECLINED
            self.failure_message = "The sandbox declined this refund."

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "refund",
            "payment_id": self.payment_id,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "reference": self.reference,
            "reason": self.reason,
            "metadata": dict(self.metadata),
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at or self.created_at),
        }


@dataclass(slots=True)
class SandboxPayment:
    id: str
    currency: str
    # None when a refund registered the payment implicitly: no cap on refunds.
    amount: int | None
    captured_at: datetime | None
    payment_method: str | None
    created_at: datetime
    refunds: list[SandboxRefund] = field(default_factory=list)

    def committed_amount(self) -> int:
        """Refunded or about to be: every refund that has not failed."""
        return sum(r.amount for r in self.refunds if r.counts_against_payment)

    def same_registration(
        self,
        amount: int,
        currency: str,
        captured_at: datetime | None,
        payment_method: str | None,
    ) -> bool:
        return (
            self.amount == amount
            and self.currency == currency
            and (captured_at is None or self.captured_at == captured_at)
            and (payment_method is None or self.payment_method == payment_method)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "payment",
            "amount": self.amount,
            "currency": self.currency,
            "captured_at": rfc3339(self.captured_at) if self.captured_at else None,
            "payment_method": self.payment_method,
            "created_at": rfc3339(self.created_at),
            "refunded_amount": self.committed_amount(),
            "refunds": [r.to_json() for r in self.refunds],
        }


@dataclass(slots=True)
class SandboxDispute:
    """A chargeback on a payment, raised and moved through `/_control/disputes`."""

    id: str
    payment_id: str
    amount: int
    currency: str
    reason: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    evidence_due_by: datetime
    closed_at: datetime | None = None

    def move(self, status: str, at: datetime) -> None:
        self.status = status
        self.updated_at = at
        self.closed_at = None if status == DISPUTE_OPEN else (self.closed_at or at)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "dispute",
            "payment_id": self.payment_id,
            "amount": self.amount,
            "currency": self.currency,
            "reason": self.reason,
            "status": self.status,
            "evidence_due_by": rfc3339(self.evidence_due_by),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "closed_at": rfc3339(self.closed_at) if self.closed_at else None,
        }
