"""Payments: the rows refunds are made against, and their counters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from app.adapters.db.statements import Conditions, Write
from app.domain.models import Payment, RiskLevel
from app.domain.money import Money
from app.domain.ports import AlreadyExists
from app.domain.records import Volume

COLUMNS = (
    "id",
    "pse_account",
    "pse_payment_id",
    "order_id",
    "amount",
    "currency",
    "captured_at",
    "payment_method",
    "risk_level",
    "settlement_currency",
    "settlement_rate",
    "refunded_amount",
    "reserved_amount",
    "disputed_amount",
    "open_disputes",
    "created_at",
    "updated_at",
)
SELECT = f"SELECT {', '.join(COLUMNS)} FROM payments"  # noqa: S608

_INSERT = (
    f"INSERT INTO payments ({', '.join(COLUMNS)}, created_by) "  # noqa: S608
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 2))})"
)
_BY_ID = SELECT + " WHERE id = $1"
_BY_ID_LOCKED = _BY_ID + " FOR UPDATE"
# Also the day's auto-approved total in $2 (the payment's own currency when
# NULL), as last committed and without a lock: a refund's creation reads both
# in one round trip.
_BY_ID_LOCKED_WITH_DAY_TOTAL = (
    f"SELECT {', '.join(f'p.{c}' for c in COLUMNS)}, "  # noqa: S608
    "(SELECT t.amount FROM auto_approval_totals t "
    "WHERE t.currency = coalesce($2::text, p.currency) AND t.day = $3::text) AS day_total "
    "FROM payments p WHERE p.id = $1 FOR UPDATE OF p"
)
_BY_PSE = SELECT + " WHERE pse_account = $1 AND pse_payment_id = $2"
_BY_IDS = SELECT + " WHERE id = ANY($1::text[])"
_VOLUME = (
    "SELECT currency, count(*) AS payments, sum(amount) AS amount FROM payments "
    "WHERE created_at >= $1 GROUP BY currency ORDER BY currency"
)
_VOLUME_IN = _VOLUME.replace(" GROUP BY", " AND pse_account = ANY($2::text[]) GROUP BY")


def of_accounts(column: str) -> str:
    """A `Conditions` clause taking one parameter, the PSE accounts: the
    payment whose id is in `column` is one of theirs (a row naming no
    payment is not). For the rows that name a payment but not its account:
    events, audit records."""
    return (
        f"EXISTS (SELECT 1 FROM payments scope_p WHERE scope_p.id = {column} "  # noqa: S608
        "AND scope_p.pse_account = ANY({}::text[]))"
    )


# The counters a refund's change moves, written with it (see uow.save_refund).
COUNTERS_UPDATE = Write(
    "UPDATE payments SET refunded_amount = $2, reserved_amount = $3, updated_at = $4 WHERE id = $1",
    4,
)
# Every counter, the disputes' too: written with a dispute's change (see
# disputes.py), never by a refund's, whose save stays as small as it was.
DISPUTE_COUNTERS_UPDATE = Write(
    "UPDATE payments SET refunded_amount = $2, reserved_amount = $3, updated_at = $4, "
    "disputed_amount = $5, open_disputes = $6 WHERE id = $1",
    6,
)


def payment_from_record(record: Mapping[str, Any]) -> Payment:
    """A payment from a row of `SELECT`'s columns (or a mapping of them), its
    counters noted as stored."""
    payment = Payment(
        id=record["id"],
        pse_account=record["pse_account"],
        pse_payment_id=record["pse_payment_id"],
        order_id=record["order_id"],
        amount=Money(record["amount"], record["currency"]),
        captured_at=record["captured_at"],
        payment_method=record["payment_method"],
        risk_level=RiskLevel(record["risk_level"]),
        settlement_currency=record["settlement_currency"],
        settlement_rate=Decimal(record["settlement_rate"]),
        refunded_amount=record["refunded_amount"],
        reserved_amount=record["reserved_amount"],
        disputed_amount=record["disputed_amount"],
        open_disputes=record["open_disputes"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
    )
    mark_stored(payment)
    return payment


def mark_stored(payment: Payment) -> None:
    """Storage now holds the payment's counters as they are."""
    payment.stored_counters = payment.counters


def counters_moved(payment: Payment) -> bool:
    return payment.stored_counters != payment.counters


def counters_args(payment: Payment) -> list[object]:
    """`COUNTERS_UPDATE`'s arguments."""
    return [payment.id, *payment.counters]


def dispute_counters_args(payment: Payment) -> list[object]:
    """`DISPUTE_COUNTERS_UPDATE`'s arguments."""
    return [payment.id, *payment.counters, payment.disputed_amount, payment.open_disputes]


class PaymentRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(self, payment: Payment, created_by: str | None) -> None:
        try:
            await self.conn.execute(
                _INSERT,
                payment.id,
                payment.pse_account,
                payment.pse_payment_id,
                payment.order_id,
                payment.amount.amount,
                payment.currency,
                payment.captured_at,
                payment.payment_method,
                payment.risk_level.value,
                payment.settlement_currency,
                str(payment.settlement_rate),
                payment.refunded_amount,
                payment.reserved_amount,
                payment.disputed_amount,
                payment.open_disputes,
                payment.created_at,
                payment.updated_at,
                created_by,
            )
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists(payment.pse_payment_id) from exc
        mark_stored(payment)

    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        record = await self.conn.fetchrow(_BY_ID_LOCKED if for_update else _BY_ID, payment_id)
        return payment_from_record(record) if record else None

    async def lock_with_day_total(
        self, payment_id: str, currency: str | None, day: str
    ) -> tuple[Payment, int] | None:
        record = await self.conn.fetchrow(_BY_ID_LOCKED_WITH_DAY_TOTAL, payment_id, currency, day)
        if record is None:
            return None
        return payment_from_record(record), record["day_total"] or 0

    async def get_by_pse(self, pse_account: str, pse_payment_id: str) -> Payment | None:
        record = await self.conn.fetchrow(_BY_PSE, pse_account, pse_payment_id)
        return payment_from_record(record) if record else None

    async def get_many(self, payment_ids: Sequence[str]) -> list[Payment]:
        """The payments of a page of refunds, in one round trip (in no set order)."""
        if not payment_ids:
            return []
        records = await self.conn.fetch(_BY_IDS, list(set(payment_ids)))
        return [payment_from_record(record) for record in records]

    async def volume(
        self, created_since: datetime, accounts: Sequence[str] | None = None
    ) -> list[Volume]:
        if accounts is None:
            records = await self.conn.fetch(_VOLUME, created_since)
        else:
            records = await self.conn.fetch(_VOLUME_IN, created_since, list(accounts))
        return [Volume(r["currency"], r["payments"], int(r["amount"])) for r in records]

    async def list(
        self,
        *,
        order_id: str | None,
        limit: int,
        before_id: str | None,
        accounts: Sequence[str] | None = None,
    ) -> list[Payment]:
        where = Conditions()
        if order_id is not None:
            where.add("order_id = {}", order_id)
        if accounts is not None:
            where.add("pse_account = ANY({}::text[])", list(accounts))
        if before_id is not None:
            where.add("id < {}", before_id)
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{SELECT}{where.where()} ORDER BY id DESC LIMIT {limit_at}", *where.args, limit
        )
        return [payment_from_record(record) for record in records]
