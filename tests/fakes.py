"""Fakes of our ports for tests: a settable clock and a scripted PSE gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.ports import (
    Clock,
    PseGateway,
)
from app.domain.pse import (
    Accepted,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    LookupResult,
    NotFound,
    PseRefund,
    PseRefundState,
    PseWebhookEvent,
    RefundSubmission,
    SubmitResult,
)


class FakeClock(Clock):
    def __init__(self, now: datetime | None = None) -> None:
        self._now = now or datetime(2026, 11, 27, 8, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> None:
        self._now += timedelta(**delta)

    def set(self, now: datetime) -> None:
        self._now = now


@dataclass
class FakeGateway(PseGateway):
    """A PSE that holds refunds in memory. `next_results` scripts create answers;
    by default a refund is accepted as pending. Webhooks are JSON with a header
    `x-fake-signature: ok`: `{"id", "type", "refund": {…}}`, or, for a dispute,
    `{"id", "type", "dispute": {"id", "status", "payment": [ids], "amount"?,
    "currency"?, "reason"?, "evidence_due_by"?}}`."""

    refunds: dict[str, PseRefund] = field(default_factory=dict)  # by our reference
    created: list[RefundSubmission] = field(default_factory=list)
    lookups: list[RefundSubmission] = field(default_factory=list)
    next_results: list[SubmitResult] = field(default_factory=list)
    lookup_results: list[LookupResult] = field(default_factory=list)
    delay: float = 0.0
    state_on_create: PseRefundState = PseRefundState.PENDING

    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
        self.created.append(submission)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.next_results:
            result = self.next_results.pop(0)
            if isinstance(result, Accepted):
                self.refunds[submission.reference] = result.refund
            return result
        existing = self.refunds.get(submission.reference)
        if existing is not None:  # same idempotency key: the first answer again
            return Accepted(existing)
        refund = PseRefund(
            pse_refund_id=f"fre_{len(self.refunds) + 1}",
            state=self.state_on_create,
            amount=submission.amount,
            reference=submission.reference,
            pse_payment_ids=(submission.pse_payment_id,),
        )
        self.refunds[submission.reference] = refund
        return Accepted(refund)

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        self.lookups.append(submission)
        if self.lookup_results:
            return self.lookup_results.pop(0)
        found = self.refunds.get(submission.reference)
        return Accepted(found) if found else NotFound()

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        import json

        if headers.get("x-fake-signature") != "ok":
            raise InvalidWebhookSignature("bad signature")
        try:
            data = json.loads(body)
            refund = data.get("refund")
            dispute = data.get("dispute")
            if dispute:
                due = dispute.get("evidence_due_by")
                return PseWebhookEvent(
                    event_id=data["id"],
                    event_type=data["type"],
                    refund=None,
                    dispute=DisputeReport(
                        pse_dispute_id=dispute["id"],
                        status=DisputeStatus(dispute["status"]),
                        amount=Money(dispute["amount"], dispute["currency"])
                        if "amount" in dispute
                        else None,
                        reason=dispute.get("reason"),
                        evidence_due_by=datetime.fromisoformat(due) if due else None,
                        pse_payment_ids=tuple(dispute["payment"]),
                    ),
                )
            return PseWebhookEvent(
                event_id=data["id"],
                event_type=data["type"],
                refund=PseRefund(
                    pse_refund_id=refund["id"],
                    state=PseRefundState(refund["state"]),
                    reference=refund.get("reference"),
                    failure_code=refund.get("failure_code"),
                    amount=Money(refund["amount"], refund["currency"])
                    if "amount" in refund
                    else None,
                    pse_payment_ids=(refund["payment"],) if "payment" in refund else (),
                )
                if refund
                else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidWebhookPayload(str(exc)) from None

    def settle(self, reference: str, state: PseRefundState) -> PseRefund:
        old = self.refunds[reference]
        new = PseRefund(
            old.pse_refund_id, state, old.amount, old.reference, pse_payment_ids=old.pse_payment_ids
        )
        self.refunds[reference] = new
        return new
