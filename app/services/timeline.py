"""One refund's timeline: its history, approvals, PSE exchanges, store events
and deliveries, and its payment's disputes, as entries of one list."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from app.domain.disputes import Dispute
from app.domain.models import Approval, RefundStatus, StatusChange
from app.domain.records import DeliveryAttempt, OutboxEvent, StoredWebhook
from app.services.views import rfc3339


class TimelineKind(StrEnum):
    STATUS = "status"  # a status change (the refund's history)
    APPROVAL = "approval"  # an approver's decision
    PSE_CALL = "pse_call"  # one HTTP exchange with the PSE (audit trail, redacted)
    PSE_WEBHOOK = "pse_webhook"  # an event the PSE sent about the refund
    STORE_EVENT = "store_event"  # an event for the store (the outbox)
    STORE_DELIVERY = "store_delivery"  # one attempt to deliver it to the store's webhook
    API_REQUEST = "api_request"  # a request to the API that changed or tried to change it
    NOTE = "note"  # anything else the audit trail holds about it
    DISPUTE = "dispute"  # a dispute (chargeback) opened or ended on the refund's payment


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: datetime
    kind: TimelineKind
    actor: str | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Timeline:
    entries: list[TimelineEntry]
    # A source held more entries than a timeline shows.
    truncated: bool = False


# Audit kinds whose facts the timeline reads from the rows that hold them.
AUDIT_KINDS_FROM_ROWS = ("refund.status", "approval.decision", "webhook.sent")


def status_entry(previous: RefundStatus | None, change: StatusChange) -> TimelineEntry:
    moved = f"{previous.value} → {change.status.value}" if previous else change.status.value
    return TimelineEntry(
        at=change.at,
        kind=TimelineKind.STATUS,
        actor=change.actor,
        summary=f"{moved}: {change.detail}" if change.detail else moved,
        details={
            "from": previous.value if previous else None,
            "to": change.status.value,
            "detail": change.detail,
        },
    )


def approval_entry(approver: str, approval: Approval) -> TimelineEntry:
    summary = f"{approval.decision.value} at level {approval.level}"
    return TimelineEntry(
        at=approval.at,
        kind=TimelineKind.APPROVAL,
        actor=approver,
        summary=f"{summary}: {approval.note}" if approval.note else summary,
        details={
            "approver_key_id": approval.approver_id,
            "level": approval.level,
            "decision": approval.decision.value,
            "note": approval.note,
        },
    )


def event_entry(event: OutboxEvent) -> TimelineEntry:
    return TimelineEntry(
        at=event.created_at,
        kind=TimelineKind.STORE_EVENT,
        actor=None,
        summary=f"{event.type}: {event.detail}" if event.detail else event.type,
        details={
            "event_id": event.id,
            "type": event.type,
            "detail": event.detail,
            "delivery_status": event.delivery_status.value,
            "delivery_attempts": event.delivery_attempts,
            "delivered_at": rfc3339(event.delivered_at),
            "last_error": event.last_error,
        },
    )


def delivery_entry(attempt: DeliveryAttempt) -> TimelineEntry:
    answer = f"HTTP {attempt.status_code}" if attempt.status_code is not None else attempt.error
    return TimelineEntry(
        at=attempt.at,
        kind=TimelineKind.STORE_DELIVERY,
        actor=None,
        summary=f"attempt {attempt.attempt} → {answer} ({attempt.duration_ms} ms)",
        details={
            "event_id": attempt.event_id,
            "attempt": attempt.attempt,
            "url": attempt.url,
            "status_code": attempt.status_code,
            "duration_ms": attempt.duration_ms,
            "error": attempt.error,
            "delivered": attempt.delivered,
        },
    )


def webhook_entry(webhook: StoredWebhook) -> TimelineEntry:
    # The PSE's event as we translated it (state, amounts, failure code),
    # never its raw body: that stays in the audit trail, redacted.
    return TimelineEntry(
        at=webhook.received_at,
        kind=TimelineKind.PSE_WEBHOOK,
        actor=f"pse:{webhook.pse_account}",
        summary=f"{webhook.event_type} ({webhook.status.value})",
        details={
            "event_id": webhook.event_id,
            "event_type": webhook.event_type,
            "status": webhook.status.value,
            "pse_refund_id": webhook.pse_refund_id,
            "reference": webhook.reference,
            "refund": webhook.refund,
            "applied_at": rfc3339(webhook.applied_at),
        },
    )


def audit_entry(kind: str, actor: str | None, at: datetime, data: dict[str, Any]) -> TimelineEntry:
    if kind == "pse.call":
        answer = data.get("status_code") or data.get("outcome")
        summary = f"{data.get('method')} {data.get('url')} → {answer}"
        if data.get("duration_ms") is not None:
            summary += f" ({data['duration_ms']} ms)"
        return TimelineEntry(at, TimelineKind.PSE_CALL, actor, summary, data)
    if kind == "api.request":
        summary = f"{data.get('method')} {data.get('path')} → {data.get('status')}"
        return TimelineEntry(at, TimelineKind.API_REQUEST, actor, summary, data)
    if kind == "refund.attention_acknowledged":
        summary = f"attention acknowledged: {data.get('note')}"
        return TimelineEntry(at, TimelineKind.NOTE, actor, summary, data)
    if kind == "event.redelivered":
        summary = f"redelivery of {data.get('event_type')} asked"
        return TimelineEntry(at, TimelineKind.NOTE, actor, summary, data)
    return TimelineEntry(at, TimelineKind.NOTE, actor, kind, data)


def dispute_entries(dispute: Dispute) -> list[TimelineEntry]:
    """A dispute of the refund's payment: when it opened and, once final, when it ended."""
    amount = f"{dispute.amount.amount} {dispute.amount.currency}"
    details: dict[str, Any] = {
        "dispute_id": dispute.id,
        "pse_dispute_id": dispute.pse_dispute_id,
        "amount": dispute.amount.amount,
        "currency": dispute.amount.currency,
        "reason": dispute.reason,
        "evidence_due_by": rfc3339(dispute.evidence_due_by),
        "source": dispute.source,
    }
    opened = f"dispute opened on the payment: {amount}"
    entries = [
        TimelineEntry(
            at=dispute.opened_at,
            kind=TimelineKind.DISPUTE,
            actor=f"pse:{dispute.pse_account}" if dispute.source == "pse" else None,
            summary=f"{opened} ({dispute.reason})" if dispute.reason else opened,
            details=details,
        )
    ]
    if dispute.status.is_final and dispute.closed_at is not None:
        entries.append(
            TimelineEntry(
                at=dispute.closed_at,
                kind=TimelineKind.DISPUTE,
                actor=f"pse:{dispute.pse_account}" if dispute.source == "pse" else None,
                summary=f"dispute {dispute.status.value}: {amount}",
                details={**details, "status": dispute.status.value},
            )
        )
    return entries
