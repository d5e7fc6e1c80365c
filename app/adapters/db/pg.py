"""PostgreSQL: the hot path's statements as prepared asyncpg calls.

A refund's creation and submission run eleven statements, a PSE webhook
six; through SQLAlchemy Core each costs about three times the CPU of the
same prepared statement on asyncpg (bench/refunds.py). On PostgreSQL the unit of
work therefore opens its transaction with asyncpg itself and these
repositories run their hot statements on the driver; every other statement
goes through the inherited SQLAlchemy code on the same connection, inside
the same transaction (SQLAlchemy is in autocommit mode, so it never opens or
ends a transaction of its own).

Statements are module constants (column names from tuples, never input).
They write a row and its children at once where PostgreSQL allows it
(a refund with its history in one statement, events from arrays), so a
round trip is paid per change, not per row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from asyncpg import Connection, Record
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.db.repositories import (
    AUDIT_COLUMNS,
    STATUSES,
    SqlAuditRepository,
    SqlIdempotencyRepository,
    SqlPaymentRepository,
    SqlRefundRepository,
    SqlWebhookRepository,
    idempotency_from_row,
    payment_from_row,
    refund_from_row,
    webhook_from_row,
)
from app.domain.audit import AuditEntry, AuditRecord, seal
from app.domain.models import Approval, Decision, Payment, Refund, RefundStatus, StatusChange
from app.domain.money import money
from app.domain.reconciliation import RefundSnapshot
from app.domain.records import (
    DeliveryStatus,
    IdempotencyRecord,
    IdempotencyState,
    OutboxEvent,
    StoredWebhook,
    WebhookStatus,
)


class _Row:
    """An asyncpg record read by attribute, as the row mappers read SQLAlchemy rows.

    SQLAlchemy's codecs on the connection hand JSON columns over as text; the
    columns named in `json_columns` are decoded here."""

    __slots__ = ("_json", "_record")

    def __init__(self, record: Record, json_columns: frozenset[str] = frozenset()) -> None:
        self._record = record
        self._json = json_columns

    def __getattr__(self, name: str) -> Any:
        value = self._record[name]
        if name in self._json and isinstance(value, str):
            return json.loads(value)
        return value


def _dumps(value: Any) -> str:
    return json.dumps(value)


def _count(status: str) -> int:
    """Rows touched, from the command tag asyncpg returns ("UPDATE 1", "INSERT 0 1")."""
    return int(status.rsplit(" ", 1)[-1])


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class _Raw:
    def __init__(self, conn: AsyncConnection, raw: Connection) -> None:
        super().__init__(conn)  # type: ignore[call-arg]
        self.raw = raw


# -- payments ---------------------------------------------------------------

_PAYMENT = "SELECT * FROM payments WHERE id = $1"
_PAYMENT_LOCKED = _PAYMENT + " FOR UPDATE"
_PAYMENT_UPDATE = (
    "UPDATE payments SET refunded_amount = $2, reserved_amount = $3, updated_at = $4 WHERE id = $1"
)


def _counters(payment: Payment) -> tuple[int, int, datetime | None]:
    return payment.refunded_amount, payment.reserved_amount, payment.updated_at


class PgPaymentRepository(_Raw, SqlPaymentRepository):
    """Remembers the counters of the payments it read: `save_with` writes a
    payment only when they moved (its row lock is what the transaction needed)."""

    def __init__(self, conn: AsyncConnection, raw: Connection) -> None:
        super().__init__(conn, raw)
        self.loaded: dict[str, tuple[int, int, datetime | None]] = {}

    def remember(self, record: Record) -> Payment:
        """The payment of a row this unit of work read, its counters noted."""
        payment = payment_from_row(_Row(record))
        self.loaded[payment.id] = _counters(payment)
        return payment

    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        row = await self.raw.fetchrow(_PAYMENT_LOCKED if for_update else _PAYMENT, payment_id)
        return self.remember(row) if row else None


# -- refunds ----------------------------------------------------------------

# The columns a change of a refund writes, in parameter order after the id.
_MUTABLE = (
    "status",
    "required_approvals",
    "offline",
    "offline_reason",
    "auto_approved",
    "pse_refund_id",
    "failure_code",
    "failure_message",
    "settlement_amount",
    "settlement_currency",
    "fx_difference",
    "fee_amount",
    "offline_reference",
    "offline_paid_at",
    "submit_attempts",
    "resolve_attempts",
    "next_check_at",
    "updated_at",
    "attention",
    "attention_at",
)
_FIXED = (
    "payment_id",
    "pse_account",
    "amount",
    "currency",
    "reason",
    "note",
    "metadata",
    "created_by",
    "created_at",
)


def _renumbered(statement: str, offset: int) -> str:
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + offset}", statement)


def _combined(*parts: tuple[str, int]) -> str:
    """One statement of several writes (each numbering its parameters from $1,
    with how many it takes): all but the last as data-modifying CTEs, which
    PostgreSQL runs together, with the same snapshot, as one round trip."""
    offset, pieces = 0, []
    for statement, count in parts:
        pieces.append(_renumbered(statement, offset))
        offset += count
    *ctes, last = pieces
    return "WITH " + ", ".join(f"w{i} AS ({cte})" for i, cte in enumerate(ctes)) + " " + last


_ALL = ("id", *_FIXED, *_MUTABLE)
# The writes, each with its parameter count.
_REFUND_ROW_INSERT = (
    f"INSERT INTO refunds ({', '.join(_ALL)}) "  # noqa: S608
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_ALL) + 1))})",
    len(_ALL),
)
_REFUND_ROW_UPDATE = (
    "UPDATE refunds SET "  # noqa: S608
    + ", ".join(f"{name} = ${i}" for i, name in enumerate(_MUTABLE, start=2))
    + " WHERE id = $1",
    1 + len(_MUTABLE),
)
# New history rows, in order: the refund's id, then four arrays.
_HISTORY_INSERT = (
    "INSERT INTO refund_status_history (refund_id, status, at, actor, detail) "
    "SELECT $1, h.status, h.at, h.actor, h.detail FROM unnest("
    "$2::text[], $3::timestamptz[], $4::text[], $5::text[]"
    ") WITH ORDINALITY AS h(status, at, actor, detail, n) ORDER BY h.n",
    5,
)
_PAYMENT_WRITE = (_PAYMENT_UPDATE, 4)
_EVENTS_WRITE = (
    "INSERT INTO events (id, type, refund_id, payment_id, detail, data, created_at, "
    "delivery_status, delivery_attempts, next_delivery_at) "
    "SELECT e.id, e.type, e.refund_id, e.payment_id, e.detail, e.data::jsonb, e.created_at, "
    "$8, 0, CASE WHEN $9 THEN e.created_at END FROM unnest("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]"
    ") WITH ORDINALITY AS e(id, type, refund_id, payment_id, detail, data, created_at, n) "
    "ORDER BY e.n",
    9,
)
# A refund's change with its payment's counters (when they moved) and its new
# events: (new refund?, payment written?) -> statement.
_REFUND_SAVE = {
    (new, with_payment): _combined(
        _REFUND_ROW_INSERT if new else _REFUND_ROW_UPDATE,
        _HISTORY_INSERT,
        *((_PAYMENT_WRITE,) if with_payment else ()),
        _EVENTS_WRITE,
    )
    for new in (True, False)
    for with_payment in (True, False)
}
_APPROVALS_INSERT = (
    "INSERT INTO refund_approvals (refund_id, approver_id, approver, level, decision, note, at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
# A refund with its history and approvals, in one round trip.
_REFUND = (
    "SELECT r.*, "
    "(SELECT json_agg(json_build_array(h.status, h.at, h.actor, h.detail) ORDER BY h.id) "
    " FROM refund_status_history h WHERE h.refund_id = r.id) AS history_rows, "
    "CASE WHEN r.required_approvals <> '[]'::jsonb THEN "
    "(SELECT json_agg(json_build_array(a.approver_id, a.approver, a.level, a.decision, a.note, "
    " a.at) ORDER BY a.id) FROM refund_approvals a WHERE a.refund_id = r.id) END "
    "AS approval_rows "
    "FROM refunds r WHERE r.id = $1"
)
_REFUND_LOCKED = _REFUND + " FOR UPDATE OF r"
# The payment of a refund, locked. Its refund is read by a second statement
# once this lock is held: every writer of a refund holds its payment's lock,
# so that statement's snapshot sees the refund, its history and approvals as
# the last writer left them (one statement doing both would read the
# children with a snapshot taken before waiting for the lock).
_PAYMENT_OF_REFUND = (
    "SELECT * FROM payments WHERE id = (SELECT payment_id FROM refunds WHERE id = $1) FOR UPDATE"
)
_REFUND_BY_PSE_ID = _REFUND.replace(
    "WHERE r.id = $1", "WHERE r.pse_account = $1 AND r.pse_refund_id = $2"
)
_REFUND_JSON = frozenset({"metadata", "required_approvals", "history_rows", "approval_rows"})


def _fixed_values(refund: Refund) -> list[Any]:
    """The id and the columns a refund is created with, in `_ALL`'s order."""
    return [
        refund.id,
        refund.payment_id,
        refund.pse_account,
        refund.amount.amount,
        refund.currency,
        refund.reason.value,
        refund.note,
        _dumps(refund.metadata),
        refund.created_by,
        refund.created_at,
    ]


