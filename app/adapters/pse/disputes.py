"""Dispute (chargeback) webhooks, read alike for every provider.

A provider's adapter finds the fields in its own envelope and maps its own
statuses (its `_event_dispute` hook); everything else is done here, the same
way for every provider:

- the dispute must have an id, a status this adapter maps, a positive amount
  it can read exactly, and name at least one payment. Anything less is an
  `UnreadableDispute`, which the template turns into `InvalidWebhookPayload`:
  the event is refused with a clear reason, never guessed at (an unknown
  status is never taken for won or lost);
- times come as Unix seconds or ISO 8601 with a zone, and leave as aware UTC
  datetimes; 0 or null means "none" (Stripe's `due_by` is 0 when the bank
  takes no response); a time without a zone is refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.pse import InvalidWebhookPayload, PseWebhookEvent
from app.domain.times import RANGE, in_utc


class UnreadableDispute(ValueError):
    """A webhook that should carry a dispute, but not one that can be read."""


def dispute_event(
    event_id: str, event_type: str, read: Callable[[], DisputeReport]
) -> PseWebhookEvent:
    """The verified dispute event `read` translates; InvalidWebhookPayload, with
    the reason, when it cannot."""
    try:
        dispute = read()
    except UnreadableDispute as exc:
        raise InvalidWebhookPayload(
            f"{event_type} does not carry a readable dispute: {exc}"
        ) from None
    return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=None, dispute=dispute)


def dispute_status(value: Any, statuses: Mapping[str, DisputeStatus]) -> DisputeStatus:
    """The provider's status in our words; an unknown one is never guessed."""
    if isinstance(value, str) and value in statuses:
        return statuses[value]
    raise UnreadableDispute(f"unknown dispute status {value!r}")


def unix_time(value: Any, name: str) -> datetime | None:
    """Unix seconds as an aware UTC datetime; None for null or 0 (no such time)."""
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnreadableDispute(f"{name} is not a Unix time: {value!r}")
    try:
        moment = in_utc(datetime.fromtimestamp(value, UTC))
    except (OverflowError, OSError, ValueError):
        moment = None
    if moment is None:
        raise UnreadableDispute(f"{name} is not a Unix time {RANGE}: {value!r}")
    return moment


def iso_time(value: Any, name: str) -> datetime | None:
    """An ISO 8601 time with a zone (`Z` or an offset) in UTC; None for null or ""."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise UnreadableDispute(f"{name} is not an ISO 8601 time: {value!r}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise UnreadableDispute(f"{name} is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UnreadableDispute(f"{name} has no time zone: {value!r}")
    found = in_utc(moment)
    if found is None:
        raise UnreadableDispute(f"{name} is not a time {RANGE}: {value!r}")
    return found


def dispute_report(
    *,
    pse_dispute_id: Any,
    status: DisputeStatus,
    amount: Money | None,
    reason: Any = None,
    evidence_due_by: datetime | None = None,
    opened_at: datetime | None = None,
    pse_payment_ids: Iterable[str] = (),
) -> DisputeReport:
    """A DisputeReport from fields an adapter read, checked the same way for all.

    `amount` is what the provider's own money helper made of its amount and
    currency (None: missing or not readable exactly in ISO minor units)."""
    if not isinstance(pse_dispute_id, str) or not pse_dispute_id.strip():
        raise UnreadableDispute("dispute has no id")
    if amount is None:
        raise UnreadableDispute("dispute amount or currency missing or unreadable")
    if amount.amount < 1:
        raise UnreadableDispute(f"dispute amount must be positive, not {amount.amount}")
    payment_ids = tuple(dict.fromkeys(i for i in pse_payment_ids if i))
    if not payment_ids:
        raise UnreadableDispute("dispute names no payment")
    return DisputeReport(
        pse_dispute_id=pse_dispute_id,
        status=status,
        amount=amount,
        reason=(reason.strip() or None) if isinstance(reason, str) else None,
        evidence_due_by=evidence_due_by,
        opened_at=opened_at,
        pse_payment_ids=payment_ids,
    )
