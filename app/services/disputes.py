"""Disputes (chargebacks) on payments, reported through the API or by a PSE's
webhook, and what they do to the payment's refunds.

One transaction per report: the payment is locked, then every refund of it
(the order every writer of refunds takes), the domain applies the report
(`apply_report`), and the dispute, the payment's counters, the payment's
events and every changed refund (its history, events and attention flag,
through the refund service's own save) commit together. Refunds a closed
dispute released back to `approved` are sent to their PSE once it commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from app.domain.disputes import (
    Dispute,
    DisputeChange,
    DisputeReport,
    DisputeStatus,
    PaymentEvent,
    apply_report,
)
from app.domain.errors import InvalidInput, NotFound
from app.domain.models import Actor, Payment, RefundStatus
from app.domain.money import Money
from app.domain.ports import AlreadyExists, UnitOfWork
from app.domain.records import OutboxEvent
from app.services.context import Deps, Scoped, refund_deadline, save
from app.services.ids import new_id
from app.services.views import payment_view, rfc3339

log = structlog.get_logger("app.disputes")


@dataclass(frozen=True, slots=True)
class ReportDispute:
    """A dispute as a person or the store reports it: `amount` in minor units
    of the payment's currency (omitted: the payment's amount); `currency`,
    when given, must be the payment's."""

    pse_dispute_id: str
    status: DisputeStatus = DisputeStatus.OPEN
    amount: int | None = None
    currency: str | None = None
    reason: str | None = None
    evidence_due_by: datetime | None = None

    def for_payment(self, payment: Payment) -> DisputeReport:
        amount = None
        if self.amount is not None or self.currency is not None:
            amount = Money(
                payment.amount.amount if self.amount is None else self.amount,
                self.currency or payment.currency,
            )
        return DisputeReport(
            pse_dispute_id=self.pse_dispute_id,
            status=self.status,
            amount=amount,
            reason=self.reason,
            evidence_due_by=self.evidence_due_by,
        )