def _mutable_values(refund: Refund) -> list[Any]:
    return [
        refund.status.value,
        _dumps(list(refund.required_approvals)),
        refund.offline,
        refund.offline_reason,
        refund.auto_approved,
        refund.pse_refund_id,
        refund.failure_code,
        refund.failure_message,
        refund.settlement_amount,
        refund.settlement_currency,
        refund.fx_difference,
        refund.fee_amount,
        refund.offline_reference,
        refund.offline_paid_at,
        refund.submit_attempts,
        refund.resolve_attempts,
        refund.next_check_at,
        refund.updated_at,
        refund.attention,
        refund.attention_at,
    ]


def _history_arrays(changes: Sequence[StatusChange]) -> list[list[Any]]:
    return [
        [change.status.value for change in changes],
        [change.at for change in changes],
        [change.actor for change in changes],
        [change.detail for change in changes],
    ]


class PgRefundRepository(_Raw, SqlRefundRepository):
    # The unit of work's payments, told what `lock_with_payment` read.
    payments: PgPaymentRepository | None = None

    async def save_with(
        self,
        refund: Refund,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        new: bool,
    ) -> None:
        """A new or changed refund, its payment's counters (if they moved) and
        its new events, in one statement."""
        history_seen, approvals_seen = (0, 0) if new else self._loaded.get(refund.id, (0, 0))
        payments = self.payments
        with_payment = payments is None or payments.loaded.get(payment.id) != _counters(payment)
        args: list[Any] = _fixed_values(refund) if new else [refund.id]
        args += _mutable_values(refund)
        args += [refund.id, *_history_arrays(refund.history[history_seen:])]
        if with_payment:
            args += [payment.id, *_counters(payment)]
        args += _events_values(events, deliver)
        await self.raw.execute(_REFUND_SAVE[(new, with_payment)], *args)
        self._loaded[refund.id] = (len(refund.history), approvals_seen)
        if payments is not None:
            payments.loaded[payment.id] = _counters(payment)
        await self._add_approvals(refund, approvals_seen)

    async def _add_approvals(self, refund: Refund, seen: int) -> None:
        new = refund.approvals[seen:]
        if new:
            await self.raw.executemany(
                _APPROVALS_INSERT,
                [
                    (refund.id, a.approver_id, a.approver, a.level, a.decision.value, a.note, a.at)
                    for a in new
                ],
            )
        self._loaded[refund.id] = (self._loaded[refund.id][0], len(refund.approvals))

    def _refund(self, record: Record) -> Refund:
        row = _Row(record, _REFUND_JSON)
        history = [
            StatusChange(RefundStatus(status), _instant(at), actor, detail)
            for status, at, actor, detail in row.history_rows or ()
        ]
        approvals = [
            Approval(approver_id, approver, level, Decision(decision), note, _instant(at))
            for approver_id, approver, level, decision, note, at in row.approval_rows or ()
        ]
        refund = refund_from_row(row, history, approvals)
        self._loaded[refund.id] = (len(history), len(approvals))
        return refund

    async def get(self, refund_id: str, *, for_update: bool = False) -> Refund | None:
        record = await self.raw.fetchrow(_REFUND_LOCKED if for_update else _REFUND, refund_id)
        return self._refund(record) if record else None

    async def lock_with_payment(self, refund_id: str) -> tuple[Payment, Refund] | None:
        row = await self.raw.fetchrow(_PAYMENT_OF_REFUND, refund_id)
        if row is None:
            return None
        payment = self.payments.remember(row) if self.payments else payment_from_row(_Row(row))
        record = await self.raw.fetchrow(_REFUND_LOCKED, refund_id)
        return (payment, self._refund(record)) if record else None

    async def payment_id_of(self, refund_id: str) -> str | None:
        found: str | None = await self.raw.fetchval(
            "SELECT payment_id FROM refunds WHERE id = $1", refund_id
        )
        return found

    async def find_for_settlement(
        self, pse_account: str, pse_refund_ids: Sequence[str], references: Sequence[str]
    ) -> list[RefundSnapshot]:
        if not pse_refund_ids and not references:
            return []
        rows = await self.raw.fetch(
            "SELECT id, pse_refund_id, amount, currency, status FROM refunds "
            "WHERE pse_account = $1 "
            "AND (pse_refund_id = ANY($2::text[]) OR id = ANY($3::text[]))",
            pse_account,
            list(pse_refund_ids),
            list(references),
        )
        return [
            RefundSnapshot(id_, pse_id, money(amount, currency), STATUSES[status])
            for id_, pse_id, amount, currency, status in rows
        ]

    async def find_by_pse_refund_id(self, pse_account: str, pse_refund_id: str) -> Refund | None:
        record = await self.raw.fetchrow(_REFUND_BY_PSE_ID, pse_account, pse_refund_id)
        return self._refund(record) if record else None


