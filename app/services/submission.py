"""Phases 2 and 3: send approved refunds to their PSE and find out what it did.

No transaction is open while a PSE is called: `submitting` is committed
first, the PSE is called with the refund's own idempotency key, then the
answer is committed. A process that dies in between leaves a `submitting`
row that resolution completes by asking the PSE before anything is resent.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager
from datetime import timedelta

import structlog

from app.domain.models import Payment, Refund, RefundStatus
from app.domain.pse import (
    Accepted,
    Declined,
    LookupResult,
    NotFound,
    PseRefundState,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)
from app.domain.records import StoredWebhook, WaitingFor
from app.services.context import Deps, lock_refund, save, save_unless_moved
from app.services.webhooks import WebhookService

log = structlog.get_logger("app.refunds")

# Statuses in which the PSE may hold the refund and we may ask it.
ASKABLE = frozenset({RefundStatus.SUBMITTING, RefundStatus.UNKNOWN, RefundStatus.PENDING})


def _about(refund: Refund) -> AbstractContextManager[object]:
    """Every log line and audit record of a PSE call names the refund it is for."""
    return structlog.contextvars.bound_contextvars(
        refund_id=refund.id, payment_id=refund.payment_id, pse_account=refund.pse_account
    )


def submission_for(payment: Payment, refund: Refund) -> RefundSubmission:
    return RefundSubmission(
        reference=refund.id,
        idempotency_key=refund.idempotency_key,
        pse_payment_id=payment.pse_payment_id,
        amount=refund.amount,
        reason=refund.reason.value,
        payment_method=payment.payment_method,
        metadata=dict(refund.metadata),
        pse_refund_id=refund.pse_refund_id,
    )


def _waiting_for(refund: Refund, knew_pse_id: bool) -> WaitingFor | None:
    """Webhooks that came before we knew the PSE's id can be matched once an
    answer names it: read by the statement that saves the refund."""
    if knew_pse_id or refund.pse_refund_id is None:
        return None
    return WaitingFor(refund.pse_account, refund.pse_refund_id, refund.id)


class SubmissionService:
    def __init__(self, deps: Deps, webhooks: WebhookService, submitting_grace_seconds: float = 60):
        self.deps = deps
        self.webhooks = webhooks
        self.submitting_grace = timedelta(seconds=submitting_grace_seconds)

    def _actor(self, refund: Refund) -> str:
        return f"pse:{refund.pse_account}"

    async def submit(self, refund_id: str) -> Refund:
        """Send an `approved` refund. Anything else is returned untouched."""
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id)
            if refund.status is not RefundStatus.APPROVED:
                return refund
            refund.start_submission(payment, self.deps.clock.now())
            await save(self.deps, uow, payment, refund)
            await uow.commit()
        return await self.send(payment, refund)

    async def send(self, payment: Payment, refund: Refund) -> Refund:
        """Call the PSE for a refund whose `submitting` is committed (by
        `submit`, or by the transaction that created it) and commit its answer."""
        log.info(
            "refund.submitting",
            refund_id=refund.id,
            payment_id=payment.id,
            pse_account=refund.pse_account,
        )
        with _about(refund):
            result = await self.deps.gateway(refund.pse_account).create_refund(
                submission_for(payment, refund)
            )
        applied = await self._apply_pending_unlocked(payment, refund, result)
        if applied is not None:
            return applied
        return await self.apply_submit_result(refund.id, result)

    async def _apply_pending_unlocked(
        self, payment: Payment, refund: Refund, result: SubmitResult
    ) -> Refund | None:
        """The PSE's most common answer, `pending`, written without the lock
        and the transaction `apply_submit_result` takes: one statement that
        writes the change only if the refund's row is still as `refund`
        holds it (as committed before the call). Such a change moves no money
        (the amount stays reserved), so the payment's row is not needed.
        None, with nothing written, for any other answer, or when anything
        (a webhook, an operator) changed the refund meanwhile: the caller then
        applies the answer under the lock, to the refund as it now is."""
        open_single = self.deps.single_statement_uow
        if (
            open_single is None
            or refund.status is not RefundStatus.SUBMITTING
            or not isinstance(result, Accepted)
            or result.other_money_moving
            or result.refund.state is not PseRefundState.PENDING
        ):
            return None
        # As committed: what the row must still hold (its columns are compared,
        # not its history, which the copy shares).
        read = copy.copy(refund)
        knew_pse_id = refund.pse_refund_id is not None
        refund.apply_pse(payment, result.refund, self.deps.clock.now(), self._actor(refund))
        waiting_for = _waiting_for(refund, knew_pse_id)
        async with open_single() as uow:
            waiting = await save_unless_moved(self.deps, uow, payment, refund, read, waiting_for)
            if waiting is None:
                log.info("refund.submit_result.moved", refund_id=refund.id)
                return None
            await uow.commit()
        return await self._answered(refund, result, waiting)

    async def apply_submit_result(self, refund_id: str, result: SubmitResult) -> Refund:
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id)
            actor = self._actor(refund)
            knew_pse_id = refund.pse_refund_id is not None
            in_flight = refund.status in (RefundStatus.SUBMITTING, RefundStatus.UNKNOWN)
            if isinstance(result, Accepted):
                refund.apply_pse(payment, result.refund, now, actor)
                if result.other_money_moving:
                    # The PSE paid (or is paying) this refund more than once: the
                    # money-moving one is applied, the surplus needs a person.
                    extra = ", ".join(
                        f"{r.pse_refund_id} ({r.state})" for r in result.other_money_moving
                    )
                    refund.flag(
                        f"the PSE holds more than one refund that moved money under this "
                        f"reference: {result.refund.pse_refund_id} ({result.refund.state}) "
                        f"applied, also {extra}",
                        now,
                    )
            elif isinstance(result, Declined):
                if not in_flight:
                    refund.flag(
                        f"PSE declined ({result.code}) a refund that is {refund.status}", now
                    )
                elif result.retriable:
                    refund.mark_unknown(
                        payment,
                        f"{result.code}: retriable",
                        now,
                        failure_code=result.code,
                        failure_message=result.message,
                    )
                elif result.offline and refund.can_move_to(RefundStatus.OFFLINE_REQUIRED):
                    refund.require_offline(payment, result.code, result.message, now, actor)
                elif result.offline:
                    # `unknown` cannot become `offline_required`: ops must look.
                    refund.flag(f"PSE says the refund must be paid offline ({result.code})", now)
                else:
                    refund.decline(payment, result.code, result.message, now, actor)
            else:
                refund.mark_unknown(payment, result.reason, now)
            waiting_for = _waiting_for(refund, knew_pse_id)
            waiting = await save(self.deps, uow, payment, refund, waiting=waiting_for)
            await uow.commit()
        return await self._answered(refund, result, waiting)

    async def _answered(
        self, refund: Refund, result: SubmitResult, waiting: list[StoredWebhook]
    ) -> Refund:
        """Once the PSE's answer is committed: logged, and the stored webhooks
        that waited for the PSE's id applied."""
        log.info(
            "refund.submit_result",
            refund_id=refund.id,
            pse_account=refund.pse_account,
            status=refund.status.value,
            result=type(result).__name__,
        )
        for stored in waiting:
            await self.webhooks.apply(stored)
        return refund

    async def get(self, refund_id: str) -> Refund:
        async with self.deps.uow() as uow:
            refund = await uow.refunds.get(refund_id)
        if refund is None:
            raise LookupError(refund_id)
        return refund

    async def resolve(self, refund_id: str) -> Refund:
        """Ask the PSE what it has and apply the truth; resend (same key) only
        when it proves it has nothing."""
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id)
        if refund.status is RefundStatus.APPROVED:
            return await self.submit(refund_id)
        if refund.status not in ASKABLE:
            return refund
        gateway = self.deps.gateway(refund.pse_account)
        with _about(refund):
            lookup: LookupResult = await gateway.find_refund(submission_for(payment, refund))
        if isinstance(lookup, Accepted):
            return await self.apply_submit_result(refund_id, lookup)
        if isinstance(lookup, Unanswered):
            log.info("refund.resolve.unanswered", refund_id=refund_id, reason=lookup.reason)
            return await self._orphan_unanswered(refund_id, lookup.reason)
        assert isinstance(lookup, NotFound)
        return await self._absent_at_pse(refund_id)

    async def _orphan_unanswered(self, refund_id: str, reason: str) -> Refund:
        """A `submitting` refund past its grace whose PSE does not answer either:
        its call died with its process, so its outcome is `unknown`."""
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id)
            if (
                refund.status is RefundStatus.SUBMITTING
                and now - refund.updated_at >= self.submitting_grace
            ):
                refund.mark_unknown(payment, f"interrupted; look-up: {reason}", now)
                await save(self.deps, uow, payment, refund)
                await uow.commit()
        return refund

    async def _absent_at_pse(self, refund_id: str) -> Refund:
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id)
            if refund.status is RefundStatus.PENDING:
                refund.flag("the PSE has no refund matching this pending refund", now)
                await save(self.deps, uow, payment, refund)
                await uow.commit()
                return refund
            if refund.status not in (RefundStatus.UNKNOWN, RefundStatus.SUBMITTING):
                return refund  # moved meanwhile
            if refund.call_in_flight(now, self.submitting_grace):
                # Another process's request (a claim taken over from a process
                # that lost its connection, an ops sync) may still reach the
                # PSE: do not race it. Looked up again at the next check.
                return refund
            # Dated and committed before the call, under the row lock: from now
            # on every other process sees a call in flight and holds back.
            refund.start_resend(now)
            await save(self.deps, uow, payment, refund)
            await uow.commit()
        log.info("refund.resend", refund_id=refund_id, pse_account=refund.pse_account)
        with _about(refund):
            result = await self.deps.gateway(refund.pse_account).create_refund(
                submission_for(payment, refund)
            )
        return await self.apply_submit_result(refund_id, result)
