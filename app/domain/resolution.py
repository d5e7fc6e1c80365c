"""When the service checks a refund again by itself.

A refund that the PSE may hold but whose outcome we do not know (`unknown`,
a `pending` with no webhook, a `submitting` whose process died, an `approved`
one never sent) is due for a check at `next_check_at`. Each check that does
not settle it pushes the next one further out along the backoff schedule
(like a janitor: minutes, an hour, then daily); when the schedule is spent
the refund stays where it is and `refund.needs_attention` asks a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.domain.models import Refund, RefundStatus


@dataclass(frozen=True, slots=True)
class CheckSchedule:
    backoff_seconds: tuple[float, ...] = (300, 3600, 86400, 86400, 86400)
    approved_grace_seconds: float = 10
    submitting_grace_seconds: float = 60
    pending_check_after_seconds: float = 3600

    def first_check(self, status: RefundStatus, now: datetime) -> datetime | None:
        """The first self-check of a refund that has just entered `status`."""
        delay = {
            RefundStatus.APPROVED: self.approved_grace_seconds,
            RefundStatus.SUBMITTING: self.submitting_grace_seconds,
            RefundStatus.UNKNOWN: self.backoff_seconds[0] if self.backoff_seconds else None,
            RefundStatus.PENDING: self.pending_check_after_seconds,
        }.get(status)
        return None if delay is None else now + timedelta(seconds=delay)

    def reschedule(self, refund: Refund, now: datetime) -> None:
        """Give a refund that just changed status its first check."""
        refund.resolve_attempts = 0
        refund.next_check_at = self.first_check(refund.status, now)

    def check_failed(self, refund: Refund, now: datetime) -> bool:
        """A check did not settle the refund: schedule the next one.

        Returns True when the schedule is spent (and `needs_attention` raised)."""
        refund.resolve_attempts += 1
        if refund.resolve_attempts >= len(self.backoff_seconds):
            refund.next_check_at = None
            refund.flag(
                f"still {refund.status} after {refund.resolve_attempts} checks with the PSE",
                now,
            )
            return True
        delay = self.backoff_seconds[refund.resolve_attempts]
        refund.next_check_at = now + timedelta(seconds=delay)
        return False
