"""PSE webhooks: verify, then store the raw event once, applied monotonically.

The raw event is stored with its outcome, in the transaction that applies
it; should applying fail, the raw event is stored alone (`received`) and the
worker applies it later. Either way it is stored before the PSE gets its
200, and a repeat of it (unique on account and event id) changes nothing.
An event about a refund is applied to the refund; one about a dispute
(chargeback), to the disputed payment and its refunds (DisputeService)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.errors import DomainError, InvalidSignature, InvalidWebhookBody, NotFound
from app.domain.matching import reference_claim_problem
from app.domain.models import Applied, Payment, Refund
from app.domain.money import Money
from app.domain.ports import UnitOfWork, WebhookStoredBefore
from app.domain.pse import (
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    PseRefund,
    PseRefundState,
    PseWebhookEvent,
)
from app.domain.records import ReceivedWebhook, StoredWebhook, WebhookOutcome, WebhookStatus
from app.domain.text import first_text_problem
from app.services.context import Deps, save
from app.services.disputes import DisputeService

log = structlog.get_logger("app.webhooks")

_AUDIT_BODY_BYTES = 64 * 1024


def pse_refund_to_dict(seen: PseRefund) -> dict[str, Any]:
    def money(m: Money | None) -> dict[str, Any] | None:
        return None if m is None else {"amount": m.amount, "currency": m.currency}

    return {
        "pse_refund_id": seen.pse_refund_id,
        "state": seen.state.value,
        "amount": money(seen.amount),
        "reference": seen.reference,
        "failure_code": seen.failure_code,
        "failure_message": seen.failure_message,
        "settlement_amount": money(seen.settlement_amount),
        "fee": money(seen.fee),
        "pse_payment_ids": list(seen.pse_payment_ids),
    }


def pse_refund_from_dict(data: Mapping[str, Any]) -> PseRefund:
    def money(m: Mapping[str, Any] | None) -> Money | None:
        return None if not m else Money(int(m["amount"]), str(m["currency"]))

    return PseRefund(
        pse_refund_id=data["pse_refund_id"],
        state=PseRefundState(data["state"]),
        amount=money(data.get("amount")),
        reference=data.get("reference"),
        failure_code=data.get("failure_code"),
        failure_message=data.get("failure_message"),
        settlement_amount=money(data.get("settlement_amount")),
        fee=money(data.get("fee")),
        pse_payment_ids=tuple(data.get("pse_payment_ids") or ()),
    )


# Where a stored event keeps the translated dispute (in its `refund` column,
# the translated PSE view to apply later): {"dispute": {...}}.
_DISPUTE = "dispute"


def dispute_report_to_dict(report: DisputeReport) -> dict[str, Any]:
    def instant(at: datetime | None) -> str | None:
        return None if at is None else at.isoformat()

    return {
        "pse_dispute_id": report.pse_dispute_id,
        "status": report.status.value,
        "amount": None
        if report.amount is None
        else {"amount": report.amount.amount, "currency": report.amount.currency},
        "reason": report.reason,
        "evidence_due_by": instant(report.evidence_due_by),
        "opened_at": instant(report.opened_at),
        "pse_payment_ids": list(report.pse_payment_ids),
    }


def dispute_report_from_dict(data: Mapping[str, Any]) -> DisputeReport:
    def instant(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text)

    amount = data.get("amount")
    return DisputeReport(
        pse_dispute_id=data["pse_dispute_id"],
        status=DisputeStatus(data["status"]),
        amount=None if not amount else Money(int(amount["amount"]), str(amount["currency"])),
        reason=data.get("reason"),
        evidence_due_by=instant(data.get("evidence_due_by")),
        opened_at=instant(data.get("opened_at")),
        pse_payment_ids=tuple(data.get("pse_payment_ids") or ()),
    )


def _translated(event: PseWebhookEvent) -> dict[str, Any] | None:
    """What is stored to apply: the refund's view, or the dispute's; None for
    an event we do not act on."""
    if event.dispute is not None:
        return {_DISPUTE: dispute_report_to_dict(event.dispute)}
    return pse_refund_to_dict(event.refund) if event.refund else None


def _texts_of(event: PseWebhookEvent) -> list[str | None]:
    """Every text of a verified event that would be stored."""
    seen = event.refund
    texts: list[str | None] = [event.event_id, event.event_type]
    if seen is not None:
        texts += [
            seen.pse_refund_id,
            seen.reference,
            seen.failure_code,
            seen.failure_message,
            *seen.pse_payment_ids,
        ]
    dispute = event.dispute
    if dispute is not None:
        texts += [dispute.pse_dispute_id, dispute.reason, *dispute.pse_payment_ids]
    return texts


@dataclass(frozen=True, slots=True)
class WebhookReceipt:
    event_id: str
    duplicate: bool
    status: WebhookStatus | None


class WebhookService:
    def __init__(self, deps: Deps, disputes: DisputeService | None = None) -> None:
        self.deps = deps
        self.disputes = disputes or DisputeService(deps)

    async def receive(
        self, pse_account: str, headers: Mapping[str, str], body: bytes
    ) -> WebhookReceipt:
        gateway = self.deps.gateways.get(pse_account)
        if gateway is None:
            self.deps.metrics.webhooks_received.labels("(unknown)", "unknown_account").inc()
            raise NotFound(f"no PSE account named {pse_account!r}")
        now = self.deps.clock.now()
        lowered = {k.lower(): v for k, v in headers.items()}

        def refused(verification: str, reason: str) -> None:
            # Nobody proved they sent it: a small summary, never its body,
            # within the audit log's budget for strangers.
            self.deps.metrics.webhooks_received.labels(pse_account, verification).inc()
            self.deps.audit.record_refusal(
                "webhook.refused",
                {
                    "pse_account": pse_account,
                    "verification": verification,
                    "reason": reason[:200],
                    "size": len(body),
                },
            )

        def audit(verification: str, **extra: Any) -> None:
            self.deps.metrics.webhooks_received.labels(pse_account, verification).inc()
            self.deps.audit.record(
                "webhook.received",
                {
                    "pse_account": pse_account,
                    "verification": verification,
                    "headers": lowered,
                    "body": body[:_AUDIT_BODY_BYTES].decode("utf-8", errors="replace"),
                    **extra,
                },
                actor=f"pse:{pse_account}",
            )

        try:
            event = gateway.parse_webhook(lowered, body, now)
        except InvalidWebhookSignature as exc:
            log.warning("webhook.rejected", pse_account=pse_account, reason=str(exc))
            refused("invalid_signature", str(exc))
            raise InvalidSignature() from None
        except InvalidWebhookPayload as exc:
            log.warning("webhook.unreadable", pse_account=pse_account, reason=str(exc))
            refused("invalid_payload", str(exc))
            raise InvalidWebhookBody(str(exc)) from None
        problem = first_text_problem(_texts_of(event))
        if problem is not None:
            log.warning("webhook.unreadable", pse_account=pse_account, reason=problem)
            refused("invalid_payload", problem)
            raise InvalidWebhookBody(problem)
        audit(
            "ok",
            event_id=event.event_id,
            event_type=event.event_type,
            pse_refund_id=event.refund.pse_refund_id if event.refund else None,
            **({"pse_dispute_id": event.dispute.pse_dispute_id} if event.dispute else {}),
        )
        received = ReceivedWebhook(
            pse_account=pse_account,
            event_id=event.event_id,
            event_type=event.event_type,
            body=body.decode("utf-8", errors="replace"),
            refund=_translated(event),
            received_at=now,
        )
        duplicate, status = await self._store_and_apply(received)
        if duplicate:
            log.info("webhook.duplicate", pse_account=pse_account, event_id=event.event_id)
            return WebhookReceipt(event.event_id, True, None)
        return WebhookReceipt(event.event_id, False, status)

    async def _store_and_apply(self, received: ReceivedWebhook) -> tuple[bool, WebhookStatus]:
        """Store the raw event and apply it in one transaction, the event
        stored with its outcome; True for a repeat of an event stored before,
        which changes nothing. If applying fails, the event is stored alone
        (`received`) for the worker to apply."""
        try:
            async with self.deps.uow() as uow:
                if received.refund is None:
                    ignored = await uow.webhooks.insert_if_new(
                        received, WebhookStatus.IGNORED, received.received_at
                    )
                    await uow.commit()
                    return ignored is None, WebhookStatus.IGNORED
                status, done = await self._apply_in(uow, received)
                await uow.commit()
        except WebhookStoredBefore:
            return True, WebhookStatus.RECEIVED
        except Exception:
            log.exception(
                "webhook.apply_failed", pse_account=received.pse_account, event_id=received.event_id
            )
            async with self.deps.uow() as uow:
                stored = await uow.webhooks.insert_if_new(received)
                await uow.commit()
            return stored is None, WebhookStatus.RECEIVED
        done()
        return False, status

    async def apply(self, stored: StoredWebhook) -> WebhookStatus:
        """Apply one stored event to its refund, under the refund's lock."""
        if stored.refund is None:
            return WebhookStatus.IGNORED
        async with self.deps.uow() as uow:
            status, done = await self._apply_in(uow, stored)
            await uow.commit()
        done()
        return status

    async def _apply_in(
        self, uow: UnitOfWork, webhook: StoredWebhook | ReceivedWebhook
    ) -> tuple[WebhookStatus, Callable[[], None]]:
        """Apply in the caller's transaction a stored event, or one received
        now, which is stored with its outcome (WebhookStoredBefore when it was
        stored before); returns the status and what to log once it has
        committed."""
        assert webhook.refund is not None
        if _DISPUTE in webhook.refund:
            if isinstance(webhook, ReceivedWebhook):
                # What a dispute writes is the dispute service's: the event is
                # stored first, then marked with its outcome.
                stored = await uow.webhooks.insert_if_new(webhook)
                if stored is None:
                    raise WebhookStoredBefore(f"{webhook.pse_account}/{webhook.event_id}")
                webhook = stored
            return await self._apply_dispute_in(uow, webhook)
        seen = pse_refund_from_dict(webhook.refund)
        now = self.deps.clock.now()
        target = webhook.id if isinstance(webhook, StoredWebhook) else webhook
        match = await self._match(uow, webhook.pse_account, seen)
        if match is None:
            if isinstance(target, int):
                await uow.webhooks.mark(target, WebhookStatus.UNMATCHED, None, now)
            elif await uow.webhooks.insert_if_new(target, WebhookStatus.UNMATCHED, now) is None:
                raise WebhookStoredBefore(f"{target.pse_account}/{target.event_id}")
            return WebhookStatus.UNMATCHED, lambda: log.info(
                "webhook.unmatched",
                pse_account=webhook.pse_account,
                event_id=webhook.event_id,
                pse_refund_id=seen.pse_refund_id,
            )
        payment, refund = match
        by_pse_id = bool(seen.pse_refund_id) and refund.pse_refund_id == seen.pse_refund_id
        problem = None if by_pse_id else reference_claim_problem(refund, payment, seen)
        if problem is not None:
            refund.flag(problem, now)
            mismatched = WebhookOutcome(target, WebhookStatus.MISMATCHED, refund.id, now)
            await save(self.deps, uow, payment, refund, webhook=mismatched)
            return WebhookStatus.MISMATCHED, lambda: log.warning(
                "webhook.mismatched",
                pse_account=webhook.pse_account,
                event_id=webhook.event_id,
                refund_id=refund.id,
                problem=problem,
            )
        outcome = refund.apply_pse(payment, seen, now, f"pse:{webhook.pse_account} webhook")
        status = WebhookStatus.CONFLICT if outcome is Applied.CONTRADICTS else WebhookStatus.APPLIED
        applied = WebhookOutcome(target, status, refund.id, now)
        await save(self.deps, uow, payment, refund, webhook=applied)
        return status, lambda: log.info(
            "webhook.applied",
            pse_account=webhook.pse_account,
            event_id=webhook.event_id,
            refund_id=refund.id,
            outcome=outcome.value,
            status=refund.status.value,
        )

    async def _apply_dispute_in(
        self, uow: UnitOfWork, stored: StoredWebhook
    ) -> tuple[WebhookStatus, Callable[[], None]]:
        """A dispute event, applied to its payment and the payment's refunds."""
        assert stored.refund is not None
        report = dispute_report_from_dict(stored.refund[_DISPUTE])
        now = self.deps.clock.now()
        about = {
            "pse_account": stored.pse_account,
            "event_id": stored.event_id,
            "pse_dispute_id": report.pse_dispute_id,
        }
        try:
            change = await self.disputes.apply_pse_in(uow, stored.pse_account, report)
        except DomainError as refused:
            # The dispute does not fit the payment it names (another currency,
            # more than its amount, a dispute id of another payment): nothing
            # was written; the event and its audit record are there to look at.
            await uow.webhooks.mark(stored.id, WebhookStatus.MISMATCHED, None, now)
            problem = refused.detail
            return WebhookStatus.MISMATCHED, lambda: log.warning(
                "webhook.dispute_refused", **about, problem=problem
            )
        if change is None:
            # A payment not registered here: nothing of ours to act on.
            await uow.webhooks.mark(stored.id, WebhookStatus.IGNORED, None, now)
            return WebhookStatus.IGNORED, lambda: log.info("webhook.dispute_unmatched", **about)
        await uow.webhooks.mark(stored.id, WebhookStatus.APPLIED, None, now)
        dispute = change.dispute
        return WebhookStatus.APPLIED, lambda: log.info(
            "webhook.applied",
            **about,
            payment_id=dispute.payment_id,
            dispute_id=dispute.id,
            status=dispute.status.value,
        )

    async def _match(
        self, uow: UnitOfWork, pse_account: str, seen: PseRefund
    ) -> tuple[Payment, Refund] | None:
        """Our refund with the PSE's refund id, else the one its reference names
        (which `reference_claim_problem` must still accept), with its payment:
        both locked, the payment first."""
        return await uow.refunds.lock_matching(pse_account, seen.pse_refund_id, seen.reference)
