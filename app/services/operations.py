"""What operators read about the running service: readiness, metrics, the policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from app.config import Settings
from app.metrics import Metrics
from app.services.audit import AuditService
from app.services.context import Deps, Scoped

# (ready, detail): the database answers and its schema is at the head revision.
ReadinessProbe = Callable[[], Awaitable[tuple[bool, str]]]


class Operations(Scoped):
    """Scoped (`scoped`), `open_counts` counts the scope's PSE accounts'
    refunds only (the console's home); metrics and readiness are the whole
    service's."""

    def __init__(
        self, deps: Deps, settings: Settings, audit: AuditService, readiness: ReadinessProbe
    ) -> None:
        self.deps = deps
        self.settings = settings
        self.audit = audit
        self._readiness = readiness

    async def readiness(self) -> tuple[bool, str]:
        return await self._readiness()

    async def open_counts(self) -> tuple[dict[str, int], int]:
        """Refunds not yet final by status, and how many of them are past the SLA."""
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            return await uow.refunds.open_counts(
                now - timedelta(hours=self.deps.stale_after_hours), self.accounts
            )

    async def metrics_text(self) -> bytes:
        """The metrics, with the current-state gauges read from the database."""
        metrics: Metrics = self.deps.metrics
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            counts, stale = await uow.refunds.open_counts(
                now - timedelta(hours=self.deps.stale_after_hours)
            )
            oldest = await uow.outbox.oldest_undelivered()
            disputes = await uow.disputes.figures()
        for status, count in counts.items():
            metrics.refunds_by_status.labels(status).set(count)
        # Every configured account, and every one that ever had a dispute: a
        # gauge that is no longer true reads 0, never its last value.
        open_disputes = dict.fromkeys(self.deps.accounts, 0)
        for figures in disputes:
            open_disputes[figures.pse_account] = (
                open_disputes.get(figures.pse_account, 0) + figures.open
            )
            metrics.disputes_open_amount.labels(figures.pse_account, figures.currency).set(
                figures.open_amount
            )
            metrics.disputes_lost_amount.labels(figures.pse_account, figures.currency).set(
                figures.lost_amount
            )
        for account, count in open_disputes.items():
            metrics.disputes_open.labels(account).set(count)
        metrics.refunds_stale.set(stale)
        metrics.delivery_lag.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0)
        metrics.audit_buffered.set(self.audit.pending)
        return metrics.render()

    def policy(self) -> dict[str, Any]:
        """The policy in force and each account's provider and window; never a secret."""
        settings = self.settings
        policy = settings.policy
        return {
            "refund_window_days": policy.refund_window_days,
            "max_refund_amount": policy.max_refund_amount,
            "daily_auto_approve_limit": policy.daily_auto_approve_limit,
            "approval_tiers": [tier.model_dump() for tier in policy.approval_tiers],
            "offline_payment_methods": policy.offline_payment_methods,
            "rates": {
                pair: {"rate": rate.rate, "as_of": rate.as_of.isoformat()}
                for pair, rate in policy.rates.items()
            },
            "rate_max_age_days": policy.rate_max_age_days,
            "on_dispute": policy.on_dispute,
            "accounts": {
                name: {
                    "provider": account.provider,
                    "refund_window_days": account.refund_window_days or policy.refund_window_days,
                    "timeout_seconds": account.timeout_seconds,
                    "max_attempts": account.max_attempts,
                }
                for name, account in settings.accounts.items()
            },
            "stale_after_hours": settings.stale_after_hours,
        }
