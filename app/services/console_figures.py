"""The console's figures: the home page's windows of time to refund and
refund rate, today's refunds, and the attention queues' counts, each of the
scope's PSE accounts only (`Scoped`). `ConsoleQueries` reads them for its
pages; `home` gathers them in one unit of work."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from app.domain.models import RefundStatus
from app.domain.money import Money
from app.domain.ports import UnitOfWork
from app.services.console_results import AttentionCounts, RefundRate, TimeToRefund
from app.services.context import Deps, Scoped

# The windows of the home page's figures.
WINDOWS_DAYS = (7, 30)
# What the refund rate counts: every refund not turned down or failed (those
# still awaiting approval or payout included).
MONEY_MOVING = tuple(
    s
    for s in RefundStatus
    if s not in (RefundStatus.REJECTED, RefundStatus.CANCELED, RefundStatus.FAILED)
)


class ConsoleFigures(Scoped):
    deps: Deps

    async def time_to_refund(self) -> list[TimeToRefund]:
        """Median and p95 from request to `succeeded` per PSE account, for each
        window of `WINDOWS_DAYS` (refunds that succeeded in it)."""
        async with self.deps.uow() as uow:
            return await self._time_to_refund(uow, self.deps.clock.now())

    async def refund_rate(self) -> list[RefundRate]:
        async with self.deps.uow() as uow:
            return await self._refund_rate(uow, self.deps.clock.now())

    async def refunds_today(self) -> dict[str, int]:
        """Refunds requested since 00:00 UTC, by their status now."""
        now = self.deps.clock.now()
        today = datetime.combine(now.date(), time(), tzinfo=now.tzinfo)
        async with self.deps.uow() as uow:
            return await uow.refunds.count_by_status(
                today, today + timedelta(days=1), self.accounts
            )

    async def _time_to_refund(self, uow: UnitOfWork, now: datetime) -> list[TimeToRefund]:
        found = []
        for days in WINDOWS_DAYS:
            since = now - timedelta(days=days)
            for times in await uow.refunds.success_times(since, self.accounts):
                found.append(
                    TimeToRefund(
                        times.pse_account,
                        days,
                        times.refunds,
                        timedelta(seconds=times.median_seconds),
                        timedelta(seconds=times.p95_seconds),
                    )
                )
        return found

    async def _refund_rate(self, uow: UnitOfWork, now: datetime) -> list[RefundRate]:
        found = []
        for days in WINDOWS_DAYS:
            since = now - timedelta(days=days)
            paid = {v.currency: v for v in await uow.payments.volume(since, self.accounts)}
            refunded = {
                v.currency: v for v in await uow.refunds.volume(since, MONEY_MOVING, self.accounts)
            }
            for currency in sorted(paid.keys() | refunded.keys()):
                p, r = paid.get(currency), refunded.get(currency)
                found.append(
                    RefundRate(
                        days,
                        currency,
                        p.count if p else 0,
                        Money(p.amount if p else 0, currency),
                        r.count if r else 0,
                        Money(r.amount if r else 0, currency),
                    )
                )
        return found

    async def attention_counts(self) -> AttentionCounts:
        async with self.deps.uow() as uow:
            return await self._attention_counts(uow, self.deps.clock.now())

    async def _attention_counts(self, uow: UnitOfWork, now: datetime) -> AttentionCounts:
        stale_before = now - timedelta(hours=self.deps.stale_after_hours)
        by_status, stale = await uow.refunds.open_counts(stale_before, self.accounts)
        return AttentionCounts(
            stale=stale,
            unknown=by_status.get(RefundStatus.UNKNOWN.value, 0),
            needs_attention=await uow.refunds.flagged_count(self.accounts),
            offline_required=by_status.get(RefundStatus.OFFLINE_REQUIRED.value, 0),
            failed_deliveries=await uow.outbox.failed_count(self.accounts),
            open_disputes=await uow.disputes.open_count(self.accounts),
            overdue_disputes=await uow.disputes.open_count(self.accounts, due_before=now),
        )
