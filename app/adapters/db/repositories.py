"""All SQL lives here: repositories mapping rows to domain objects and back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters.db import tables as t
from app.domain.audit import AuditEntry, AuditRecord, seal
from app.domain.models import (
    FINAL_STATUSES,
    Approval,
    Decision,
    Payment,
    Refund,
    RefundReason,
    RefundStatus,
    RiskLevel,
    StatusChange,
)
from app.domain.money import Money, money
from app.domain.ports import (
    AlreadyExists,
    RefundFilter,
)
from app.domain.reconciliation import RefundSnapshot
from app.domain.records import (
    ApiKey,
    DeliveryAttempt,
    DeliveryStatus,
    FxTotal,
    IdempotencyRecord,
    IdempotencyState,
    OutboxEvent,
    Reconciliation,
    ReconciliationLine,
    Role,
    StoredWebhook,
    WebhookStatus,
)

STATUSES = {status.value: status for status in RefundStatus}


class _Repo:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    @property
    def _is_postgres(self) -> bool:
        return self.conn.dialect.name == "postgresql"

    def _insert(self, table: Any) -> Any:
        return pg_insert(table) if self._is_postgres else sqlite_insert(table)


# -- payments ---------------------------------------------------------------


def payment_from_row(row: Any) -> Payment:
    return Payment(
        id=row.id,
        pse_account=row.pse_account,
        pse_payment_id=row.pse_payment_id,
        order_id=row.order_id,
        amount=Money(row.amount, row.currency),
        captured_at=row.captured_at,
        payment_method=row.payment_method,
        risk_level=RiskLevel(row.risk_level),
        settlement_currency=row.settlement_currency,
        settlement_rate=Decimal(row.settlement_rate),
        refunded_amount=row.refunded_amount,
        reserved_amount=row.reserved_amount,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class SqlPaymentRepository(_Repo):
    async def add(self, payment: Payment, created_by: str | None) -> None:
        try:
            await self._insert_payment(payment, created_by)
        except IntegrityError as exc:
            raise AlreadyExists(payment.pse_payment_id) from exc

    async def _insert_payment(self, payment: Payment, created_by: str | None) -> None:
        await self.conn.execute(
            insert(t.payments).values(
                id=payment.id,
                pse_account=payment.pse_account,
                pse_payment_id=payment.pse_payment_id,
                order_id=payment.order_id,
                amount=payment.amount.amount,
                currency=payment.currency,
                captured_at=payment.captured_at,
                payment_method=payment.payment_method,
                risk_level=payment.risk_level.value,
                settlement_currency=payment.settlement_currency,
                settlement_rate=str(payment.settlement_rate),
                refunded_amount=payment.refunded_amount,
                reserved_amount=payment.reserved_amount,
                created_by=created_by,
                created_at=payment.created_at,
                updated_at=payment.updated_at,
            )
        )

    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        query = select(t.payments).where(t.payments.c.id == payment_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).first()
        return payment_from_row(row) if row else None

    async def get_by_pse(self, pse_account: str, pse_payment_id: str) -> Payment | None:
        query = select(t.payments).where(
            t.payments.c.pse_account == pse_account,
            t.payments.c.pse_payment_id == pse_payment_id,
        )
        row = (await self.conn.execute(query)).first()
        return payment_from_row(row) if row else None

    async def update(self, payment: Payment) -> None:
        await self.conn.execute(
            update(t.payments)
            .where(t.payments.c.id == payment.id)
            .values(
                refunded_amount=payment.refunded_amount,
                reserved_amount=payment.reserved_amount,
                updated_at=payment.updated_at,
            )
        )

    async def list(
        self, *, order_id: str | None, limit: int, before_id: str | None
    ) -> list[Payment]:
        query = select(t.payments).order_by(t.payments.c.id.desc()).limit(limit)
        if order_id is not None:
            query = query.where(t.payments.c.order_id == order_id)
        if before_id is not None:
            query = query.where(t.payments.c.id < before_id)
        return [payment_from_row(row) for row in await self.conn.execute(query)]


# -- refunds ----------------------------------------------------------------


def refund_from_row(row: Any, history: list[StatusChange], approvals: list[Approval]) -> Refund:
    """A refund from its row (read by attribute) and its loaded children."""
    return Refund(
        id=row.id,
        payment_id=row.payment_id,
        pse_account=row.pse_account,
        amount=Money(row.amount, row.currency),
        status=STATUSES[row.status],
        reason=RefundReason(row.reason),
        note=row.note,
        metadata=dict(row.metadata or {}),
        required_approvals=list(row.required_approvals or []),
        offline=row.offline,
        offline_reason=row.offline_reason,
        auto_approved=row.auto_approved,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        approvals=approvals,
        history=history,
        pse_refund_id=row.pse_refund_id,
        failure_code=row.failure_code,
        failure_message=row.failure_message,
        settlement_amount=row.settlement_amount,
        settlement_currency=row.settlement_currency,
        fx_difference=row.fx_difference,
        fee_amount=row.fee_amount,
        offline_reference=row.offline_reference,
        offline_paid_at=row.offline_paid_at,
        submit_attempts=row.submit_attempts,
        resolve_attempts=row.resolve_attempts,
        next_check_at=row.next_check_at,
        attention=row.attention,
        attention_at=row.attention_at,
    )


class SqlRefundRepository(_Repo):
    def __init__(self, conn: AsyncConnection) -> None:
        super().__init__(conn)
        # How many history rows and approvals each loaded refund had: only the
        # ones appended since are inserted on update.
        self._loaded: dict[str, tuple[int, int]] = {}

    def _values(self, refund: Refund) -> dict[str, Any]:
        return {
            "status": refund.status.value,
            "required_approvals": list(refund.required_approvals),
            "offline": refund.offline,
            "offline_reason": refund.offline_reason,
            "auto_approved": refund.auto_approved,
            "pse_refund_id": refund.pse_refund_id,
            "failure_code": refund.failure_code,
            "failure_message": refund.failure_message,
            "settlement_amount": refund.settlement_amount,
            "settlement_currency": refund.settlement_currency,
            "fx_difference": refund.fx_difference,
            "fee_amount": refund.fee_amount,
            "offline_reference": refund.offline_reference,
            "offline_paid_at": refund.offline_paid_at,
            "submit_attempts": refund.submit_attempts,
            "resolve_attempts": refund.resolve_attempts,
            "next_check_at": refund.next_check_at,
            "updated_at": refund.updated_at,
            "attention": refund.attention,
            "attention_at": refund.attention_at,
        }

    async def add(self, refund: Refund) -> None:
        await self.conn.execute(
            insert(t.refunds).values(
                id=refund.id,
                payment_id=refund.payment_id,
                pse_account=refund.pse_account,
                amount=refund.amount.amount,
                currency=refund.currency,
                reason=refund.reason.value,
                note=refund.note,
                metadata=refund.metadata,
                created_by=refund.created_by,
                created_at=refund.created_at,
                **self._values(refund),
            )
        )
        self._loaded[refund.id] = (0, 0)
        await self._append_children(refund)

    async def update(self, refund: Refund) -> None:
        await self.conn.execute(
            update(t.refunds).where(t.refunds.c.id == refund.id).values(**self._values(refund))
        )
        await self._append_children(refund)

    async def _append_children(self, refund: Refund) -> None:
        history_seen, approvals_seen = self._loaded.get(refund.id, (0, 0))
        new_history = refund.history[history_seen:]
        if new_history:
            await self.conn.execute(
                insert(t.refund_status_history),
                [
                    {
                        "refund_id": refund.id,
                        "status": change.status.value,
                        "at": change.at,
                        "actor": change.actor,
                        "detail": change.detail,
                    }
                    for change in new_history
                ],
            )
        new_approvals = refund.approvals[approvals_seen:]
        if new_approvals:
            await self.conn.execute(
                insert(t.refund_approvals),
                [
                    {
                        "refund_id": refund.id,
                        "approver_id": a.approver_id,
                        "approver": a.approver,
                        "level": a.level,
                        "decision": a.decision.value,
                        "note": a.note,
                        "at": a.at,
                    }
                    for a in new_approvals
                ],
            )
        self._loaded[refund.id] = (len(refund.history), len(refund.approvals))

    async def get(self, refund_id: str, *, for_update: bool = False) -> Refund | None:
        query = select(t.refunds).where(t.refunds.c.id == refund_id)
        if for_update:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).first()
        if row is None:
            return None
        return (await self._hydrate([row]))[0]

    async def stale_unflagged(self, created_before: datetime, limit: int) -> list[str]:
        """Open refunds older than the SLA that have not yet raised `needs_attention`
        for being stale."""
        c = t.refunds.c
        e = t.events.c
        flagged = (
            select(literal_column("1"))
            .select_from(t.events)
            .where(
                e.refund_id == c.id,
                e.type == "refund.needs_attention",
                e.detail.like("stale:%"),
            )
            .exists()
        )
        rows = await self.conn.execute(
            select(c.id)
            .where(
                c.status.not_in([s.value for s in FINAL_STATUSES]),
                c.created_at < created_before,
                ~flagged,
            )
            .order_by(c.created_at)
            .limit(limit)
        )
        return [row.id for row in rows]

    async def lock_with_payment(self, refund_id: str) -> tuple[Payment, Refund] | None:
        of_refund = select(t.refunds.c.payment_id).where(t.refunds.c.id == refund_id)
        query = (
            select(t.payments)
            .where(t.payments.c.id == of_refund.scalar_subquery())
            .with_for_update()
        )
        row = (await self.conn.execute(query)).first()
        if row is None:
            return None
        refund = await self.get(refund_id, for_update=True)
        return (payment_from_row(row), refund) if refund else None

    async def payment_id_of(self, refund_id: str) -> str | None:
        found: str | None = (
            await self.conn.execute(
                select(t.refunds.c.payment_id).where(t.refunds.c.id == refund_id)
            )
        ).scalar()
        return found

    async def find_by_pse_refund_id(self, pse_account: str, pse_refund_id: str) -> Refund | None:
        query = select(t.refunds).where(
            t.refunds.c.pse_account == pse_account,
            t.refunds.c.pse_refund_id == pse_refund_id,
        )
        row = (await self.conn.execute(query)).first()
        return (await self._hydrate([row]))[0] if row else None

    async def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[str]:
        """Refunds due for a self-check, leased to the caller until `lease_until`.

        SKIP LOCKED lets several workers claim at once without waiting on, or
        taking, each other's rows; the lease (a later next_check_at) keeps them
        off these refunds once the short claiming transaction commits.
        """
        c = t.refunds.c
        query = (
            select(c.id)
            .where(
                c.status.in_(
                    [
                        RefundStatus.APPROVED.value,
                        RefundStatus.SUBMITTING.value,
                        RefundStatus.UNKNOWN.value,
                        RefundStatus.PENDING.value,
                    ]
                ),
                c.next_check_at <= now,
            )
            .order_by(c.next_check_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        ids = [row.id for row in await self.conn.execute(query)]
        if ids:
            await self.conn.execute(
                update(t.refunds).where(c.id.in_(ids)).values(next_check_at=lease_until)
            )
        return ids

    async def open_counts(self, stale_before: datetime) -> tuple[dict[str, int], int]:
        """Refunds not final, by status, and how many of them are stale."""
        c = t.refunds.c
        open_statuses = [s.value for s in RefundStatus if not s.is_final]
        rows = await self.conn.execute(
            select(c.status, func.count()).where(c.status.in_(open_statuses)).group_by(c.status)
        )
        counts = {status: 0 for status in open_statuses}
        counts.update({status: n for status, n in rows})
        stale = (
            await self.conn.execute(
                select(func.count()).where(c.status.in_(open_statuses), c.created_at < stale_before)
            )
        ).scalar_one()
        return counts, int(stale)

    async def find_for_settlement(
        self, pse_account: str, pse_refund_ids: Sequence[str], references: Sequence[str]
    ) -> list[RefundSnapshot]:
        """What a batch of settlement lines needs of our refunds, and nothing more."""
        c = t.refunds.c
        match = []
        if pse_refund_ids:
            match.append(c.pse_refund_id.in_(list(pse_refund_ids)))
        if references:
            match.append(c.id.in_(list(references)))
        if not match:
            return []
        rows = await self.conn.execute(
            select(c.id, c.pse_refund_id, c.amount, c.currency, c.status).where(
                c.pse_account == pse_account, or_(*match)
            )
        )
        return [
            RefundSnapshot(id_, pse_id, money(amount, currency), STATUSES[status])
            for id_, pse_id, amount, currency, status in rows
        ]

    async def list(self, flt: RefundFilter, *, limit: int, before_id: str | None) -> list[Refund]:
        c = t.refunds.c
        query = select(t.refunds)
        if flt.statuses:
            query = query.where(c.status.in_([s.value for s in flt.statuses]))
        if flt.payment_id is not None:
            query = query.where(c.payment_id == flt.payment_id)
        if flt.created_from is not None:
            query = query.where(c.created_at >= flt.created_from)
        if flt.created_to is not None:
            query = query.where(c.created_at < flt.created_to)
        if flt.open_before is not None:
            query = query.where(
                c.created_at < flt.open_before,
                c.status.not_in([s.value for s in FINAL_STATUSES]),
            )
        if flt.needs_attention:
            query = query.where(c.attention.is_not(None))
        if flt.oldest_first:
            query = query.order_by(c.id.asc())
            if before_id is not None:
                query = query.where(c.id > before_id)
        else:
            query = query.order_by(c.id.desc())
            if before_id is not None:
                query = query.where(c.id < before_id)
        rows = list(await self.conn.execute(query.limit(limit)))
        return await self._hydrate(rows)

    async def _hydrate(self, rows: Sequence[Any]) -> list[Refund]:
        if not rows:
            return []
        ids = [row.id for row in rows]
        history: dict[str, list[StatusChange]] = {i: [] for i in ids}
        approvals: dict[str, list[Approval]] = {i: [] for i in ids}
        h = t.refund_status_history
        for hrow in await self.conn.execute(
            select(h).where(h.c.refund_id.in_(ids)).order_by(h.c.id)
        ):
            history[hrow.refund_id].append(
                StatusChange(RefundStatus(hrow.status), hrow.at, hrow.actor, hrow.detail)
            )
        a = t.refund_approvals
        # Refunds that never needed an approval have none to load.
        with_approvals = [row.id for row in rows if row.required_approvals]
        for arow in (
            await self.conn.execute(
                select(a).where(a.c.refund_id.in_(with_approvals)).order_by(a.c.id)
            )
            if with_approvals
            else []
        ):
            approvals[arow.refund_id].append(
                Approval(
                    arow.approver_id,
                    arow.approver,
                    arow.level,
                    Decision(arow.decision),
                    arow.note,
                    arow.at,
                )
            )
        result = []
        for row in rows:
            refund = refund_from_row(row, history[row.id], approvals[row.id])
            self._loaded[refund.id] = (len(refund.history), len(refund.approvals))
            result.append(refund)
        return result


# -- outbox -----------------------------------------------------------------


def _event(row: Any) -> OutboxEvent:
    return OutboxEvent(
        id=row.id,
        type=row.type,
        refund_id=row.refund_id,
        payment_id=row.payment_id,
        created_at=row.created_at,
        data=row.data,
        detail=row.detail,
        seq=row.seq,
        tx=row.tx,
        delivery_status=DeliveryStatus(row.delivery_status),
        delivery_attempts=row.delivery_attempts,
        next_delivery_at=row.next_delivery_at,
        first_attempt_at=row.first_attempt_at,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
    )


def _attempt(row: Any) -> DeliveryAttempt:
    return DeliveryAttempt(
        event_id=row.event_id,
        attempt=row.attempt,
        at=row.at,
        url=row.url,
        status_code=row.status_code,
        duration_ms=row.duration_ms,
        error=row.error,
    )


class SqlOutboxRepository(_Repo):
    async def add(self, events: Sequence[OutboxEvent], *, deliver: bool) -> None:
        if not events:
            return
        status = DeliveryStatus.PENDING if deliver else DeliveryStatus.NONE
        await self.conn.execute(
            insert(t.events),
            [
                {
                    "id": e.id,
                    "type": e.type,
                    "refund_id": e.refund_id,
                    "payment_id": e.payment_id,
                    "detail": e.detail,
                    "data": e.data,
                    "created_at": e.created_at,
                    "delivery_status": status.value,
                    "delivery_attempts": 0,
                    "next_delivery_at": e.created_at if deliver else None,
                }
                for e in events
            ],
        )

    async def get(self, event_id: str) -> OutboxEvent | None:
        row = (await self.conn.execute(select(t.events).where(t.events.c.id == event_id))).first()
        return _event(row) if row else None

    def _filtered(self, types: Sequence[str], refund_id: str | None) -> Any:
        query = select(t.events)
        if types:
            query = query.where(t.events.c.type.in_(list(types)))
        if refund_id is not None:
            query = query.where(t.events.c.refund_id == refund_id)
        return query

    async def list_newest(
        self,
        *,
        types: Sequence[str],
        refund_id: str | None,
        limit: int,
        before: tuple[int, int] | None,
    ) -> list[OutboxEvent]:
        c = t.events.c
        query = self._filtered(types, refund_id).order_by(c.tx.desc(), c.seq.desc())
        if before is not None:
            query = query.where(tuple_(c.tx, c.seq) < tuple_(*before))
        return [_event(row) for row in await self.conn.execute(query.limit(limit))]

    async def list_after(
        self,
        *,
        after: tuple[int, int],
        types: Sequence[str],
        refund_id: str | None,
        limit: int,
    ) -> list[OutboxEvent]:
        c = t.events.c
        query = (
            self._filtered(types, refund_id)
            .where(tuple_(c.tx, c.seq) > tuple_(*after))
            .order_by(c.tx, c.seq)
        )
        if self._is_postgres:
            # Only transactions older than every one still running: an event a
            # reader has not seen can never appear before its position later.
            horizon = literal_column("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            query = query.where(c.tx < horizon)
        return [_event(row) for row in await self.conn.execute(query.limit(limit))]

    async def claim_deliveries(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxEvent]:
        """The first undelivered event of each refund, if due, leased to the caller.

        An event waits while an earlier event of its refund is still pending, so
        a store receives each refund's events in order; SKIP LOCKED and the
        lease keep two workers from sending the same event at once.
        """
        e = t.events.c
        earlier = t.events.alias("earlier")
        blocked = (
            select(literal_column("1"))
            .select_from(earlier)
            .where(
                earlier.c.refund_id == e.refund_id,
                earlier.c.delivery_status == DeliveryStatus.PENDING.value,
                tuple_(earlier.c.tx, earlier.c.seq) < tuple_(e.tx, e.seq),
            )
            .exists()
        )
        query = (
            select(t.events)
            .where(
                e.delivery_status == DeliveryStatus.PENDING.value,
                e.next_delivery_at <= now,
                ~blocked,
            )
            .order_by(e.tx, e.seq)
            .limit(limit)
            .with_for_update(skip_locked=True, of=t.events)
        )
        claimed = [_event(row) for row in await self.conn.execute(query)]
        if claimed:
            await self.conn.execute(
                update(t.events)
                .where(e.id.in_([ev.id for ev in claimed]))
                .values(next_delivery_at=lease_until)
            )
        return claimed

    async def record_delivery(
        self,
        attempt: DeliveryAttempt,
        *,
        status: DeliveryStatus,
        next_delivery_at: datetime | None,
    ) -> None:
        await self.conn.execute(
            insert(t.event_deliveries).values(
                event_id=attempt.event_id,
                attempt=attempt.attempt,
                at=attempt.at,
                url=attempt.url,
                status_code=attempt.status_code,
                duration_ms=attempt.duration_ms,
                error=attempt.error,
            )
        )
        await self.conn.execute(
            update(t.events)
            .where(t.events.c.id == attempt.event_id)
            .values(
                delivery_status=status.value,
                delivery_attempts=attempt.attempt,
                next_delivery_at=next_delivery_at,
                first_attempt_at=func.coalesce(t.events.c.first_attempt_at, attempt.at),
                delivered_at=attempt.at if status is DeliveryStatus.DELIVERED else None,
                last_error=None if attempt.delivered else _attempt_error(attempt),
            )
        )

    async def oldest_undelivered(self) -> datetime | None:
        c = t.events.c
        found: datetime | None = (
            await self.conn.execute(
                select(func.min(c.created_at)).where(
                    c.delivery_status == DeliveryStatus.PENDING.value
                )
            )
        ).scalar()
        if found is not None and found.tzinfo is None:  # SQLite hands back naive times
            found = found.replace(tzinfo=UTC)
        return found

    async def attempts(self, event_id: str) -> list[DeliveryAttempt]:
        d = t.event_deliveries.c
        rows = await self.conn.execute(
            select(t.event_deliveries).where(d.event_id == event_id).order_by(d.id)
        )
        return [_attempt(row) for row in rows]

    async def redeliver(self, event_id: str, now: datetime) -> bool:
        result = await self.conn.execute(
            update(t.events)
            .where(t.events.c.id == event_id)
            .values(
                delivery_status=DeliveryStatus.PENDING.value,
                next_delivery_at=now,
                first_attempt_at=None,
            )
        )
        return bool(result.rowcount)


def _attempt_error(attempt: DeliveryAttempt) -> str:
    if attempt.error:
        return attempt.error
    return f"HTTP {attempt.status_code}"


# -- idempotency ------------------------------------------------------------


def idempotency_from_row(row: Any) -> IdempotencyRecord:
    return IdempotencyRecord(
        api_key_id=row.api_key_id,
        key=row.key,
        method=row.method,
        path=row.path,
        request_hash=row.request_hash,
        state=IdempotencyState(row.state),
        created_at=row.created_at,
        locked_at=row.locked_at,
        response_status=row.response_status,
        response_body=row.response_body,
    )


class SqlIdempotencyRepository(_Repo):
    def _key(self, api_key_id: str, key: str) -> Any:
        c = t.idempotency_keys.c
        return and_(c.api_key_id == api_key_id, c.key == key)

    async def insert_if_absent(self, record: IdempotencyRecord) -> bool:
        stmt = (
            self._insert(t.idempotency_keys)
            .values(
                api_key_id=record.api_key_id,
                key=record.key,
                method=record.method,
                path=record.path,
                request_hash=record.request_hash,
                state=record.state.value,
                created_at=record.created_at,
                locked_at=record.locked_at,
            )
            .on_conflict_do_nothing()
        )
        result = await self.conn.execute(stmt)
        return bool(result.rowcount)

    async def get(self, api_key_id: str, key: str) -> IdempotencyRecord | None:
        row = (
            await self.conn.execute(select(t.idempotency_keys).where(self._key(api_key_id, key)))
        ).first()
        return idempotency_from_row(row) if row else None

    async def reclaim(
        self, api_key_id: str, key: str, *, stale_before: datetime, now: datetime
    ) -> bool:
        c = t.idempotency_keys.c
        result = await self.conn.execute(
            update(t.idempotency_keys)
            .where(
                self._key(api_key_id, key),
                c.state == IdempotencyState.STARTED.value,
                or_(c.locked_at.is_(None), c.locked_at < stale_before),
            )
            .values(locked_at=now)
        )
        return bool(result.rowcount)

    async def complete(self, api_key_id: str, key: str, status: int, body: bytes) -> None:
        await self.conn.execute(
            update(t.idempotency_keys)
            .where(self._key(api_key_id, key))
            .values(
                state=IdempotencyState.COMPLETED.value,
                response_status=status,
                response_body=body,
                locked_at=None,
            )
        )

    async def delete(self, api_key_id: str, key: str) -> None:
        await self.conn.execute(delete(t.idempotency_keys).where(self._key(api_key_id, key)))

    async def purge(self, created_before: datetime) -> int:
        result = await self.conn.execute(
            delete(t.idempotency_keys).where(
                t.idempotency_keys.c.created_at < created_before,
                t.idempotency_keys.c.state == IdempotencyState.COMPLETED.value,
            )
        )
        return int(result.rowcount or 0)


# -- PSE webhooks -----------------------------------------------------------


def webhook_from_row(row: Any) -> StoredWebhook:
    return StoredWebhook(
        id=row.id,
        pse_account=row.pse_account,
        event_id=row.event_id,
        event_type=row.event_type,
        status=WebhookStatus(row.status),
        received_at=row.received_at,
        pse_refund_id=row.pse_refund_id,
        reference=row.reference,
        refund=row.refund,
        refund_id=row.refund_id,
    )


class SqlWebhookRepository(_Repo):
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
        stmt = (
            self._insert(t.pse_webhook_events)
            .values(
                pse_account=pse_account,
                event_id=event_id,
                event_type=event_type,
                pse_refund_id=(refund or {}).get("pse_refund_id"),
                reference=(refund or {}).get("reference"),
                refund=refund,
                body=body,
                status=WebhookStatus.RECEIVED.value,
                received_at=received_at,
            )
            .on_conflict_do_nothing()
            .returning(t.pse_webhook_events)
        )
        row = (await self.conn.execute(stmt)).first()
        return webhook_from_row(row) if row else None

    async def mark(
        self, webhook_id: int, status: WebhookStatus, refund_id: str | None, at: datetime
    ) -> None:
        await self.conn.execute(
            update(t.pse_webhook_events)
            .where(t.pse_webhook_events.c.id == webhook_id)
            .values(status=status.value, refund_id=refund_id, applied_at=at)
        )

    async def stuck(self, received_before: datetime, limit: int) -> list[StoredWebhook]:
        """Events stored but never applied (the process stopped in between)."""
        c = t.pse_webhook_events.c
        query = (
            select(t.pse_webhook_events)
            .where(c.status == WebhookStatus.RECEIVED.value, c.received_at < received_before)
            .order_by(c.id)
            .limit(limit)
        )
        return [webhook_from_row(row) for row in await self.conn.execute(query)]

    async def waiting_for(
        self, pse_account: str, pse_refund_id: str | None, reference: str
    ) -> list[StoredWebhook]:
        c = t.pse_webhook_events.c
        match = c.reference == reference
        if pse_refund_id:
            match = or_(match, c.pse_refund_id == pse_refund_id)
        query = (
            select(t.pse_webhook_events)
            .where(
                c.pse_account == pse_account,
                c.status.in_([WebhookStatus.UNMATCHED.value, WebhookStatus.RECEIVED.value]),
                match,
            )
            .order_by(c.id)
        )
        return [webhook_from_row(row) for row in await self.conn.execute(query)]


# -- API keys ---------------------------------------------------------------


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        roles=frozenset(Role(r) for r in row.roles),
        approval_level=row.approval_level,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class SqlApiKeyRepository(_Repo):
    async def add(self, key: ApiKey, key_hash: str) -> None:
        await self.conn.execute(
            insert(t.api_keys).values(
                id=key.id,
                name=key.name,
                key_hash=key_hash,
                prefix=key.prefix,
                roles=sorted(r.value for r in key.roles),
                approval_level=key.approval_level,
                created_at=key.created_at,
            )
        )

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        row = (
            await self.conn.execute(select(t.api_keys).where(t.api_keys.c.key_hash == key_hash))
        ).first()
        return _api_key(row) if row else None

    async def revoke(self, key_id: str, at: datetime) -> bool:
        result = await self.conn.execute(
            update(t.api_keys)
            .where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return bool(result.rowcount)

    async def list(self) -> list[ApiKey]:
        rows = await self.conn.execute(select(t.api_keys).order_by(t.api_keys.c.created_at))
        return [_api_key(row) for row in rows]


# -- daily auto-approval totals ---------------------------------------------


class SqlAutoApprovalTotals(_Repo):
    async def lock_total(self, currency: str, day: str) -> int:
        c = t.auto_approval_totals.c
        await self.conn.execute(
            self._insert(t.auto_approval_totals)
            .values(currency=currency, day=day, amount=0)
            .on_conflict_do_nothing()
        )
        row = (
            await self.conn.execute(
                select(c.amount).where(c.currency == currency, c.day == day).with_for_update()
            )
        ).first()
        return int(row.amount) if row else 0

    async def add(self, currency: str, day: str, amount: int) -> None:
        c = t.auto_approval_totals.c
        await self.conn.execute(
            update(t.auto_approval_totals)
            .where(c.currency == currency, c.day == day)
            .values(amount=c.amount + amount)
        )


__all__ = [
    "SqlApiKeyRepository",
    "SqlAutoApprovalTotals",
    "SqlIdempotencyRepository",
    "SqlOutboxRepository",
    "SqlPaymentRepository",
    "SqlRefundRepository",
    "SqlWebhookRepository",
]


# -- reconciliation ---------------------------------------------------------

_LINE_COLUMNS = (
    "reconciliation_id",
    "line",
    "outcome",
    "pse_refund_id",
    "reference",
    "refund_id",
    "file_amount",
    "file_status",
    "our_amount",
    "our_status",
    "currency",
    "settled_at",
    "fee",
    "settlement_amount",
    "settlement_currency",
    "detail",
)


_LINE_WIDTH = len(_LINE_COLUMNS)
assert ReconciliationLine._fields[:_LINE_WIDTH] == _LINE_COLUMNS


def _reconciliation(row: Any) -> Reconciliation:
    return Reconciliation(
        id=row.id,
        pse_account=row.pse_account,
        status=row.status,
        created_at=row.created_at,
        filename=row.filename,
        file_format=row.file_format,
        rows_total=row.rows_total,
        counts=dict(row.counts or {}),
        range_from=row.range_from,
        range_to=row.range_to,
        adopted=row.adopted,
        error=row.error,
        created_by=row.created_by,
        completed_at=row.completed_at,
    )


def _line(row: Any) -> ReconciliationLine:
    return ReconciliationLine(**{name: getattr(row, name) for name in _LINE_COLUMNS}, id=row.id)


class SqlReconciliationRepository(_Repo):
    async def add(self, reconciliation: Reconciliation) -> None:
        await self.conn.execute(
            insert(t.reconciliations).values(**self._values(reconciliation), id=reconciliation.id)
        )

    def _values(self, r: Reconciliation) -> dict[str, Any]:
        return {
            "pse_account": r.pse_account,
            "filename": r.filename,
            "status": r.status,
            "file_format": r.file_format,
            "rows_total": r.rows_total,
            "counts": r.counts,
            "range_from": r.range_from,
            "range_to": r.range_to,
            "adopted": r.adopted,
            "error": r.error,
            "created_by": r.created_by,
            "created_at": r.created_at,
            "completed_at": r.completed_at,
        }

    async def get(self, reconciliation_id: str) -> Reconciliation | None:
        row = (
            await self.conn.execute(
                select(t.reconciliations).where(t.reconciliations.c.id == reconciliation_id)
            )
        ).first()
        return _reconciliation(row) if row else None

    async def update(self, reconciliation: Reconciliation) -> None:
        await self.conn.execute(
            update(t.reconciliations)
            .where(t.reconciliations.c.id == reconciliation.id)
            .values(**self._values(reconciliation))
        )

    async def fail_stalled(self, started_before: datetime, now: datetime) -> int:
        """Runs still `processing` long after they began: their process stopped."""
        c = t.reconciliations.c
        result = await self.conn.execute(
            update(t.reconciliations)
            .where(c.status == "processing", c.created_at < started_before)
            .values(
                status="failed",
                error="interrupted (the process running it stopped); upload the file again",
                completed_at=now,
            )
        )
        return int(result.rowcount or 0)

    async def add_lines(self, lines: Sequence[ReconciliationLine]) -> None:
        if not lines:
            return
        if self._is_postgres:
            # COPY: a million lines in seconds, where INSERTs would take minutes.
            raw = await self.conn.get_raw_connection()
            await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
                "reconciliation_rows",
                records=[line[:_LINE_WIDTH] for line in lines],
                columns=list(_LINE_COLUMNS),
            )
            return
        await self.conn.execute(
            insert(t.reconciliation_rows),
            [line._asdict() for line in lines],
        )

    async def lines(
        self, reconciliation_id: str, *, outcome: str | None, limit: int, after_id: int | None
    ) -> list[ReconciliationLine]:
        c = t.reconciliation_rows.c
        query = (
            select(t.reconciliation_rows)
            .where(c.reconciliation_id == reconciliation_id)
            .order_by(c.id)
            .limit(limit)
        )
        if outcome is not None:
            query = query.where(c.outcome == outcome)
        if after_id is not None:
            query = query.where(c.id > after_id)
        return [_line(row) for row in await self.conn.execute(query)]

    async def delete_lines(self, reconciliation_id: str) -> None:
        await self.conn.execute(
            delete(t.reconciliation_rows).where(
                t.reconciliation_rows.c.reconciliation_id == reconciliation_id
            )
        )

    async def add_missing_in_file(
        self,
        reconciliation_id: str,
        pse_account: str,
        succeeded_from: datetime,
        succeeded_to: datetime,
    ) -> int:
        """Refunds of the account we hold as succeeded within the file's period
        that no line of the file matched."""
        r = t.refunds.c
        rr = t.reconciliation_rows.c
        # NOT EXISTS plans as an anti-join; NOT IN over a million lines would not.
        matched = (
            select(literal_column("1"))
            .select_from(t.reconciliation_rows)
            .where(rr.reconciliation_id == reconciliation_id, rr.refund_id == r.id)
            .exists()
        )
        source = select(
            literal(reconciliation_id),
            literal("missing_in_file"),
            r.pse_refund_id,
            r.id,
            r.id,
            r.amount,
            r.status,
            r.currency,
            literal("we hold it as succeeded; the file does not have it"),
        ).where(
            r.pse_account == pse_account,
            r.status == RefundStatus.SUCCEEDED.value,
            r.updated_at >= succeeded_from,
            r.updated_at <= succeeded_to,
            ~matched,
        )
        result = await self.conn.execute(
            insert(t.reconciliation_rows).from_select(
                [
                    "reconciliation_id",
                    "outcome",
                    "pse_refund_id",
                    "reference",
                    "refund_id",
                    "our_amount",
                    "our_status",
                    "currency",
                    "detail",
                ],
                source,
            )
        )
        return int(result.rowcount or 0)

    async def apply_settled_figures(self, reconciliation_id: str) -> int:
        """Record each matched refund's fee and actual settled amount (hence its FX
        difference against the payment's rate) from the file."""
        r = t.refunds
        rr = t.reconciliation_rows
        fx = case(
            (
                and_(
                    rr.c.settlement_amount.is_not(None),
                    rr.c.settlement_currency == r.c.settlement_currency,
                    r.c.settlement_amount.is_not(None),
                ),
                rr.c.settlement_amount - r.c.settlement_amount,
            ),
            else_=r.c.fx_difference,
        )
        result = await self.conn.execute(
            update(r)
            .where(
                rr.c.reconciliation_id == reconciliation_id,
                rr.c.refund_id == r.c.id,
                rr.c.outcome == "matched",
                or_(rr.c.fee.is_not(None), rr.c.settlement_amount.is_not(None)),
            )
            .values(fee_amount=func.coalesce(rr.c.fee, r.c.fee_amount), fx_difference=fx)
        )
        return int(result.rowcount or 0)

    async def fx_totals(
        self, created_from: datetime | None, created_to: datetime | None, currency: str | None
    ) -> list[FxTotal]:
        r = t.refunds.c
        query = (
            select(
                r.settlement_currency,
                func.count().label("refunds"),
                func.coalesce(func.sum(r.fx_difference), 0).label("fx"),
                func.coalesce(func.sum(r.fee_amount), 0).label("fees"),
                func.count(r.fx_difference).label("with_actual"),
            )
            .where(
                r.status.in_([RefundStatus.SUCCEEDED.value, RefundStatus.PENDING.value]),
                r.settlement_currency.is_not(None),
            )
            .group_by(r.settlement_currency)
            .order_by(r.settlement_currency)
        )
        if created_from is not None:
            query = query.where(r.created_at >= created_from)
        if created_to is not None:
            query = query.where(r.created_at < created_to)
        if currency is not None:
            query = query.where(r.settlement_currency == currency)
        return [
            FxTotal(
                row.settlement_currency, row.refunds, int(row.fx), int(row.fees), row.with_actual
            )
            for row in await self.conn.execute(query)
        ]