def _events_values(events: Sequence[OutboxEvent], deliver: bool) -> list[Any]:
    status = DeliveryStatus.PENDING if deliver else DeliveryStatus.NONE
    return [
        [e.id for e in events],
        [e.type for e in events],
        [e.refund_id for e in events],
        [e.payment_id for e in events],
        [e.detail for e in events],
        [_dumps(e.data) for e in events],
        [e.created_at for e in events],
        status.value,
        deliver,
    ]


# -- idempotency ------------------------------------------------------------


class PgIdempotencyRepository(_Raw, SqlIdempotencyRepository):
    async def insert_if_absent(self, record: IdempotencyRecord) -> bool:
        status = await self.raw.execute(
            "INSERT INTO idempotency_keys (api_key_id, key, method, path, request_hash, state, "
            "created_at, locked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT DO NOTHING",
            record.api_key_id,
            record.key,
            record.method,
            record.path,
            record.request_hash,
            record.state.value,
            record.created_at,
            record.locked_at,
        )
        return _count(status) > 0

    async def get(self, api_key_id: str, key: str) -> IdempotencyRecord | None:
        row = await self.raw.fetchrow(
            "SELECT * FROM idempotency_keys WHERE api_key_id = $1 AND key = $2", api_key_id, key
        )
        return idempotency_from_row(_Row(row)) if row else None

    async def complete(self, api_key_id: str, key: str, status: int, body: bytes) -> None:
        await self.raw.execute(
            "UPDATE idempotency_keys SET state = $3, response_status = $4, response_body = $5, "
            "locked_at = NULL WHERE api_key_id = $1 AND key = $2",
            api_key_id,
            key,
            IdempotencyState.COMPLETED.value,
            status,
            body,
        )

    async def delete(self, api_key_id: str, key: str) -> None:
        await self.raw.execute(
            "DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2", api_key_id, key
        )


