"""The unit of work: one database transaction, rolled back unless committed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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


class SqlUnitOfWork:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._committed = False
        self._after_commit: list[Callable[[], None]] = []

    async def __aenter__(self) -> Self:
        self._conn = await self._engine.connect()
        await self._conn.begin()
        conn = self._conn
        self.payments = SqlPaymentRepository(conn)
        self.refunds = SqlRefundRepository(conn)
        self.outbox = SqlOutboxRepository(conn)
        self.idempotency = SqlIdempotencyRepository(conn)
        self.webhooks = SqlWebhookRepository(conn)
        self.api_keys = SqlApiKeyRepository(conn)
        self.auto_approvals = SqlAutoApprovalTotals(conn)
        self.reconciliations = SqlReconciliationRepository(conn)
        self.audit = SqlAuditRepository(conn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        try:
            if not self._committed:
                await conn.rollback()
        finally:
            await conn.close()

    async def commit(self) -> None:
        assert self._conn is not None, "commit outside the unit of work"
        await self._conn.commit()
        self._committed = True
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transaction has committed (never if it rolls back)."""
        self._after_commit.append(callback)


class SqlUnitOfWorkFactory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)
