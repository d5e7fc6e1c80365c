"""PSE webhook events: each stored once, with what became of it (as
`received` when applying it failed, for the worker to apply)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.adapters.db.statements import Write
from app.domain.records import (
    ReceivedWebhook,
    StoredWebhook,
    WaitingFor,
    WebhookOutcome,
    WebhookStatus,
)

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
_STORED = (
    "INSERT INTO pse_webhook_events (pse_account, event_id, event_type, pse_refund_id, "
    "reference, refund, body, status, refund_id, received_at, applied_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
# Unique on (account, event id): a redelivered or concurrently delivered
# event inserts nothing and returns no row.
_INSERT_IF_NEW = _STORED + f" ON CONFLICT DO NOTHING RETURNING {', '.join(_COLUMNS)}"
# The outcome of a webhook applied to a refund, written in one statement with
# the refund (PgUnitOfWork.save_refund): a stored event's, or an event stored
# now with its outcome. The latter has no ON CONFLICT: a repeat fails the
# statement on the unique key, and so everything written with it.
MARK = Write(
    "UPDATE pse_webhook_events SET status = $2, refund_id = $3, applied_at = $4 WHERE id = $1", 4
)
STORE_DECIDED = Write(_STORED, 11)
UNIQUE_EVENT = "uq_pse_webhook_events_account_event"
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


def _stored_args(
    received: ReceivedWebhook, status: WebhookStatus, refund_id: str | None, at: datetime | None
) -> tuple[object, ...]:
    refund = received.refund or {}
    return (
        received.pse_account,
        received.event_id,
        received.event_type,
        refund.get("pse_refund_id"),
        refund.get("reference"),
        received.refund,
        received.body,
        status.value,
        refund_id,
        received.received_at,
        at,
    )


def outcome_write(outcome: WebhookOutcome) -> Write:
    return MARK if isinstance(outcome.webhook, int) else STORE_DECIDED


def event_name(outcome: WebhookOutcome) -> str:
    webhook = outcome.webhook
    if isinstance(webhook, int):
        return f"stored webhook {webhook}"
    return f"{webhook.pse_account}/{webhook.event_id}"


def outcome_args(outcome: WebhookOutcome) -> tuple[object, ...]:
    if isinstance(outcome.webhook, int):
        return (outcome.webhook, outcome.status.value, outcome.refund_id, outcome.at)
    return _stored_args(outcome.webhook, outcome.status, outcome.refund_id, outcome.at)


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
        received: ReceivedWebhook,
        status: WebhookStatus = WebhookStatus.RECEIVED,
        at: datetime | None = None,
    ) -> StoredWebhook | None:
        """The stored event (as `status`, decided `at`), or None when it was
        stored before."""
        record = await self.conn.fetchrow(_INSERT_IF_NEW, *_stored_args(received, status, None, at))
        return webhook_from_record(record) if record else None

    async def mark(
        self, webhook_id: int, status: WebhookStatus, refund_id: str | None, at: datetime
    ) -> None:
        outcome = WebhookOutcome(webhook_id, status, refund_id, at)
        await self.conn.execute(_MARK, *outcome_args(outcome))

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
