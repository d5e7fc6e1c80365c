"""The JSON shape of payments, refunds and events, shared by the API and the outbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from app.domain.audit import AuditRecord
from app.domain.disputes import Dispute
from app.domain.models import Payment, Refund
from app.domain.records import DeliveryAttempt, OutboxEvent, ReconciliationLine


def rfc3339(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def payment_view(payment: Payment, refund_deadline: datetime) -> dict[str, Any]:
    return {
        "id": payment.id,
        "pse_account": payment.pse_account,
        "pse_payment_id": payment.pse_payment_id,
        "order_id": payment.order_id,
        "amount": payment.amount.amount,
        "currency": payment.currency,
        "captured_at": rfc3339(payment.captured_at),
        "payment_method": payment.payment_method,
        "risk_level": payment.risk_level.value,
        "settlement_currency": payment.settlement_currency,
        "settlement_rate": str(payment.settlement_rate),
        "refunded_amount": payment.refunded_amount,
        "reserved_amount": payment.reserved_amount,
        "disputed_amount": payment.disputed_amount,
        "open_disputes": payment.open_disputes,
        "refundable_amount": payment.refundable.amount,
        "refund_deadline": rfc3339(refund_deadline),
        "created_at": rfc3339(payment.created_at),
        "updated_at": rfc3339(payment.updated_at),
    }


def refund_view(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "pse_account": refund.pse_account,
        "amount": refund.amount.amount,
        "currency": refund.currency,
        "status": refund.status.value,
        "reason": refund.reason.value,
        "note": refund.note,
        "metadata": refund.metadata,
        "required_approvals": list(refund.required_approvals),
        "approvals": [
            {
                "approver": a.approver,
                "level": a.level,
                "decision": a.decision.value,
                "note": a.note,
                "at": rfc3339(a.at),
            }
            for a in refund.approvals
        ],
        "pse_refund_id": refund.pse_refund_id,
        "failure_code": refund.failure_code,
        "failure_message": refund.failure_message,
        "offline_reason": refund.offline_reason if refund.offline else None,
        "offline_reference": refund.offline_reference,
        "offline_paid_at": rfc3339(refund.offline_paid_at),
        "settlement_amount": refund.settlement_amount,
        "settlement_currency": refund.settlement_currency,
        "fx_difference": refund.fx_difference,
        "fee_amount": refund.fee_amount,
        "attention": None
        if refund.attention is None
        else {"detail": refund.attention, "at": rfc3339(refund.attention_at)},
        "hold": refund.hold,
        "created_at": rfc3339(refund.created_at),
        "updated_at": rfc3339(refund.updated_at),
        "status_history": [
            {
                "status": change.status.value,
                "at": rfc3339(change.at),
                "actor": change.actor,
                "detail": change.detail,
            }
            for change in refund.history
        ],
    }


def dispute_view(dispute: Dispute) -> dict[str, Any]:
    return {
        "id": dispute.id,
        "payment_id": dispute.payment_id,
        "pse_account": dispute.pse_account,
        "pse_dispute_id": dispute.pse_dispute_id,
        "status": dispute.status.value,
        "amount": dispute.amount.amount,
        "currency": dispute.amount.currency,
        "reason": dispute.reason,
        "counted_amount": dispute.counted_amount,
        "source": dispute.source,
        "opened_at": rfc3339(dispute.opened_at),
        "evidence_due_by": rfc3339(dispute.evidence_due_by),
        "closed_at": rfc3339(dispute.closed_at),
        "created_at": rfc3339(dispute.created_at),
        "updated_at": rfc3339(dispute.updated_at),
    }


def event_payload(event: OutboxEvent) -> dict[str, Any]:
    """What the store receives: in the feed and in the webhook body alike."""
    return {
        "id": event.id,
        "type": event.type,
        "created_at": rfc3339(event.created_at),
        "refund_id": event.refund_id,
        "payment_id": event.payment_id,
        "detail": event.detail,
        "data": event.data,
    }


def event_view(event: OutboxEvent) -> dict[str, Any]:
    return {
        **event_payload(event),
        "delivery": {
            "status": event.delivery_status.value,
            "attempts": event.delivery_attempts,
            "delivered_at": rfc3339(event.delivered_at),
            "next_attempt_at": rfc3339(event.next_delivery_at)
            if event.delivery_status.value == "pending"
            else None,
            "last_error": event.last_error,
        },
    }


def delivery_view(attempt: DeliveryAttempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "at": rfc3339(attempt.at),
        "url": attempt.url,
        "status_code": attempt.status_code,
        "duration_ms": attempt.duration_ms,
        "error": attempt.error,
        "delivered": attempt.delivered,
    }


def audit_view(record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "at": rfc3339(record.at),
        "kind": record.kind,
        "request_id": record.request_id,
        "refund_id": record.refund_id,
        "payment_id": record.payment_id,
        "actor": record.actor,
        "data": json.loads(record.body)["data"],
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


# A reconciliation's lines, field by field: the API's answers and the report
# CSV (whether the API's or the console's download) are the same columns.
RECONCILIATION_LINE_FIELDS = tuple(
    name for name in ReconciliationLine._fields if name not in ("reconciliation_id", "id")
)


def reconciliation_line_view(line: ReconciliationLine) -> dict[str, Any]:
    view = {name: getattr(line, name) for name in RECONCILIATION_LINE_FIELDS}
    view["settled_at"] = rfc3339(line.settled_at)
    return view
