"""The background worker: settles what the request path could not.

It claims refunds due for a self-check (`approved` never sent, `submitting`
whose process died, `unknown`, `pending` without a webhook) in a short
transaction with FOR UPDATE SKIP LOCKED and a lease, so any number of
workers and API processes can run against one database without two of them
handling the same refund. Each refund is then resolved outside any
transaction: the PSE is asked first, and a refund is sent again (with its
original idempotency key) only when the PSE proves it has nothing.

A claim also names its claimer (`Claimer`: this process's key, alive as long
as the process is). A process killed in the middle of a pass leaves claims
whose claimer is gone: the next pass of any worker takes them, rather than
waiting for their lease, which remains the backstop. A refund taken over
while its first claimer's PSE call may still be in flight is safe: a refund
is sent only from `approved`, under its row lock, after committing
`submitting`; and resent only once no request can still be in flight (see
`Refund.call_in_flight`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from app.domain.models import RefundStatus
from app.domain.ports import Claimer
from app.services.context import Deps, lock_refund, save
from app.services.events import DeliveryService
from app.services.submission import SubmissionService
from app.services.webhooks import WebhookService

log = structlog.get_logger("app.worker")


@dataclass(slots=True)
class WorkerPass:
    """What one pass did."""

    claimed: int = 0
    progressed: int = 0
    rescheduled: int = 0
    exhausted: int = 0
    errors: int = 0
    webhooks_applied: int = 0
    events_delivered: int = 0  # attempted
    stale_flagged: int = 0
    refund_ids: list[str] = field(default_factory=list)


class Worker:
    def __init__(
        self,
        deps: Deps,
        submissions: SubmissionService,
        webhooks: WebhookService,
        deliveries: DeliveryService | None = None,
        *,
        poll_interval_seconds: float = 1.0,
        batch_size: int = 20,
        concurrency: int = 8,
        lease_seconds: float = 300.0,
        webhook_retry_after_seconds: float = 5.0,
        idempotency_retention_days: int = 30,
        claimer: Claimer | None = None,
    ) -> None:
        self.claimer = claimer
        self.idempotency_retention = timedelta(days=idempotency_retention_days)
        self.deps = deps
        self.submissions = submissions
        self.webhooks = webhooks
        self.deliveries = deliveries
        self.poll_interval = poll_interval_seconds
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease_seconds)
        self.webhook_retry_after = timedelta(seconds=webhook_retry_after_seconds)
        self._limit = asyncio.Semaphore(concurrency)

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set; the pass under way finishes first,
        so PSE calls in flight are completed and recorded."""
        log.info("worker.started")
        while not stop.is_set():
            try:
                done = await self.run_once()
            except Exception:
                log.exception("worker.pass_failed")
                done = WorkerPass()
            if done.claimed >= self.batch_size or (
                self.deliveries is not None and done.events_delivered >= self.deliveries.batch_size
            ):
                continue  # more may be due: no pause
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)
        log.info("worker.stopped")

    async def run_once(self) -> WorkerPass:
        result = WorkerPass()
        # Checked alive before each claim: a key whose session is gone would
        # make this pass's claims free for everyone at once.
        claimer = await self.claimer.key() if self.claimer is not None else None
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            ids = await uow.refunds.claim_due(now, now + self.lease, self.batch_size, claimer)
            await uow.commit()
        result.claimed = len(ids)
        result.refund_ids = ids
        outcomes = await asyncio.gather(*(self._check(refund_id) for refund_id in ids))
        for outcome in outcomes:
            setattr(result, outcome, getattr(result, outcome) + 1)
        if ids and claimer is not None:
            await self._release(ids, claimer)
        result.webhooks_applied = await self._apply_stuck_webhooks()
        result.stale_flagged = await self._flag_stale()
        async with self.deps.uow() as uow:
            # A reconciliation runs in the process it was uploaded to; one that
            # has been `processing` for an hour lost that process.
            changed = await uow.reconciliations.fail_stalled(now - timedelta(hours=1), now)
            # Replayable answers are kept for the retention the contract promises.
            changed += await uow.idempotency.purge(now - self.idempotency_retention)
            if changed:
                await uow.commit()
        if self.deliveries is not None:
            try:
                result.events_delivered = await self.deliveries.deliver_due()
            except Exception:
                log.exception("event.delivery_pass_failed")
        if ids:
            log.info(
                "worker.pass",
                claimed=result.claimed,
                progressed=result.progressed,
                rescheduled=result.rescheduled,
                exhausted=result.exhausted,
                errors=result.errors,
            )
        return result

    async def _release(self, ids: list[str], claimer: int) -> None:
        """The pass's checks are over: their claims go (their next check is
        their next_check_at, or the lease's end for a check that failed)."""
        try:
            async with self.deps.uow() as uow:
                await uow.refunds.release_claims(ids, claimer)
                await uow.commit()
        except Exception:
            # Still this live process's claims: their leases free them.
            log.exception("worker.release_failed", claimed=len(ids))

    async def _check(self, refund_id: str) -> str:
        async with self._limit:
            structlog.contextvars.bind_contextvars(refund_id=refund_id)
            try:
                before = await self.submissions.get(refund_id)
                after = await self.submissions.resolve(refund_id)
                if after.status is not before.status or after.status.is_final:
                    return "progressed"
                # As the check left it (a resend dates the refund without moving it).
                return await self._check_failed(refund_id, after.status, after.updated_at)
            except Exception:
                log.exception("worker.check_failed", refund_id=refund_id)
                # The lease expires by itself: the refund is checked again later.
                return "errors"
            finally:
                structlog.contextvars.unbind_contextvars("refund_id")

    async def _check_failed(self, refund_id: str, status: RefundStatus, updated_at: object) -> str:
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id)
            if refund.status is not status or refund.updated_at != updated_at:
                return "progressed"  # something else moved it meanwhile
            exhausted = self.deps.schedule.check_failed(refund, now)
            await save(self.deps, uow, payment, refund)
            await uow.commit()
        if exhausted:
            log.warning("refund.needs_attention", refund_id=refund_id, status=status.value)
            return "exhausted"
        return "rescheduled"

    async def _flag_stale(self) -> int:
        """Raise `refund.needs_attention` once for each refund that outlives the SLA
        without reaching a final status (before its customer opens a chargeback)."""
        now = self.deps.clock.now()
        cutoff = now - timedelta(hours=self.deps.stale_after_hours)
        async with self.deps.uow() as uow:
            ids = await uow.refunds.stale_unflagged(cutoff, 100)
        for refund_id in ids:
            async with self.deps.uow() as uow:
                payment, refund = await lock_refund(uow, refund_id)
                if refund.status.is_final:
                    continue
                hours = self.deps.stale_after_hours
                refund.flag(f"stale: still {refund.status} after {hours:g} h", now)
                await save(self.deps, uow, payment, refund)
                await uow.commit()
        return len(ids)

    async def _apply_stuck_webhooks(self) -> int:
        before = self.deps.clock.now() - self.webhook_retry_after
        async with self.deps.uow() as uow:
            stuck = await uow.webhooks.stuck(before, 100)
        applied = 0
        for stored in stuck:
            try:
                await self.webhooks.apply(stored)
                applied += 1
            except Exception:
                log.exception("webhook.apply_failed", event_id=stored.event_id)
        return applied
