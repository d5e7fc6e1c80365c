"""Refund use cases: request, decide, cancel, pay out offline, read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.domain.errors import DomainError, IdempotencyKeyInUse, NotFound
from app.domain.models import Actor, Approver, Payment, Refund, RefundReason, RefundStatus
from app.domain.money import Money
from app.domain.ports import (
    RefundFilter,
    UnitOfWork,
)
from app.domain.records import KeptAnswer
from app.services.context import Deps, Scoped, lock_refund, save
from app.services.idempotency import (
    CONTENDED,
    IdempotencyClaim,
    KeyedRequest,
    Replay,
    claim_in,
)
from app.services.ids import new_id


@dataclass(frozen=True, slots=True)
class Kept:
    """An answer kept under an Idempotency-Key, as it was first given."""

    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class RefundAttempt:
    """One idempotent refund request as it ran, inside its transaction:
    `refund` is what it created, or `error` the rule it broke."""

    refund: Refund | None = None
    error: DomainError | None = None


# How the caller answers a request that ran: (status, body), kept for replays.
Render = Callable[[RefundAttempt], tuple[int, bytes]]


class _DayTotalMoved(Exception):
    """Refunds auto-approved since this one read the day's total took the room
    it was approved in: it is decided again, under the total's lock."""


@dataclass(frozen=True, slots=True)
class RequestRefund:
    payment_id: str
    amount: int | None
    reason: RefundReason
    note: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    currency: str | None = None


