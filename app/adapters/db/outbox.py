"""The transactional outbox: events written with the change they report, and
their deliveries to the store's webhook.

`tx` is the id of the transaction that wrote an event (its column default):
readers paging forward only show events of transactions older than every
one still running, so no page has a gap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from app.adapters.db.claimer import LIVE_CLAIMERS
from app.adapters.db.payments import of_accounts
from app.adapters.db.statements import Conditions, Write, rows_affected
from app.domain.records import DeliveryAttempt, DeliveryStatus, OutboxEvent

_COLUMNS = (
    "seq",
    "id",
    "tx",
    "type",
    "refund_id",
    "payment_id",
    "detail",
    "data",
    "created_at",
    "delivery_status",
    "delivery_attempts",
    "next_delivery_at",
    "first_attempt_at",
    "delivered_at",
    "last_error",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM events"  # noqa: S608

# Events from arrays, in order (each one's seq follows the one before):
# seven arrays, then the delivery status and whether they are to be delivered.
APPEND = Write(
    "INSERT INTO events (id, type, refund_id, payment_id, detail, data, created_at, "
    "delivery_status, delivery_attempts, next_delivery_at) "
    "SELECT e.id, e.type, e.refund_id, e.payment_id, e.detail, e.data::jsonb, e.created_at, "
    "$8, 0, CASE WHEN $9 THEN e.created_at END FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]"
    ") WITH ORDINALITY AS e(id, type, refund_id, payment_id, detail, data, created_at, n) "
    "ORDER BY e.n",
    9,
)


def append_args(events: Sequence[OutboxEvent], deliver: bool) -> list[Any]:
    """`APPEND`'s arguments."""
    status = DeliveryStatus.PENDING if deliver else DeliveryStatus.NONE
    return [
        [e.id for e in events],
        [e.type for e in events],
        [e.refund_id for e in events],
        [e.payment_id for e in events],
        [e.detail for e in events],
        # Text, cast in the statement: an array of the jsonb codec's values
        # is not something asyncpg encodes.
        [json.dumps(e.data) for e in events],
        [e.created_at for e in events],
        status.value,
        deliver,
    ]


_GET = _SELECT + " WHERE id = $1"
# Only transactions older than every one still running: an event a reader
# has not seen can never appear before its position later.
_HORIZON = "tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
# The first undelivered event of each refund, if due: an event waits while an
# earlier event of its refund is still pending, so a store receives each
# refund's events in order. A payment's own events (no refund: its disputes')
# wait likewise for the payment's earlier ones (the `refund_id IS NULL` rows
# of the refund_id index: disputes are rare, so are they). SKIP LOCKED and
# the lease keep two workers from sending the same event at once. claimed_by
# names the claimer (its advisory lock key, see claimer.py): an event whose
# claimer's lock is gone (its process died mid-delivery) is taken again at
# once, lease or not.
_CLAIM = (
    f"WITH live AS MATERIALIZED ({LIVE_CLAIMERS}), "  # noqa: S608
    f"claimed AS (SELECT {', '.join(f'e.{c}' for c in _COLUMNS)} FROM events e "
    "WHERE e.delivery_status = $1 AND (e.next_delivery_at <= $2"
    " OR (e.claimed_by IS NOT NULL AND e.claimed_by NOT IN (SELECT key FROM live)))"
    " AND NOT EXISTS ("
    " SELECT 1 FROM events earlier WHERE earlier.refund_id = e.refund_id"
    " AND earlier.delivery_status = $1 AND (earlier.tx, earlier.seq) < (e.tx, e.seq))"
    " AND NOT EXISTS ("
    " SELECT 1 FROM events earlier WHERE e.refund_id IS NULL AND earlier.refund_id IS NULL"
    " AND earlier.payment_id = e.payment_id"
    " AND earlier.delivery_status = $1 AND (earlier.tx, earlier.seq) < (e.tx, e.seq)) "
    "ORDER BY e.tx, e.seq LIMIT $3 FOR UPDATE OF e SKIP LOCKED), "
    "leased AS (UPDATE events SET next_delivery_at = $4, claimed_by = $5"
    " WHERE id IN (SELECT id FROM claimed)) "
    "SELECT * FROM claimed ORDER BY tx, seq"
)
_RECORD_DELIVERY = (
    "WITH attempt AS (INSERT INTO event_deliveries "
    "(event_id, attempt, at, url, status_code, duration_ms, error) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7)) "
    "UPDATE events SET delivery_status = $8, delivery_attempts = $2, next_delivery_at = $9, "
    "first_attempt_at = coalesce(first_attempt_at, $3), delivered_at = $10, last_error = $11, "
    "claimed_by = NULL "  # the attempt is over: so is its claim
    "WHERE id = $1"
)
_OLDEST_UNDELIVERED = "SELECT min(created_at) FROM events WHERE delivery_status = $1"
_ATTEMPTS = (
    "SELECT event_id, attempt, at, url, status_code, duration_ms, error "
    "FROM event_deliveries WHERE event_id = $1 ORDER BY id"
)
# Failed is written out, not a parameter: the partial index of failed
# events (migration 0007) serves only a query that names it.
_FAILED_FIRST = _SELECT + " WHERE delivery_status = 'failed' ORDER BY id DESC LIMIT $1"
_FAILED_BEFORE = _SELECT + " WHERE delivery_status = 'failed' AND id < $2 ORDER BY id DESC LIMIT $1"
_FAILED_OLDEST = _SELECT + " WHERE delivery_status = 'failed' ORDER BY id LIMIT $1"
_FAILED_AFTER = _SELECT + " WHERE delivery_status = 'failed' AND id > $2 ORDER BY id LIMIT $1"
_FAILED_COUNT = "SELECT count(*) FROM events WHERE delivery_status = 'failed'"
# A scoped key's: only the events of its PSE accounts' payments.
_OF_ACCOUNTS = of_accounts("events.payment_id")
_FAILED_COUNT_IN = f"{_FAILED_COUNT} AND {_OF_ACCOUNTS.format('$1')}"
_ATTEMPTS_OF = (
    "SELECT event_id, attempt, at, url, status_code, duration_ms, error "
    "FROM event_deliveries WHERE event_id = ANY($1::text[]) ORDER BY id"
)
_REDELIVER = (
    "UPDATE events SET delivery_status = $2, next_delivery_at = $3, first_attempt_at = NULL "
    "WHERE id = $1"
)


