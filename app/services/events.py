"""The event feed, and delivery of events to the store backend's webhook.

Events are written in the transaction of the change they report (the
outbox). Delivery is at least once and in order per refund: an event is
sent only after every earlier event of its refund was delivered or gave up
(a payment's own events, its disputes', likewise per payment),
retried with exponential backoff and jitter for the configured window, then
marked `failed` (and visible, and re-deliverable by ops).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import timedelta

import structlog

from app.domain.errors import NotFound
from app.domain.models import Actor
from app.domain.ports import Claimer, EventPublisher, UnitOfWork
from app.domain.records import DeliveryAttempt, DeliveryStatus, OutboxEvent
from app.services.context import Deps, Scoped

log = structlog.get_logger("app.events")


# `after=0`: a store that has processed nothing reads the feed from its first event.
FROM_THE_START = "0"


async def visible_event(service: Scoped, uow: UnitOfWork, event_id: str) -> OutboxEvent | None:
    """The event, if it exists and is of a payment the service's scope sees."""
    event = await uow.outbox.get(event_id)
    if event is None or service.scope is None:
        return event
    payment = await uow.payments.get(event.payment_id) if event.payment_id else None
    return event if payment is not None and service.sees(payment.pse_account) else None


class EventService(Scoped):
    """Scoped (`scoped`): only the events of the scope's PSE accounts'
    payments; the others are not found."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def get(self, event_id: str) -> OutboxEvent:
        async with self.deps.uow() as uow:
            event = await visible_event(self, uow, event_id)
        if event is None:
            raise NotFound(f"no event {event_id}")
        return event

    async def position_of(self, event_id: str) -> tuple[int, int]:
        """Where the feed stands just after `event_id`; `FROM_THE_START` is before
        the first event ever written."""
        if event_id == FROM_THE_START:
            return (0, 0)
        return (await self.get(event_id)).position

    async def list_forward(
        self, *, after: tuple[int, int], types: list[str], refund_id: str | None, limit: int
    ) -> list[OutboxEvent]:
        """Oldest first, strictly after `after`, never past a transaction still running."""
        async with self.deps.uow() as uow:
            return await uow.outbox.list_after(
                after=after, types=types, refund_id=refund_id, limit=limit, accounts=self.accounts
            )

    async def list_backward(
        self,
        *,
        before: tuple[int, int] | None,
        types: list[str],
        refund_id: str | None,
        limit: int,
    ) -> list[OutboxEvent]:
        """Newest first, strictly before `before` when given."""
        async with self.deps.uow() as uow:
            return await uow.outbox.list_newest(
                types=types,
                refund_id=refund_id,
                limit=limit,
                before=before,
                accounts=self.accounts,
            )

    async def attempts(self, event_id: str) -> list[DeliveryAttempt]:
        await self.get(event_id)
        async with self.deps.uow() as uow:
            return await uow.outbox.attempts(event_id)

    async def redeliver(self, event_id: str) -> OutboxEvent:
        async with self.deps.uow() as uow:
            visible = await visible_event(self, uow, event_id)
            if visible is None or not await uow.outbox.redeliver(event_id, self.deps.clock.now()):
                raise NotFound(f"no event {event_id}")
            await uow.commit()
        return await self.get(event_id)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retry_for: timedelta = timedelta(hours=24)
    initial_seconds: float = 5.0
    max_seconds: float = 3600.0

    def delay(self, attempt: int, rng: random.Random) -> timedelta:
        """Exponential from `initial_seconds`, capped, with full jitter in its upper half."""
        ceiling = min(self.max_seconds, self.initial_seconds * 2 ** (attempt - 1))
        return timedelta(seconds=rng.uniform(ceiling / 2, ceiling))


class DeliveryService(Scoped):
    """Scoped (`scoped`), `redeliver` finds only the events of the scope's
    PSE accounts' payments."""

    def __init__(
        self,
        deps: Deps,
        publisher: EventPublisher | None,
        retry: RetryPolicy,
        *,
        batch_size: int = 50,
        concurrency: int = 8,
        lease_seconds: float = 60.0,
        rng: random.Random | None = None,
        claimer: Claimer | None = None,
    ) -> None:
        self.deps = deps
        # Claims name this process: a process killed mid-delivery leaves
        # events any other worker's next pass sends (at least once, in order).
        self.claimer = claimer
        self.publisher = publisher
        self.retry = retry
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease_seconds)
        self._limit = asyncio.Semaphore(concurrency)
        self._rng = rng or random.Random()

    async def redeliver(self, event_id: str, actor: Actor | None = None) -> OutboxEvent:
        """Queue an event for delivery again now (after it `failed`, or for a
        store that lost it): the worker sends it with the same `webhook-id`,
        after any earlier event of its refund still pending. With `actor`,
        the audit trail says who asked."""
        async with self.deps.uow() as uow:
            event = await visible_event(self, uow, event_id)
            if event is None or not await uow.outbox.redeliver(event_id, self.deps.clock.now()):
                raise NotFound(f"no event {event_id}")
            await uow.commit()
        if actor is not None:
            self.deps.audit.record(
                "event.redelivered",
                {
                    "event_id": event.id,
                    "event_type": event.type,
                    "delivery_status_before": event.delivery_status.value,
                    "attempts_before": event.delivery_attempts,
                    "by_key_id": actor.id,
                },
                refund_id=event.refund_id,
                payment_id=event.payment_id,
                actor=actor.name,
            )
        async with self.deps.uow() as uow:
            queued = await uow.outbox.get(event_id)
        assert queued is not None  # events are never deleted
        return queued

    async def deliver_due(self) -> int:
        """Send the events due now (one per refund: its earliest undelivered one).

        Returns how many were attempted; a full batch means more may be due."""
        if self.publisher is None:
            return 0
        claimer = await self.claimer.key() if self.claimer is not None else None
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            events = await uow.outbox.claim_deliveries(
                now, now + self.lease, self.batch_size, claimer
            )
            await uow.commit()
        await asyncio.gather(*(self._deliver(event) for event in events))
        return len(events)

    async def _deliver(self, event: OutboxEvent) -> int:
        assert self.publisher is not None
        async with self._limit:
            attempt = await self.publisher.publish(event, event.delivery_attempts + 1)
        now = self.deps.clock.now()
        if attempt.delivered:
            status, next_at = DeliveryStatus.DELIVERED, None
        elif now - (event.first_attempt_at or attempt.at) >= self.retry.retry_for:
            # The window runs from the first attempt: an event held back behind
            # an earlier one of its refund still gets its full window.
            status, next_at = DeliveryStatus.FAILED, None
        else:
            status = DeliveryStatus.PENDING
            next_at = now + self.retry.delay(attempt.attempt, self._rng)
        async with self.deps.uow() as uow:
            await uow.outbox.record_delivery(attempt, status=status, next_delivery_at=next_at)
            await uow.commit()
        self.deps.metrics.events_delivered.labels(
            "delivered"
            if attempt.delivered
            else status.value
            if status is not DeliveryStatus.PENDING
            else "retry"
        ).inc()
        self.deps.audit.record(
            "webhook.sent",
            {
                "event_id": event.id,
                "event_type": event.type,
                "url": attempt.url,
                "attempt": attempt.attempt,
                "status_code": attempt.status_code,
                "duration_ms": attempt.duration_ms,
                "error": attempt.error,
                "outcome": status.value,
            },
            refund_id=event.refund_id,
            payment_id=event.payment_id,
        )
        log.info(
            "event.delivery",
            event_id=event.id,
            refund_id=event.refund_id,
            type=event.type,
            attempt=attempt.attempt,
            status_code=attempt.status_code,
            outcome=status.value,
        )
        return 1 if attempt.delivered else 0