class RefundService(Scoped):
    """Scoped (`scoped`): refunds of other PSE accounts, and payments of
    other accounts to refund, are not found; lists leave them out."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def request(self, cmd: RequestRefund, actor: Actor) -> Refund:
        """Phase 1: check the rules and reserve the amount under the payment's lock,
        record the refund with its PSE idempotency key and its events, and
        commit — all before any PSE is called."""
        try:
            async with self.deps.uow() as uow:
                payment, refund = await self._create(uow, cmd, actor)
                await uow.commit()
        except _DayTotalMoved:
            async with self.deps.uow() as uow:
                payment, refund = await self._create(uow, cmd, actor, lock_day=True)
                await uow.commit()
        self._after_creation(payment, refund)
        return refund

    async def request_once(
        self,
        cmd: RequestRefund,
        actor: Actor,
        keyed: KeyedRequest,
        render: Render,
        in_flight_timeout: timedelta = timedelta(seconds=120),
    ) -> tuple[Kept, bool]:
        """`request` under an Idempotency-Key, in one transaction: the key's
        claim, the refund and the answer `render` gives it commit together.
        Returns that answer, or the one kept for the key, and whether it is a
        replay.

        A rule the request breaks is an answer like a success (kept and
        replayed). Anything `render` raises, or an answer of 500 and above,
        rolls everything back and frees the key for a retry."""
        contended = 0
        lock_day = False
        while contended < 3:
            try:
                async with self.deps.uow() as uow:
                    outcome = await claim_in(uow, keyed, self.deps.clock.now(), in_flight_timeout)
                    if isinstance(outcome, Replay):
                        return Kept(outcome.status, outcome.body), True
                    if not isinstance(outcome, IdempotencyClaim):
                        contended += 1
                        continue
                    try:
                        payment, refund = await self._create(
                            uow, cmd, actor, write=False, lock_day=lock_day
                        )
                        attempt = RefundAttempt(refund=refund)
                    except DomainError as error:
                        attempt = RefundAttempt(error=error)
                    kept = Kept(*render(attempt))
                    if kept.status >= 500:
                        return kept, False  # rolled back: the key is free again
                    answer = KeptAnswer(keyed.api_key_id, keyed.key, kept.status, kept.body)
                    if attempt.refund is None:
                        await uow.idempotency.complete(
                            answer.api_key_id, answer.key, answer.status, answer.body
                        )
                    else:
                        # The refund and its answer: one statement (the answer was
                        # rendered from the refund as it is about to be written).
                        await save(self.deps, uow, payment, attempt.refund, new=True, answer=answer)
                    await uow.commit()
            except _DayTotalMoved:
                lock_day = True  # rolled back, the key with it: once more, under the lock
                continue
            if attempt.refund is not None:
                self._after_creation(payment, attempt.refund)
            return kept, False
        raise IdempotencyKeyInUse(CONTENDED)

    async def _create(
        self,
        uow: UnitOfWork,
        cmd: RequestRefund,
        actor: Actor,
        *,
        write: bool = True,
        lock_day: bool = False,
    ) -> tuple[Payment, Refund]:
        """Check the rules and make the refund under the payment's lock; written
        at once, or (`write=False`) by the caller with `save(..., new=True)`
        before its commit.

        Under a daily auto-approval limit, the day's total is read with the
        payment, without a lock of its own, and an auto-approved refund adds
        itself to it just before the commit, if it still fits (else
        _DayTotalMoved, from the commit): the day's row, which every such
        refund needs, is then locked only from there to the end of the
        transaction. With `lock_day` the total is locked when read, as a retry
        after _DayTotalMoved does: that decision stands."""
        now = self.deps.clock.now()
        day = now.date().isoformat()
        limits = self.deps.policy.daily_auto_approve_limit
        auto_today = 0
        if limits and not lock_day:
            # Totals only grow: a refund this read puts past the limit is past it.
            found = await uow.payments.lock_with_day_total(cmd.payment_id, cmd.currency, day)
            payment, auto_today = found if found is not None else (None, 0)
        else:
            payment = await uow.payments.get(cmd.payment_id, for_update=True)
        if payment is None or not self.sees(payment.pse_account):
            raise NotFound(f"no payment {cmd.payment_id}")
        window = self.deps.account(payment.pse_account).refund_window_days
        amount = None
        if cmd.amount is not None:
            amount = Money(cmd.amount, cmd.currency or payment.currency)
        limit_currency = cmd.currency or payment.currency
        if lock_day and limit_currency in limits:
            auto_today = await uow.auto_approvals.lock_total(limit_currency, day)
        refund, decision = payment.request_refund(
            refund_id=new_id("rf"),
            amount=amount,
            reason=cmd.reason,
            note=cmd.note,
            metadata=cmd.metadata,
            policy=self.deps.policy,
            window_days=window,
            now=now,
            created_by=actor,
            auto_approved_today=auto_today,
        )
        if decision.counts_toward_daily_limit and refund.auto_approved:
            if lock_day:
                await uow.auto_approvals.add(refund.currency, day, refund.amount.amount)
            else:
                self._add_to_day_at_commit(uow, refund.currency, day, refund.amount.amount)
        if refund.status is RefundStatus.APPROVED and self.deps.queue.sends_at_once:
            # Sent right after this commit: marked `submitting` in it, which
            # spares a transaction (see SubmissionQueue).
            refund.start_submission(payment, now)
        if write:
            await save(self.deps, uow, payment, refund, new=True)
        return payment, refund

    def _add_to_day_at_commit(self, uow: UnitOfWork, currency: str, day: str, amount: int) -> None:
        limit = self.deps.policy.daily_auto_approve_limit[currency]

        async def add() -> None:
            if not await uow.auto_approvals.add_within(currency, day, amount, limit):
                raise _DayTotalMoved(f"{currency} {day}")

        uow.before_commit(add)

    def _after_creation(self, payment: Payment, refund: Refund) -> None:
        if refund.status is RefundStatus.SUBMITTING:
            self.deps.queue.send_soon(payment, refund)
        elif refund.status is RefundStatus.APPROVED:
            self.deps.queue.submit_soon(refund.id)

    def _audit_decision(
        self, uow: UnitOfWork, refund: Refund, approver: Approver, decision: str, note: str | None
    ) -> None:
        uow.after_commit(
            lambda: self.deps.audit.record(
                "approval.decision",
                {
                    "decision": decision,
                    "level": approver.level,
                    "approver_key_id": approver.actor.id,
                    "note": note,
                    "required_approvals": list(refund.required_approvals),
                    "status_after": refund.status.value,
                },
                refund_id=refund.id,
                payment_id=refund.payment_id,
                actor=approver.actor.name,
            )
        )

    async def approve(self, refund_id: str, approver: Approver, note: str | None) -> Refund:
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id, self.scope)
            refund.approve(payment, approver, note, self.deps.clock.now())
            self._audit_decision(uow, refund, approver, "approved", note)
            await save(self.deps, uow, payment, refund)
            await uow.commit()
        if refund.status is RefundStatus.APPROVED:
            self.deps.queue.submit_soon(refund.id)
        return refund

    async def reject(self, refund_id: str, approver: Approver, note: str) -> Refund:
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id, self.scope)
            refund.reject(payment, approver, note, self.deps.clock.now())
            self._audit_decision(uow, refund, approver, "rejected", note)
            await save(self.deps, uow, payment, refund)
            await uow.commit()
        return refund

    async def cancel(self, refund_id: str, actor: Actor, note: str | None = None) -> Refund:
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id, self.scope)
            refund.cancel(payment, actor, self.deps.clock.now(), note)
            await save(self.deps, uow, payment, refund)
            await uow.commit()
        return refund

    async def offline_payout(
        self, refund_id: str, actor: Actor, reference: str, paid_at: datetime
    ) -> Refund:
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id, self.scope)
            refund.mark_offline_paid(payment, actor, reference, paid_at, self.deps.clock.now())
            await save(self.deps, uow, payment, refund)
            await uow.commit()
        return refund

    async def acknowledge(self, refund_id: str, actor: Actor, note: str) -> Refund:
        """A person has looked at a flagged refund: it leaves the attention list."""
        async with self.deps.uow() as uow:
            payment, refund = await lock_refund(uow, refund_id, self.scope)
            flagged_for = refund.acknowledge_attention(self.deps.clock.now())
            uow.after_commit(
                lambda: self.deps.audit.record(
                    "refund.attention_acknowledged",
                    {"flagged_for": flagged_for, "note": note, "by_key_id": actor.id},
                    refund_id=refund.id,
                    payment_id=refund.payment_id,
                    actor=actor.name,
                )
            )
            await save(self.deps, uow, payment, refund)
            await uow.commit()
        return refund

    async def get(self, refund_id: str) -> Refund:
        async with self.deps.uow() as uow:
            refund = await uow.refunds.get(refund_id)
        if refund is None or not self.sees(refund.pse_account):
            raise NotFound(f"no refund {refund_id}")
        return refund

    async def list(
        self,
        *,
        statuses: list[RefundStatus],
        payment_id: str | None,
        created_from: datetime | None,
        created_to: datetime | None,
        stale: bool,
        limit: int,
        before_id: str | None,
        needs_attention: bool = False,
    ) -> list[Refund]:
        open_before = None
        if stale:
            open_before = self.deps.clock.now() - timedelta(hours=self.deps.stale_after_hours)
        flt = RefundFilter(
            statuses=tuple(statuses),
            payment_id=payment_id,
            created_from=created_from,
            created_to=created_to,
            open_before=open_before,
            needs_attention=needs_attention,
            oldest_first=stale or needs_attention,
            accounts=self.accounts,
        )
        async with self.deps.uow() as uow:
            return await uow.refunds.list(flt, limit=limit, before_id=before_id)