# -- PSE webhooks -----------------------------------------------------------

_WEBHOOK_JSON = frozenset({"refund"})


class PgWebhookRepository(_Raw, SqlWebhookRepository):
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
        row = await self.raw.fetchrow(
            "INSERT INTO pse_webhook_events (pse_account, event_id, event_type, pse_refund_id, "
            "reference, refund, body, status, received_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING *",
            pse_account,
            event_id,
            event_type,
            (refund or {}).get("pse_refund_id"),
            (refund or {}).get("reference"),
            None if refund is None else _dumps(refund),
            body,
            WebhookStatus.RECEIVED.value,
            received_at,
        )
        return webhook_from_row(_Row(row, _WEBHOOK_JSON)) if row else None

    async def mark(
        self, webhook_id: int, status: WebhookStatus, refund_id: str | None, at: datetime
    ) -> None:
        await self.raw.execute(
            "UPDATE pse_webhook_events SET status = $2, refund_id = $3, applied_at = $4 "
            "WHERE id = $1",
            webhook_id,
            status.value,
            refund_id,
            at,
        )

    async def waiting_for(
        self, pse_account: str, pse_refund_id: str | None, reference: str
    ) -> list[StoredWebhook]:
        rows = await self.raw.fetch(
            "SELECT * FROM pse_webhook_events WHERE pse_account = $1 AND status = ANY($2::text[]) "
            "AND (reference = $3 OR ($4::text IS NOT NULL AND pse_refund_id = $4)) ORDER BY id",
            pse_account,
            [WebhookStatus.UNMATCHED.value, WebhookStatus.RECEIVED.value],
            reference,
            pse_refund_id,
        )
        return [webhook_from_row(_Row(row, _WEBHOOK_JSON)) for row in rows]


# -- audit ------------------------------------------------------------------

_AUDIT_TYPES = ("bigint", "timestamptz", *["text"] * 8)
_AUDIT_INSERT = (
    f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) SELECT * FROM unnest("  # noqa: S608
    + ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_AUDIT_TYPES, start=1))
    + ")"
)


class PgAuditRepository(_Raw, SqlAuditRepository):
    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Seal entries after the chain's head, under the head's lock: one
        statement for the whole batch."""
        head = await self.raw.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
        seq, prev = head["seq"], head["hash"]
        records = []
        for entry in entries:
            seq += 1
            record = seal(entry, seq, prev)
            records.append(record)
            prev = record.hash
        await self.raw.execute(
            _AUDIT_INSERT, *([getattr(r, name) for r in records] for name in AUDIT_COLUMNS)
        )
        await self.raw.execute("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", seq, prev)
        return records
