"""The unit of work: one database transaction, rolled back unless committed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.adapters.db.pg import (
    PgAuditRepository,
    PgIdempotencyRepository,
    PgPaymentRepository,
    PgRefundRepository,
    PgWebhookRepository,
)
from app.adapters.db.repositories import (
    SqlApiKeyRepository,
    SqlAuditRepository,
    SqlAutoApprovalTotals,
    SqlIdempotencyRepository,
    SqlOutboxRepository,
    SqlPaymentRepository,
    SqlReconciliationRepository,
    SqlRefundRepository,
    SqlWebhookRepository,
)
from app.domain.models import Payment, Refund
from app.domain.records import OutboxEvent


class SqlUnitOfWork:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._committed = False
        self._after_commit: list[Callable[[], None]] = []

    async def __aenter__(self) -> Self:
        self._conn = await self._engine.connect()
        try:
            await self._begin(self._conn)
        except BaseException:
            await self._conn.close()
            self._conn = None
            raise
        return self

    async def _begin(self, conn: AsyncConnection) -> None:
        await conn.begin()
        self._repositories(conn)

    def _repositories(self, conn: AsyncConnection) -> None:
        self.payments = SqlPaymentRepository(conn)
        self.refunds = SqlRefundRepository(conn)
        self.outbox = SqlOutboxRepository(conn)
        self.idempotency = SqlIdempotencyRepository(conn)
        self.webhooks = SqlWebhookRepository(conn)
        self.api_keys = SqlApiKeyRepository(conn)
        self.auto_approvals = SqlAutoApprovalTotals(conn)
        self.reconciliations = SqlReconciliationRepository(conn)
        self.audit = SqlAuditRepository(conn)

    async def _rollback(self, conn: AsyncConnection) -> None:
        await conn.rollback()

    async def _commit(self, conn: AsyncConnection) -> None:
        await conn.commit()

    async def __aexit__(self, *exc: object) -> None:
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        try:
            if not self._committed:
                await self._rollback(conn)
        finally:
            await conn.close()

    async def commit(self) -> None:
        assert self._conn is not None, "commit outside the unit of work"
        await self._commit(self._conn)
        self._committed = True
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    async def save_refund(
        self,
        refund: Refund,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        new: bool = False,
    ) -> None:
        """Write a new or changed refund, its payment's counters and its new events."""
        if new:
            await self.refunds.add(refund)
        else:
            await self.refunds.update(refund)
        await self.payments.update(payment)
        await self.outbox.add(events, deliver=deliver)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transaction has committed (never if it rolls back)."""
        self._after_commit.append(callback)


class PgUnitOfWork(SqlUnitOfWork):
    """On PostgreSQL the transaction is asyncpg's own (see app.adapters.db.pg):
    SQLAlchemy runs in autocommit mode inside it, the hot repositories run
    prepared statements on the driver, both on the one connection.

    The pool does not ping before each checkout. A connection found dead when
    the transaction begins, or dying during the unit of work, is thrown away
    with the whole pool (after a database restart every pooled connection is
    dead); a unit of work that found it dead at its start tries once more."""

    _tx: Any = None
    _raw: Any = None

    async def __aenter__(self) -> Self:
        try:
            return await super().__aenter__()
        except _DEAD_CONNECTION:
            # Stale after a database restart: so is every connection pooled
            # before it. A new pool, and one more try.
            await self._engine.dispose()
            return await super().__aenter__()

    async def _begin(self, conn: AsyncConnection) -> None:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        raw = (await conn.get_raw_connection()).driver_connection
        self._raw = raw
        tx = raw.transaction()
        try:
            await tx.start()
        except _DEAD_CONNECTION:
            await conn.invalidate()
            raise
        self._tx = tx
        self._repositories(conn)
        self.payments = payments = PgPaymentRepository(conn, raw)
        self.refunds = refunds = PgRefundRepository(conn, raw)
        refunds.payments = payments
        self.idempotency = PgIdempotencyRepository(conn, raw)
        self.webhooks = PgWebhookRepository(conn, raw)
        self.audit = PgAuditRepository(conn, raw)

    async def save_refund(
        self,
        refund: Refund,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        new: bool = False,
    ) -> None:
        """One statement for the refund, its history, its payment and its events."""
        await self.refunds.save_with(refund, payment, events, deliver=deliver, new=new)

    async def _rollback(self, conn: AsyncConnection) -> None:
        try:
            await self._tx.rollback()
        except Exception:  # a connection that cannot roll back is not reused
            await conn.invalidate()
            await self._engine.dispose()
            return
        if self._raw.is_closed():
            await conn.invalidate()
            await self._engine.dispose()

    async def _commit(self, conn: AsyncConnection) -> None:
        await self._tx.commit()


# What a connection that is no longer there (or no longer usable: the server
# ended its session while it sat in the pool) raises.
_DEAD_CONNECTION = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)


class SqlUnitOfWorkFactory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._kind = PgUnitOfWork if engine.dialect.name == "postgresql" else SqlUnitOfWork

    def __call__(self) -> SqlUnitOfWork:
        return self._kind(self.engine)