def event_from_record(record: asyncpg.Record) -> OutboxEvent:
    return OutboxEvent(
        id=record["id"],
        type=record["type"],
        refund_id=record["refund_id"],
        payment_id=record["payment_id"],
        created_at=record["created_at"],
        data=record["data"],
        detail=record["detail"],
        seq=record["seq"],
        tx=record["tx"],
        delivery_status=DeliveryStatus(record["delivery_status"]),
        delivery_attempts=record["delivery_attempts"],
        next_delivery_at=record["next_delivery_at"],
        first_attempt_at=record["first_attempt_at"],
        delivered_at=record["delivered_at"],
        last_error=record["last_error"],
    )


def attempt_from_record(record: asyncpg.Record) -> DeliveryAttempt:
    return DeliveryAttempt(
        event_id=record["event_id"],
        attempt=record["attempt"],
        at=record["at"],
        url=record["url"],
        status_code=record["status_code"],
        duration_ms=record["duration_ms"],
        error=record["error"],
    )


def _attempt_error(attempt: DeliveryAttempt) -> str | None:
    if attempt.delivered:
        return None
    return attempt.error or f"HTTP {attempt.status_code}"


class OutboxRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(self, events: Sequence[OutboxEvent], *, deliver: bool) -> None:
        if events:
            await self.conn.execute(APPEND.sql, *append_args(events, deliver))

    async def get(self, event_id: str) -> OutboxEvent | None:
        record = await self.conn.fetchrow(_GET, event_id)
        return event_from_record(record) if record else None

    def _filtered(
        self, types: Sequence[str], refund_id: str | None, accounts: Sequence[str] | None = None
    ) -> Conditions:
        where = Conditions()
        if types:
            where.add("type = ANY({}::text[])", list(types))
        if refund_id is not None:
            where.add("refund_id = {}", refund_id)
        if accounts is not None:
            where.add(_OF_ACCOUNTS, list(accounts))
        return where

    async def list_newest(
        self,
        *,
        types: Sequence[str],
        refund_id: str | None,
        limit: int,
        before: tuple[int, int] | None,
        accounts: Sequence[str] | None = None,
    ) -> list[OutboxEvent]:
        where = self._filtered(types, refund_id, accounts)
        if before is not None:
            where.add("(tx, seq) < ({}, {})", *before)
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{_SELECT}{where.where()} ORDER BY tx DESC, seq DESC LIMIT {limit_at}",
            *where.args,
            limit,
        )
        return [event_from_record(record) for record in records]

    async def list_after(
        self,
        *,
        after: tuple[int, int],
        types: Sequence[str],
        refund_id: str | None,
        limit: int,
        accounts: Sequence[str] | None = None,
    ) -> list[OutboxEvent]:
        where = self._filtered(types, refund_id, accounts)
        where.add("(tx, seq) > ({}, {})", *after)
        where.add(_HORIZON)
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{_SELECT}{where.where()} ORDER BY tx, seq LIMIT {limit_at}", *where.args, limit
        )
        return [event_from_record(record) for record in records]

    async def claim_deliveries(
        self, now: datetime, lease_until: datetime, limit: int, claimer: int | None = None
    ) -> list[OutboxEvent]:
        """The first undelivered event of each refund, if due (or claimed by a
        claimer no longer alive), leased to the caller and marked as `claimer`'s."""
        records = await self.conn.fetch(
            _CLAIM, DeliveryStatus.PENDING.value, now, limit, lease_until, claimer
        )
        return [event_from_record(record) for record in records]

    async def record_delivery(
        self,
        attempt: DeliveryAttempt,
        *,
        status: DeliveryStatus,
        next_delivery_at: datetime | None,
    ) -> None:
        await self.conn.execute(
            _RECORD_DELIVERY,
            attempt.event_id,
            attempt.attempt,
            attempt.at,
            attempt.url,
            attempt.status_code,
            attempt.duration_ms,
            attempt.error,
            status.value,
            next_delivery_at,
            attempt.at if status is DeliveryStatus.DELIVERED else None,
            _attempt_error(attempt),
        )

    async def oldest_undelivered(self) -> datetime | None:
        found: datetime | None = await self.conn.fetchval(
            _OLDEST_UNDELIVERED, DeliveryStatus.PENDING.value
        )
        return found

    async def attempts(self, event_id: str) -> list[DeliveryAttempt]:
        return [attempt_from_record(r) for r in await self.conn.fetch(_ATTEMPTS, event_id)]

    async def redeliver(self, event_id: str, now: datetime) -> bool:
        status = await self.conn.execute(_REDELIVER, event_id, DeliveryStatus.PENDING.value, now)
        return rows_affected(status) > 0

    async def failed(
        self,
        *,
        limit: int,
        before_id: str | None,
        oldest_first: bool = False,
        accounts: Sequence[str] | None = None,
    ) -> list[OutboxEvent]:
        """Events whose delivery failed, newest first (ids sort by creation);
        oldest first with `oldest_first`, `before_id` then being the one they follow."""
        if accounts is not None:
            where = Conditions()
            where.add("delivery_status = 'failed'")
            where.add(_OF_ACCOUNTS, list(accounts))
            if before_id is not None:
                where.add("id > {}" if oldest_first else "id < {}", before_id)
            limit_at = where.next_parameter()
            order = "ASC" if oldest_first else "DESC"
            scoped = await self.conn.fetch(
                f"{_SELECT}{where.where()} ORDER BY id {order} LIMIT {limit_at}",
                *where.args,
                limit,
            )
            return [event_from_record(record) for record in scoped]
        if before_id is None:
            first = _FAILED_OLDEST if oldest_first else _FAILED_FIRST
            records = await self.conn.fetch(first, limit)
        else:
            following = _FAILED_AFTER if oldest_first else _FAILED_BEFORE
            records = await self.conn.fetch(following, limit, before_id)
        return [event_from_record(record) for record in records]

    async def failed_count(self, accounts: Sequence[str] | None = None) -> int:
        if accounts is None:
            found: int = await self.conn.fetchval(_FAILED_COUNT)
        else:
            found = await self.conn.fetchval(_FAILED_COUNT_IN, list(accounts))
        return found

    async def attempts_of(self, event_ids: Sequence[str]) -> list[DeliveryAttempt]:
        if not event_ids:
            return []
        records = await self.conn.fetch(_ATTEMPTS_OF, list(event_ids))
        return [attempt_from_record(record) for record in records]
