"""Disputes (chargebacks) on payments.

A dispute's change is one statement, as a refund's is: the dispute, its
payment's counters (every one of them: the disputes' two are written here
and only here, so a refund's save never carries them) and the payment's new
events. Every writer of a dispute holds its payment's lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from app.adapters.db import outbox as outbox_sql
from app.adapters.db import payments as payments_sql
from app.adapters.db.statements import Conditions, Write, in_one_round_trip
from app.domain.disputes import Dispute, DisputeStatus
from app.domain.models import Payment
from app.domain.money import Money
from app.domain.ports import AlreadyExists
from app.domain.records import DisputeFigures, OutboxEvent

# The columns a change of a dispute writes, in parameter order after the id.
_MUTABLE = (
    "amount",
    "reason",
    "status",
    "counted_amount",
    "closed_at",
    "evidence_due_by",
    "updated_at",
)
# The columns a dispute is created with and never changes.
_FIXED = (
    "payment_id",
    "pse_account",
    "pse_dispute_id",
    "currency",
    "source",
    "opened_at",
    "created_at",
)
_COLUMNS = ("id", *_FIXED, *_MUTABLE)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM disputes"  # noqa: S608

_INSERT = Write(
    f"INSERT INTO disputes ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})",
    len(_COLUMNS),
)
_UPDATE = Write(
    "UPDATE disputes SET "  # noqa: S608
    + ", ".join(f"{name} = ${i}" for i, name in enumerate(_MUTABLE, start=2))
    + " WHERE id = $1",
    1 + len(_MUTABLE),
)


def _save_statement(*, new: bool) -> str:
    return in_one_round_trip(
        _INSERT if new else _UPDATE, payments_sql.DISPUTE_COUNTERS_UPDATE, outbox_sql.APPEND
    )


# (new dispute?) -> the dispute, its payment's counters and the payment's events.
_SAVE = {new: _save_statement(new=new) for new in (True, False)}

_BY_PSE = _SELECT + " WHERE pse_account = $1 AND pse_dispute_id = $2"
_BY_IDS = _SELECT + " WHERE id = ANY($1::text[])"
_OF_PAYMENT = _SELECT + " WHERE payment_id = $1 ORDER BY id DESC LIMIT $2"
_OF_PAYMENT_BEFORE = _SELECT + " WHERE payment_id = $1 AND id < $3 ORDER BY id DESC LIMIT $2"
# Open is written out, not a parameter: the partial index of open disputes
# (migration 0009) serves only a query that names it.
_IS_OPEN = "status = 'open'"
# Those without an evidence deadline last.
_DEADLINE = "coalesce(evidence_due_by, 'infinity'::timestamptz)"
# Every (account, currency) that ever had a dispute, with zeros once none is
# open: a gauge read from it never keeps a value that is no longer true.
_FIGURES = (
    "SELECT pse_account, currency, count(*) FILTER (WHERE status = 'open') AS open, "
    "coalesce(sum(amount) FILTER (WHERE status = 'open'), 0) AS open_amount, "
    "coalesce(sum(counted_amount) FILTER (WHERE status = 'lost'), 0) AS lost_amount "
    "FROM disputes GROUP BY pse_account, currency ORDER BY pse_account, currency"
)
_FIGURES_IN = _FIGURES.replace(" GROUP BY", " WHERE pse_account = ANY($1::text[]) GROUP BY")


def _mutable_values(dispute: Dispute) -> list[Any]:
    return [
        dispute.amount.amount,
        dispute.reason,
        dispute.status.value,
        dispute.counted_amount,
        dispute.closed_at,
        dispute.evidence_due_by,
        dispute.updated_at,
    ]


def _insert_args(dispute: Dispute) -> list[Any]:
    return [
        dispute.id,
        dispute.payment_id,
        dispute.pse_account,
        dispute.pse_dispute_id,
        dispute.amount.currency,
        dispute.source,
        dispute.opened_at,
        dispute.created_at,
        *_mutable_values(dispute),
    ]


def _open(accounts: Sequence[str] | None) -> Conditions:
    """Open disputes; with `accounts`, only those of these PSE accounts."""
    where = Conditions()
    where.add(_IS_OPEN)
    if accounts is not None:
        where.add("pse_account = ANY({}::text[])", list(accounts))
    return where


def dispute_from_record(record: asyncpg.Record) -> Dispute:
    return Dispute(
        id=record["id"],
        payment_id=record["payment_id"],
        pse_account=record["pse_account"],
        pse_dispute_id=record["pse_dispute_id"],
        amount=Money(record["amount"], record["currency"]),
        reason=record["reason"],
        status=DisputeStatus(record["status"]),
        opened_at=record["opened_at"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
        closed_at=record["closed_at"],
        evidence_due_by=record["evidence_due_by"],
        counted_amount=record["counted_amount"],
        source=record["source"],
    )


class DisputeRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def _write(
        self,
        dispute: Dispute,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        new: bool,
    ) -> None:
        if dispute.payment_id != payment.id:
            raise ValueError("a dispute written with another payment's counters")
        args = _insert_args(dispute) if new else [dispute.id, *_mutable_values(dispute)]
        args += payments_sql.dispute_counters_args(payment)
        args += outbox_sql.append_args(events, deliver)
        try:
            await self.conn.execute(_SAVE[new], *args)
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists(f"{dispute.pse_account}/{dispute.pse_dispute_id}") from exc
        # Every counter is written: a refund saved next in this unit of work
        # writes its payment only if they move again.
        payments_sql.mark_stored(payment)

    async def add(
        self, dispute: Dispute, payment: Payment, events: Sequence[OutboxEvent], *, deliver: bool
    ) -> None:
        await self._write(dispute, payment, events, deliver=deliver, new=True)

    async def save(
        self, dispute: Dispute, payment: Payment, events: Sequence[OutboxEvent], *, deliver: bool
    ) -> None:
        await self._write(dispute, payment, events, deliver=deliver, new=False)

    async def get_by_pse(self, pse_account: str, pse_dispute_id: str) -> Dispute | None:
        record = await self.conn.fetchrow(_BY_PSE, pse_account, pse_dispute_id)
        return dispute_from_record(record) if record else None

    async def get_many(self, dispute_ids: Sequence[str]) -> list[Dispute]:
        """In one round trip (in no set order); those not found left out."""
        if not dispute_ids:
            return []
        records = await self.conn.fetch(_BY_IDS, list(set(dispute_ids)))
        return [dispute_from_record(record) for record in records]

    async def for_payment(
        self, payment_id: str, *, limit: int, before_id: str | None
    ) -> list[Dispute]:
        if before_id is None:
            records = await self.conn.fetch(_OF_PAYMENT, payment_id, limit)
        else:
            records = await self.conn.fetch(_OF_PAYMENT_BEFORE, payment_id, limit, before_id)
        return [dispute_from_record(record) for record in records]

    async def open_by_deadline(
        self,
        *,
        limit: int,
        after: tuple[datetime | None, str] | None = None,
        accounts: Sequence[str] | None = None,
    ) -> list[Dispute]:
        where = _open(accounts)
        if after is not None:
            where.add(
                f"({_DEADLINE}, id) > (coalesce({{}}::timestamptz, 'infinity'), {{}})", *after
            )
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{_SELECT}{where.where()} ORDER BY {_DEADLINE}, id LIMIT {limit_at}",
            *where.args,
            limit,
        )
        return [dispute_from_record(record) for record in records]

    async def open_count(
        self, accounts: Sequence[str] | None = None, *, due_before: datetime | None = None
    ) -> int:
        where = _open(accounts)
        if due_before is not None:
            where.add("evidence_due_by < {}", due_before)
        found: int = await self.conn.fetchval(
            f"SELECT count(*) FROM disputes{where.where()}",  # noqa: S608
            *where.args,
        )
        return found

    async def figures(self, accounts: Sequence[str] | None = None) -> list[DisputeFigures]:
        if accounts is None:
            records = await self.conn.fetch(_FIGURES)
        else:
            records = await self.conn.fetch(_FIGURES_IN, list(accounts))
        return [
            DisputeFigures(
                r["pse_account"],
                r["currency"],
                r["open"],
                int(r["open_amount"]),
                int(r["lost_amount"]),
            )
            for r in records
        ]
