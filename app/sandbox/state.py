"""Everything the sandbox PSE knows and does: payments, refunds, idempotency,
settlement in the background, disputes, webhooks, and the faults it injects.

Concurrency: asyncio runs one coroutine at a time, so every check-then-write
below is a synchronous stretch with no `await` in it; no other request can slip
between the refundable-amount check and the commit. Awaits (latency, hangs,
settlement delays, webhook delivery) only ever happen outside those stretches.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog

from app.domain.money import is_currency
from app.sandbox.config import Faults, SandboxConfig
from app.sandbox.idempotency import Answer, IdempotencyStore, fingerprint
from app.sandbox.records import (
    DISPUTE_OPEN,
    EVIDENCE_WINDOW,
    FAILED,
    SUCCEEDED,
    SandboxDispute,
    SandboxError,
    SandboxPayment,
    SandboxRefund,
    error_body,
    new_id,
    utcnow,
)
from app.sandbox.webhooks import Delivery, WebhookSender, new_event

log = structlog.get_logger("app.sandbox")

# Names under which injected faults are counted in `/_control/stats`.
LATENCY = "latency"
ERROR_BEFORE_COMMIT = "error_before_commit"
ERROR_AFTER_COMMIT = "error_after_commit"
TIMEOUT_AFTER_COMMIT = "timeout_after_commit"
REFUND_FAILURE = "refund_failure"
WEBHOOK_DROP = "webhook_drop"
WEBHOOK_DUPLICATE = "webhook_duplicate"
WEBHOOK_DELAY = "webhook_delay"
WEBHOOK_REORDER = "webhook_reorder"

# The events a dispute sends: a new open dispute, a change that leaves it (or
# puts it back) open, and a final status (won, lost, closed).
DISPUTE_OPENED = "dispute.opened"
DISPUTE_UPDATED = "dispute.updated"
DISPUTE_CLOSED = "dispute.closed"


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    amount: int
    currency: str
    id: str | None = None
    captured_at: datetime | None = None
    payment_method: str | None = None


@dataclass(frozen=True, slots=True)
class RefundRequest:
    payment_id: str
    amount: int
    currency: str
    reference: str
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        return fingerprint(
            {
                "payment_id": self.payment_id,
                "amount": self.amount,
                "currency": self.currency,
                "reference": self.reference,
                "reason": self.reason,
                "metadata": self.metadata,
            }
        )


@dataclass(frozen=True, slots=True)
class DisputeRequest:
    """Raise a dispute on a payment, or move one (`dispute_id`)."""

    payment_id: str
    status: str
    amount: int | None = None
    reason: str | None = None
    dispute_id: str | None = None


def dispute_event_type(created: bool, status: str) -> str:
    if status != DISPUTE_OPEN:
        return DISPUTE_CLOSED
    return DISPUTE_OPENED if created else DISPUTE_UPDATED


def _injected_error(kind: str) -> Answer:
    return Answer(500, error_body("internal_error", f"The sandbox failed ({kind}, injected)."))


class SandboxState:
    def __init__(
        self,
        config: SandboxConfig,
        faults: Faults | None = None,
        *,
        webhook_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.faults = faults or Faults()
        self._rng = random.Random(config.seed)
        self.payments: dict[str, SandboxPayment] = {}
        self.refunds: dict[str, SandboxRefund] = {}
        self.disputes: dict[str, SandboxDispute] = {}
        # Each dispute's latest webhook delivery: the next one waits for it.
        self._dispute_notices: dict[str, asyncio.Task[None]] = {}
        self.idempotency = IdempotencyStore()
        self.faults_injected: Counter[str] = Counter()
        self.deliveries: list[Delivery] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sender = (
            WebhookSender(
                config.webhook_url,
                config.webhook_secret,
                timeout_seconds=config.webhook_timeout_seconds,
                max_attempts=config.webhook_max_attempts,
                backoff_seconds=config.webhook_backoff_seconds,
                transport=webhook_transport,
            )
            if config.webhook_url
            else None
        )

    # ------------------------------------------------------------------
    # Faults
    # ------------------------------------------------------------------

    def _roll(self, kind: str, rate: float) -> bool:
        """Decide one fault. A rate of 0 draws nothing, so switching a fault off
        does not shift the sequence the others see."""
        if rate <= 0:
            return False
        hit = rate >= 1 or self._rng.random() < rate
        if hit:
            self.faults_injected[kind] += 1
            log.info("sandbox.fault", kind=kind)
        return hit

    async def inject_latency(self) -> None:
        latency_ms = self.faults.latency_ms
        if latency_ms > 0:
            self.faults_injected[LATENCY] += 1
            await asyncio.sleep(latency_ms / 1000)

    # ------------------------------------------------------------------
    # Payments
    # ------------------------------------------------------------------

    def register_payment(self, request: PaymentRequest) -> tuple[SandboxPayment, bool]:
        """The payment and whether it was created now (False: same one already known)."""
        _check_currency(request.currency)
        if request.amount < 1:
            raise SandboxError(400, "invalid_amount", "amount must be a positive integer")
        if request.id is not None and request.id in self.payments:
            existing = self.payments[request.id]
            if existing.same_registration(
                request.amount, request.currency, request.captured_at, request.payment_method
            ):
                return existing, False
            raise SandboxError(
                409, "payment_exists", f"payment {request.id} exists with different fields"
            )
        now = utcnow()
        payment = SandboxPayment(
            id=request.id or new_id("sbpay"),
            currency=request.currency,
            amount=request.amount,
            captured_at=request.captured_at or now,
            payment_method=request.payment_method,
            created_at=now,
        )
        self.payments[payment.id] = payment
        return payment, True

    def get_payment(self, payment_id: str) -> SandboxPayment:
        payment = self.payments.get(payment_id)
        if payment is None:
            raise SandboxError(404, "not_found", f"no payment {payment_id}")
        return payment

    # ------------------------------------------------------------------
    # Refunds
    # ------------------------------------------------------------------

    async def create_refund(self, key: str, request: RefundRequest) -> Answer:
        """POST /v1/refunds: idempotency, rules, commit, then the commit faults."""
        if self._roll(ERROR_BEFORE_COMMIT, self.faults.error_before_commit_rate):
            await self.inject_latency()
            return _injected_error(ERROR_BEFORE_COMMIT)
        try:
            replay = self.idempotency.begin(key, request.fingerprint())
        except SandboxError:
            await self.inject_latency()
            raise
        if replay is not None:
            await self.inject_latency()
            return replay.replayed()
        try:
            # The latency is spent while the key is held, as with a slow PSE: a
            # concurrent retry with the same key gets 409 idempotency_in_progress.
            await self.inject_latency()
        except BaseException:
            self.idempotency.abandon(key)  # nothing committed: a retry may run it
            raise
        try:
            refund = self._commit_refund(request)
        except SandboxError as exc:
            # A refusal is a definitive answer: it is stored and replayed like success.
            answer = Answer(exc.status_code, exc.body())
            self.idempotency.finish(key, answer)
            return answer
        answer = Answer(200, refund.to_json())
        self._spawn(self._settle_and_notify(refund))

        faults = self.faults
        if self._roll(TIMEOUT_AFTER_COMMIT, faults.timeout_after_commit_rate):
            # The key stays in progress for the whole hang even if the client goes
            # away (uvicorn does not cancel the handler; in-process transports do).
            self._spawn(self._finish_later(key, answer, faults.hang_seconds))
            await asyncio.sleep(faults.hang_seconds)
            return answer
        self.idempotency.finish(key, answer)
        if self._roll(ERROR_AFTER_COMMIT, faults.error_after_commit_rate):
            return _injected_error(ERROR_AFTER_COMMIT)
        return answer

    def _commit_refund(self, request: RefundRequest) -> SandboxRefund:
        _check_currency(request.currency)
        if request.amount < 1:
            raise SandboxError(400, "invalid_amount", "amount must be a positive integer")
        now = utcnow()
        payment = self.payments.get(request.payment_id)
        if payment is None:
            # Newcomers refund any payment id: it is registered on first sight, uncapped.
            payment = SandboxPayment(
                id=request.payment_id,
                currency=request.currency,
                amount=None,
                captured_at=None,
                payment_method=None,
                created_at=now,
            )
            self.payments[payment.id] = payment
        if request.currency != payment.currency:
            raise SandboxError(
                400,
                "currency_mismatch",
                f"payment {payment.id} is in {payment.currency}, not {request.currency}",
            )
        if payment.amount is not None:
            refundable = payment.amount - payment.committed_amount()
            if request.amount > refundable:
                raise SandboxError(
                    400,
                    "amount_too_large",
                    f"amount {request.amount} exceeds the refundable {refundable}",
                )
        window = timedelta(days=self.config.refund_window_days)
        if payment.captured_at is not None and now - payment.captured_at > window:
            raise SandboxError(
                400,
                "refund_window_passed",
                f"payment {payment.id} was captured more than "
                f"{self.config.refund_window_days} days ago",
            )
        failed = self._roll(REFUND_FAILURE, self.faults.failure_rate)
        refund = SandboxRefund(
            id=new_id("sbre"),
            payment_id=payment.id,
            amount=request.amount,
            currency=request.currency,
            reference=request.reference,
            reason=request.reason,
            metadata=dict(request.metadata),
            created_at=now,
            outcome=FAILED if failed else SUCCEEDED,
        )
        payment.refunds.append(refund)
        self.refunds[refund.id] = refund
        log.info("sandbox.refund.created", refund_id=refund.id, reference=refund.reference)
        return refund

    def get_refund(self, refund_id: str) -> SandboxRefund:
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise SandboxError(404, "not_found", f"no refund {refund_id}")
        return refund

    def list_refunds(
        self, payment_id: str | None = None, reference: str | None = None
    ) -> list[SandboxRefund]:
        """Newest first, like the PSEs' list endpoints."""
        return [
            r
            for r in reversed(self.refunds.values())
            if (payment_id is None or r.payment_id == payment_id)
            and (reference is None or r.reference == reference)
        ]

    # ------------------------------------------------------------------
    # Disputes
    # ------------------------------------------------------------------

    def raise_dispute(self, request: DisputeRequest) -> tuple[SandboxDispute, bool]:
        """Open a dispute on a payment, or move an existing one to `request.status`,
        then send its webhook in the background. Returns the dispute and whether
        it was created now.

        Any move is allowed, a final status back to open included: the sandbox
        plays a PSE, and it is the service that must keep final statuses final.
        """
        payment = self.get_payment(request.payment_id)
        if request.amount is not None:
            if request.amount < 1:
                raise SandboxError(400, "invalid_amount", "amount must be a positive integer")
            if payment.amount is not None and request.amount > payment.amount:
                raise SandboxError(
                    400,
                    "amount_too_large",
                    f"amount {request.amount} exceeds the payment's {payment.amount}",
                )
        now = utcnow()
        if request.dispute_id is not None:
            dispute = self.disputes.get(request.dispute_id)
            if dispute is None:
                raise SandboxError(404, "not_found", f"no dispute {request.dispute_id}")
            if dispute.payment_id != payment.id:
                raise SandboxError(
                    400,
                    "invalid_request",
                    f"dispute {dispute.id} is on payment {dispute.payment_id}, not {payment.id}",
                )
            if request.amount is not None:
                dispute.amount = request.amount
            if request.reason is not None:
                dispute.reason = request.reason
            dispute.move(request.status, now)
            created = False
        else:
            amount = request.amount if request.amount is not None else payment.amount
            if amount is None:
                raise SandboxError(
                    400,
                    "invalid_amount",
                    f"payment {payment.id} was registered without an amount: give one",
                )
            dispute = SandboxDispute(
                id=new_id("sbdp"),
                payment_id=payment.id,
                amount=amount,
                currency=payment.currency,
                reason=request.reason,
                status=DISPUTE_OPEN,
                created_at=now,
                updated_at=now,
                evidence_due_by=now + EVIDENCE_WINDOW,
            )
            dispute.move(request.status, now)
            self.disputes[dispute.id] = dispute
            created = True
        event = new_event(dispute_event_type(created, dispute.status), dispute.to_json())
        log.info(
            "sandbox.dispute", dispute_id=dispute.id, status=dispute.status, type=event["type"]
        )
        previous = self._dispute_notices.get(dispute.id)
        self._dispute_notices[dispute.id] = self._spawn(self._notify_after(previous, event))
        return dispute, created

    async def _notify_after(
        self, previous: asyncio.Task[None] | None, event: dict[str, Any]
    ) -> None:
        """A dispute's events arrive in the order they happened."""
        if previous is not None:
            await asyncio.wait({previous})
        await self._notify(event)

    # ------------------------------------------------------------------
    # Settlement and webhooks (background)
    # ------------------------------------------------------------------

    async def _settle_and_notify(self, refund: SandboxRefund) -> None:
        created = new_event("refund.created", refund.to_json())
        reorder = self.faults.webhook_reorder
        if reorder:
            self.faults_injected[WEBHOOK_REORDER] += 1
        created_delivery = None if reorder else self._spawn(self._notify(created))
        await asyncio.sleep(self.config.settle_delay_seconds)
        if self.refunds.get(refund.id) is not refund:
            return  # the sandbox was reset meanwhile
        refund.settle(utcnow())
        final = new_event(f"refund.{refund.status}", refund.to_json())
        log.info("sandbox.refund.settled", refund_id=refund.id, status=refund.status)
        if created_delivery is not None:
            await created_delivery  # in order unless told otherwise
        await self._notify(final)
        if reorder:
            await self._notify(created)

    async def _notify(self, event: dict[str, Any]) -> None:
        if self._sender is None:
            return
        faults = self.faults
        if self._roll(WEBHOOK_DROP, faults.webhook_drop_rate):
            return
        copies = 2 if self._roll(WEBHOOK_DUPLICATE, faults.webhook_duplicate_rate) else 1
        if faults.webhook_delay_seconds > 0:
            self.faults_injected[WEBHOOK_DELAY] += 1
            await asyncio.sleep(faults.webhook_delay_seconds)
        for _ in range(copies):
            self.deliveries.append(await self._sender.deliver(event))

    async def _finish_later(self, key: str, answer: Answer, delay: float) -> None:
        await asyncio.sleep(delay)
        self.idempotency.finish(key, answer)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox.task.failed", error=repr(task.exception()))

    async def wait_idle(self) -> None:
        """Wait until every settlement and webhook in flight is done (callers bound
        the wait with `asyncio.timeout`)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _cancel_tasks(self) -> None:
        # A task being cancelled may have spawned another: loop until none is left.
        while self._tasks:
            tasks = set(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------
    # Control
    # ------------------------------------------------------------------

    async def reset(self) -> None:
        """Forget everything and switch every fault off."""
        await self._cancel_tasks()
        self.payments.clear()
        self.refunds.clear()
        self.disputes.clear()
        self._dispute_notices.clear()
        self.idempotency.clear()
        self.faults_injected.clear()
        self.deliveries.clear()
        self.faults = Faults()
        self._rng = random.Random(self.config.seed)

    async def aclose(self) -> None:
        """Cancel what runs in the background and close the webhook client."""
        await self._cancel_tasks()
        if self._sender is not None:
            await self._sender.aclose()

    def stats(self) -> dict[str, Any]:
        statuses = Counter(r.status for r in self.refunds.values())
        return {
            "faults_injected": dict(self.faults_injected),
            "refunds": len(self.refunds),
            "refunds_by_status": dict(statuses),
            "disputes": len(self.disputes),
            "disputes_by_status": dict(Counter(d.status for d in self.disputes.values())),
            "webhooks_sent": sum(1 for d in self.deliveries if d.delivered),
            "webhooks_failed": sum(1 for d in self.deliveries if not d.delivered),
            "payments": {p.id: _payment_stats(p) for p in self.payments.values()},
        }


def _payment_stats(payment: SandboxPayment) -> dict[str, Any]:
    succeeded = [r for r in payment.refunds if r.status == SUCCEEDED]
    by_reference: dict[str, list[str]] = {}
    for refund in payment.refunds:
        by_reference.setdefault(refund.reference, []).append(refund.id)
    return {
        "refunded_total_succeeded": sum(r.amount for r in succeeded),
        "refunds_succeeded": len(succeeded),
        "refunds_by_reference": by_reference,
    }


def _check_currency(currency: str) -> None:
    if not is_currency(currency):
        raise SandboxError(400, "invalid_currency", f"{currency!r} is not an ISO 4217 code")