# -- audit ------------------------------------------------------------------

AUDIT_COLUMNS = (
    "seq",
    "at",
    "kind",
    "request_id",
    "refund_id",
    "payment_id",
    "actor",
    "body",
    "prev_hash",
    "hash",
)


def _audit(row: Any) -> AuditRecord:
    return AuditRecord(*(getattr(row, name) for name in AUDIT_COLUMNS))


class SqlAuditRepository(_Repo):
    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Seal entries after the chain's head, under the head's lock: appends from
        every process are serialised, one short transaction per batch."""
        h = t.audit_head.c
        head = (
            await self.conn.execute(select(h.seq, h.hash).where(h.id == 1).with_for_update())
        ).one()
        seq, prev = head.seq, head.hash
        records = []
        for entry in entries:
            seq += 1
            record = seal(entry, seq, prev)
            records.append(record)
            prev = record.hash
        await self.conn.execute(
            insert(t.audit_log),
            [{name: getattr(r, name) for name in AUDIT_COLUMNS} for r in records],
        )
        await self.conn.execute(update(t.audit_head).where(h.id == 1).values(seq=seq, hash=prev))
        return records

    async def head(self) -> tuple[int, str, int, str]:
        h = t.audit_head.c
        row = (
            await self.conn.execute(
                select(h.seq, h.hash, h.anchor_seq, h.anchor_hash).where(h.id == 1)
            )
        ).one()
        return row.seq, row.hash, row.anchor_seq, row.anchor_hash

    async def after(self, seq: int, limit: int) -> list[AuditRecord]:
        c = t.audit_log.c
        rows = await self.conn.execute(
            select(t.audit_log).where(c.seq > seq).order_by(c.seq).limit(limit)
        )
        return [_audit(row) for row in rows]

    async def search(
        self,
        *,
        refund_id: str | None,
        payment_id: str | None,
        request_id: str | None,
        at_from: datetime | None,
        at_to: datetime | None,
        limit: int,
        before_seq: int | None,
        oldest_first: bool = False,
        after_seq: int | None = None,
    ) -> list[AuditRecord]:
        c = t.audit_log.c
        query = select(t.audit_log)
        if refund_id is not None:
            query = query.where(c.refund_id == refund_id)
        if payment_id is not None:
            query = query.where(c.payment_id == payment_id)
        if request_id is not None:
            query = query.where(c.request_id == request_id)
        if at_from is not None:
            query = query.where(c.at >= at_from)
        if at_to is not None:
            query = query.where(c.at < at_to)
        if before_seq is not None:
            query = query.where(c.seq < before_seq)
        if after_seq is not None:
            query = query.where(c.seq > after_seq)
        query = query.order_by(c.seq if oldest_first else c.seq.desc()).limit(limit)
        return [_audit(row) for row in await self.conn.execute(query)]

    async def purge(self, older_than: datetime, now: datetime) -> int:
        """Remove the oldest records, all older than `older_than`, keeping the
        chain verifiable: the head remembers the last removed record's hash."""
        c = t.audit_log.c
        h = t.audit_head.c
        await self.conn.execute(select(h.seq).where(h.id == 1).with_for_update())
        first_kept = (
            await self.conn.execute(select(func.min(c.seq)).where(c.at >= older_than))
        ).scalar()
        if first_kept is None:
            first_kept = (await self.conn.execute(select(func.max(c.seq)))).scalar()
            if first_kept is None:
                return 0
            first_kept += 1
        last = (
            await self.conn.execute(
                select(c.seq, c.hash).where(c.seq < first_kept).order_by(c.seq.desc()).limit(1)
            )
        ).first()
        if last is None:
            return 0
        if self._is_postgres:
            await self.conn.execute(text("SET LOCAL pse_refunds.audit_purge = 'on'"))
        result = await self.conn.execute(delete(t.audit_log).where(c.seq <= last.seq))
        await self.conn.execute(
            update(t.audit_head)
            .where(h.id == 1)
            .values(anchor_seq=last.seq, anchor_hash=last.hash, purged_at=now)
        )
        return int(result.rowcount or 0)