class DisputeService(Scoped):
    """Scoped (`scoped`): disputes of other PSE accounts' payments are not
    found, and none can be reported on their payments. PSE webhooks
    (`apply_pse`) go through the unscoped service."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    # -- reporting ------------------------------------------------------------

    async def report(
        self, payment_id: str, report: DisputeReport | ReportDispute, actor: Actor
    ) -> DisputeChange:
        """A dispute reported through the API (source "api"): created, or its
        status moved when the payment's account has one of this
        `pse_dispute_id` already (`DisputeChange.created` says which)."""
        for _ in range(2):
            async with self.deps.uow() as uow:
                payment = await uow.payments.get(payment_id, for_update=True)
                if payment is None or not self.sees(payment.pse_account):
                    raise NotFound(f"no payment {payment_id}")
                told = report.for_payment(payment) if isinstance(report, ReportDispute) else report
                try:
                    change = await self._apply(uow, payment, told, source="api", actor=actor)
                except AlreadyExists:
                    continue  # recorded at this instant on another payment: look again
                await uow.commit()
            return change
        raise InvalidInput(f"dispute {report.pse_dispute_id} is being recorded concurrently; retry")

    async def apply_pse(self, pse_account: str, report: DisputeReport) -> DisputeChange | None:
        """A dispute a PSE's webhook reports (source "pse"). None, with nothing
        recorded, when none of `report.pse_payment_ids` is a payment of the
        account registered here."""
        async with self.deps.uow() as uow:
            change = await self.apply_pse_in(uow, pse_account, report)
            await uow.commit()
        return change

    async def apply_pse_in(
        self, uow: UnitOfWork, pse_account: str, report: DisputeReport
    ) -> DisputeChange | None:
        """`apply_pse` in the caller's transaction (the webhook's, which stored
        the raw event); what follows the commit is registered with it."""
        found = None
        for pse_payment_id in report.pse_payment_ids:
            found = await uow.payments.get_by_pse(pse_account, pse_payment_id)
            if found is not None:
                break
        if found is None:
            log.info(
                "dispute.payment_unknown",
                pse_account=pse_account,
                pse_dispute_id=report.pse_dispute_id,
                pse_payment_ids=list(report.pse_payment_ids),
            )
            return None
        payment = await uow.payments.get(found.id, for_update=True)
        assert payment is not None  # payments are never deleted
        actor = Actor(f"pse:{pse_account}", f"pse:{pse_account} webhook")
        return await self._apply(uow, payment, report, source="pse", actor=actor)

    async def _apply(
        self,
        uow: UnitOfWork,
        payment: Payment,
        report: DisputeReport,
        *,
        source: str,
        actor: Actor,
    ) -> DisputeChange:
        now = self.deps.clock.now()
        refunds = await uow.refunds.lock_of_payment(payment.id)
        existing = await uow.disputes.get_by_pse(payment.pse_account, report.pse_dispute_id)
        if existing is not None and existing.payment_id != payment.id:
            raise InvalidInput(
                f"dispute {report.pse_dispute_id} of {payment.pse_account} is on another "
                f"payment ({existing.payment_id})"
            )
        before = existing.status if existing is not None else None
        change = apply_report(
            payment,
            existing,
            report,
            refunds,
            new_id=new_id("dsp"),
            pse_account=payment.pse_account,
            source=source,
            on_dispute=self.deps.policy.on_dispute,
            now=now,
        )
        events = self._outbox_events(payment, change)
        write = uow.disputes.add if change.created else uow.disputes.save
        # The dispute's events first: the store reads of the dispute before
        # the refunds it moved.
        await write(change.dispute, payment, events, deliver=self.deps.deliver_events)
        for refund in change.changed_refunds:
            await save(self.deps, uow, payment, refund)
        self._after_commit(uow, payment, change, before, actor)
        return change

    def _outbox_events(self, payment: Payment, change: DisputeChange) -> list[OutboxEvent]:
        if not change.events:
            return []
        snapshot = payment_view(payment, refund_deadline(self.deps, payment))
        return [
            OutboxEvent(
                id=new_id("evt"),
                type=event.type,
                refund_id=None,
                payment_id=payment.id,
                created_at=event.at,
                data=_event_data(event, change.dispute, snapshot),
                detail=_event_detail(event, change.dispute),
            )
            for event in change.events
        ]

    def _after_commit(
        self,
        uow: UnitOfWork,
        payment: Payment,
        change: DisputeChange,
        before: DisputeStatus | None,
        actor: Actor,
    ) -> None:
        dispute = change.dispute
        counter = self.deps.metrics.disputes
        outcomes = []
        if change.opened:
            outcomes.append("opened")
        if change.closed:
            outcomes.append(dispute.status.value)
        if change.reinstated:
            outcomes.append("reinstated")
        changed = [refund.id for refund in change.changed_refunds]
        released = [r.id for r in change.changed_refunds if r.status is RefundStatus.APPROVED]
        data: dict[str, Any] = {
            "dispute_id": dispute.id,
            "pse_dispute_id": dispute.pse_dispute_id,
            "source": dispute.source,
            "from": before.value if before is not None else None,
            "to": dispute.status.value,
            "amount": dispute.amount.amount,
            "currency": dispute.amount.currency,
            "counted_amount": dispute.counted_amount,
            "reason": dispute.reason,
            "evidence_due_by": rfc3339(dispute.evidence_due_by),
            "reinstated": change.reinstated,
            "refunds_changed": changed,
            "by_key_id": actor.id,
        }

        def done() -> None:
            for outcome in outcomes:
                counter.labels(payment.pse_account, outcome).inc()
            self.deps.audit.record(
                "dispute.reported", data, payment_id=payment.id, actor=actor.name
            )
            for refund_id in released:
                self.deps.queue.submit_soon(refund_id)
            log.info(
                "dispute.applied",
                payment_id=payment.id,
                dispute_id=dispute.id,
                pse_dispute_id=dispute.pse_dispute_id,
                source=dispute.source,
                status=dispute.status.value,
                outcomes=outcomes,
                refunds_changed=changed,
            )

        uow.after_commit(done)

    # -- reading --------------------------------------------------------------

    async def open_by_deadline(
        self, *, limit: int, after: tuple[datetime | None, str] | None = None
    ) -> list[Dispute]:
        """Open disputes of the scope's accounts, the nearest evidence deadline
        first (those without one last): what a person must answer, and by when."""
        async with self.deps.uow() as uow:
            return await uow.disputes.open_by_deadline(
                limit=limit, after=after, accounts=self.accounts
            )

    async def list(self, payment_id: str, *, limit: int, before_id: str | None) -> list[Dispute]:
        """The payment's disputes, newest first."""
        async with self.deps.uow() as uow:
            payment = await uow.payments.get(payment_id)
            if payment is None or not self.sees(payment.pse_account):
                raise NotFound(f"no payment {payment_id}")
            return await uow.disputes.for_payment(payment_id, limit=limit, before_id=before_id)


def _event_data(event: PaymentEvent, dispute: Dispute, payment: dict[str, Any]) -> dict[str, Any]:
    """The domain's words of the event, its instants as RFC 3339, and the
    payment as it is after the change."""
    data = dict(event.data)
    if "evidence_due_by" in data:
        data["evidence_due_by"] = rfc3339(dispute.evidence_due_by)
    data["payment"] = payment
    return data


_DETAIL: dict[str, Callable[[Dispute, PaymentEvent], str]] = {
    "payment.dispute_opened": lambda d, _e: f"dispute {d.pse_dispute_id} opened",
    "payment.dispute_closed": lambda d, e: (
        f"dispute {d.pse_dispute_id} {e.data.get('outcome')}"
        + (": funds reinstated" if e.data.get("reinstated") else "")
    ),
}


def _event_detail(event: PaymentEvent, dispute: Dispute) -> str | None:
    describe = _DETAIL.get(event.type)
    return describe(dispute, event) if describe else None
