"""PSE webhook events: each stored once, as received, before it is applied."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from app.adapters.db.statements import Write
from app.domain.records import StoredWebhook, WaitingFor, WebhookOutcome, WebhookStatus

_COLUMNS = (
    "id",
    "pse_account",
    "event_id",
    "event_type",
    "status",
    "received_at",
    "pse_refund_id",
    "reference",
    "refund",
    "refund_id",
    "applied_at",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM pse_webhook_events"  # noqa: S608
# Unique on (account, event id): a redelivered or concurrently delivered
# event inserts nothing and returns no row.
_INSERT_IF_NEW = (
    "INSERT INTO pse_webhook_events (pse_account, event_id, event_type, pse_refund_id, "  # noqa: S608
    "reference, refund, body, status, received_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING "
    f"RETURNING {', '.join(_COLUMNS)}"
)
# Also written in one statement with the refund it was applied to (PgUnitOfWork.save_refund).
MARK = Write(
    "UPDATE pse_webhook_events SET status = $2, refund_id = $3, applied_at = $4 WHERE id = $1", 4
)
_MARK = MARK.sql
_WAITING_FOR = (
    _SELECT + " WHERE pse_account = $1 AND status = ANY($2::text[]) "
    "AND (reference = $3 OR ($4::text IS NOT NULL AND pse_refund_id = $4)) ORDER BY id"
)
_FOR_REFUND = _SELECT + " WHERE refund_id = $1 ORDER BY id LIMIT $2"
_STUCK = _SELECT + " WHERE status = $1 AND received_at < $2 ORDER BY id LIMIT $3"
_WAITING = [WebhookStatus.UNMATCHED.value, WebhookStatus.RECEIVED.value]
# The same query as the last piece of a refund's save (PgUnitOfWork.save_refund).
WAITING_FOR = Write(_WAITING_FOR, 4)


def mark_args(outcome: WebhookOutcome) -> tuple[object, ...]:
    return (outcome.webhook_id, outcome.status.value, outcome.refund_id, outcome.at)


def waiting_args(waiting: WaitingFor) -> tuple[object, ...]:
    return (waiting.pse_account, _WAITING, waiting.reference, waiting.pse_refund_id or None)


def webhook_from_record(record: asyncpg.Record) -> StoredWebhook:
    return StoredWebhook(
        id=record["id"],
        pse_account=record["pse_account"],
        event_id=record["event_id"],
        event_type=record["event_type"],
        status=WebhookStatus(record["status"]),
        received_at=record["received_at"],
        pse_refund_id=record["pse_refund_id"],
        reference=record["reference"],
        refund=record["refund"],
        refund_id=record["refund_id"],
        applied_at=record["applied_at"],
    )


class WebhookRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def insert_if_new(
        self,
        *,
        pse_account: str,
        event_id: str,
        event_type: str,
        body: str,
        refund: dict[str, Any] | None,
        received_at: datetime,
    ) -> StoredWebhook | None:
        """The stored event, or None when it was stored before."""
        record = await self.conn.fetchrow(
            _INSERT_IF_NEW,
            pse_account,
            event_id,
            event_type,
            (refund or {}).get("pse_refund_id"),
            (refund or {}).get("reference"),
            refund,
            body,
            WebhookStatus.RECEIVED.value,
            received_at,
        )
        return webhook_from_record(record) if record else None

    async def mark(
        self, webhook_id: int, status: WebhookStatus, refund_id: str | None, at: datetime
    ) -> None:
        outcome = WebhookOutcome(webhook_id, status, refund_id, at)
        await self.conn.execute(_MARK, *mark_args(outcome))

    async def waiting_for(
        self, pse_account: str, pse_refund_id: str | None, reference: str
    ) -> list[StoredWebhook]:
        """Events of the account naming this refund (by our reference or the
        PSE's id) that are not applied yet: received before the refund was known."""
        waiting = WaitingFor(pse_account, pse_refund_id, reference)
        records = await self.conn.fetch(_WAITING_FOR, *waiting_args(waiting))
        return [webhook_from_record(record) for record in records]

    async def stuck(self, received_before: datetime, limit: int) -> list[StoredWebhook]:
        """Events stored but never applied (the process stopped in between)."""
        records = await self.conn.fetch(
            _STUCK, WebhookStatus.RECEIVED.value, received_before, limit
        )
        return [webhook_from_record(record) for record in records]

    async def for_refund(self, refund_id: str, limit: int) -> list[StoredWebhook]:
        records = await self.conn.fetch(_FOR_REFUND, refund_id, limit)
        return [webhook_from_record(record) for record in records]
