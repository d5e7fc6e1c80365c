"""The unit of work: one pooled connection, one transaction, rolled back
unless committed.

The pool does not ping before each checkout (a ping is a round trip per
unit of work). A connection found dead when the transaction begins, or dying
during the unit of work, is thrown away and every other pooled connection is
replaced (after a database restart all of them are dead); a unit of work that
found its connection dead at the start tries once more.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Self

import asyncpg

from app.adapters.db import idempotency as idempotency_sql
from app.adapters.db import outbox as outbox_sql
from app.adapters.db import payments as payments_sql
from app.adapters.db import refunds as refunds_sql
from app.adapters.db import webhooks as webhooks_sql
from app.adapters.db.api_keys import ApiKeyRepository
from app.adapters.db.audit import AuditRepository
from app.adapters.db.auto_approvals import AutoApprovalTotals
from app.adapters.db.console_sessions import ConsoleSessionRepository
from app.adapters.db.disputes import DisputeRepository
from app.adapters.db.engine import ConnectionPool
from app.adapters.db.idempotency import IdempotencyRepository
from app.adapters.db.outbox import OutboxRepository
from app.adapters.db.payments import PaymentRepository
from app.adapters.db.reconciliation import ReconciliationRepository
from app.adapters.db.refunds import RefundRepository
from app.adapters.db.statements import Write, in_one_round_trip
from app.adapters.db.webhooks import WebhookRepository
from app.domain import ports
from app.domain.models import Payment, Refund
from app.domain.ports import WebhookStoredBefore
from app.domain.records import (
    KeptAnswer,
    OutboxEvent,
    StoredWebhook,
    WaitingFor,
    WebhookOutcome,
)

# What a connection that is no longer there (or no longer usable: the server
# ended its session while it sat in the pool) raises.
_DEAD_CONNECTION = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
)


@functools.cache
def _save_statement(
    new: bool,
    with_payment: bool,
    with_approvals: bool,
    answer: bool,
    mark: Write | None,
    waiting: bool,
) -> str:
    """A refund's change with its new history and approvals, its payment's
    counters, the answer kept for its request's key, the outcome of the
    webhook applied to it (`mark`: written to the stored event, or the event
    stored with it), its new events and the stored webhooks waiting for it,
    in one statement (one per combination in use)."""
    return in_one_round_trip(
        refunds_sql.INSERT if new else refunds_sql.UPDATE,
        refunds_sql.APPEND_HISTORY,
        *((refunds_sql.APPEND_APPROVALS,) if with_approvals else ()),
        *((payments_sql.COUNTERS_UPDATE,) if with_payment else ()),
        *((idempotency_sql.COMPLETE,) if answer else ()),
        *((mark,) if mark is not None else ()),
        outbox_sql.APPEND,
        *((webhooks_sql.WAITING_FOR,) if waiting else ()),
    )


def _only_if_written(write: Write) -> Write:
    """`write` (an INSERT … SELECT … ORDER BY) limited to a statement whose
    first piece, `w0`, wrote its row."""
    head, order = write.sql.rsplit(" ORDER BY ", 1)
    assert " WHERE " not in head, write.sql
    sql = f"{head} WHERE EXISTS (SELECT 1 FROM w0) ORDER BY {order}"  # noqa: S608 (constants)
    return Write(sql, write.parameters)


@functools.cache
def _unchanged_statement(waiting: bool) -> str:
    """A refund's change if its row still holds what was read, with its new
    history and events only then, and the stored webhooks waiting for it: no
    row when nothing was written; with `waiting`, one row of NULLs when it
    wrote and no webhook waits."""
    found = (
        Write(f"SELECT w.* FROM w0 LEFT JOIN LATERAL ({webhooks_sql.WAITING_FOR.sql}) w ON true", 4)  # noqa: S608
        if waiting
        else Write("SELECT id FROM w0", 0)
    )
    return in_one_round_trip(
        refunds_sql.UPDATE_IF_UNCHANGED,
        _only_if_written(refunds_sql.APPEND_HISTORY),
        _only_if_written(outbox_sql.APPEND),
        found,
    )


class TransactionAborted(Exception):
    """COMMIT found the transaction failed by an earlier error: nothing was written."""


class PgUnitOfWork:
    # Typed as the ports: each repository is checked against its port here.
    payments: ports.PaymentRepository
    refunds: ports.RefundRepository
    disputes: ports.DisputeRepository
    outbox: ports.OutboxRepository
    idempotency: ports.IdempotencyRepository
    webhooks: ports.WebhookRepository
    api_keys: ports.ApiKeyRepository
    auto_approvals: ports.AutoApprovalTotals
    reconciliations: ports.ReconciliationRepository
    audit: ports.AuditRepository
    console_sessions: ports.ConsoleSessionRepository

    def __init__(self, pool: ConnectionPool, *, single_statement: bool = False) -> None:
        self._pool = pool
        # One statement, committed by itself: no BEGIN, no COMMIT.
        self._single = single_statement
        self._conn: asyncpg.Connection | None = None
        self._committed = False
        self._after_commit: list[Callable[[], None]] = []
        self._before_commit: list[Callable[[], Awaitable[None]]] = []

    async def __aenter__(self) -> Self:
        try:
            conn = await self._begin()
        except _DEAD_CONNECTION:
            # Stale after a database restart: so is every connection pooled
            # before it. All replaced, and one more try.
            await self._pool.expire_connections()
            conn = await self._begin()
        self._conn = conn
        self.payments = PaymentRepository(conn)
        self.refunds = RefundRepository(conn)
        self.disputes = DisputeRepository(conn)
        self.outbox = OutboxRepository(conn)
        self.idempotency = IdempotencyRepository(conn)
        self.webhooks = WebhookRepository(conn)
        self.api_keys = ApiKeyRepository(conn)
        self.auto_approvals = AutoApprovalTotals(conn)
        self.reconciliations = ReconciliationRepository(conn)
        self.audit = AuditRepository(conn)
        self.console_sessions = ConsoleSessionRepository(conn)
        return self

    async def _begin(self) -> asyncpg.Connection:
        conn = await self._pool.connection()
        if self._single:
            return conn
        try:
            await conn.execute("BEGIN")
        except BaseException:
            # Dead, or cancelled half-way: in no state to be pooled again.
            self._pool.discard(conn)
            await self._pool.release(conn)
            raise
        return conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self._committed and not self._single:
                await self._roll_back(conn)
        finally:
            await self._pool.release(conn)

    async def _roll_back(self, conn: asyncpg.Connection) -> None:
        try:
            await conn.execute("ROLLBACK")
        except Exception:
            # The connection died during the unit of work: it is not reused,
            # and neither is any other connection pooled from before. Whatever
            # the block raised (the server ending the session, say) is what the
            # caller sees, never an error of this clean-up.
            self._pool.discard(conn)
            await self._pool.expire_connections()
        except BaseException:
            self._pool.discard(conn)
            raise

    async def commit(self) -> None:
        assert self._conn is not None, "commit outside the unit of work"
        steps, self._before_commit = self._before_commit, []
        for step in steps:
            await step()
        # PostgreSQL answers COMMIT of a failed transaction with ROLLBACK, not an error.
        if not self._single and await self._conn.execute("COMMIT") == "ROLLBACK":
            raise TransactionAborted("the transaction failed before COMMIT; nothing was written")
        self._committed = True
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transaction has committed (never if it rolls back)."""
        self._after_commit.append(callback)

    def before_commit(self, step: Callable[[], Awaitable[None]]) -> None:
        """Await `step` in the transaction just before COMMIT; what it raises
        aborts the commit."""
        self._before_commit.append(step)

    async def save_refund(
        self,
        refund: Refund,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        new: bool = False,
        answer: KeptAnswer | None = None,
        webhook: WebhookOutcome | None = None,
        waiting: WaitingFor | None = None,
    ) -> list[StoredWebhook]:
        """Write a new or changed refund with its new history entries and
        approvals, its payment's counters (when they moved; the payment's row
        lock is all the transaction needed of it otherwise), the answer kept
        for the key of the request that made it (`answer`: its claim must be
        in this transaction), the outcome of the webhook applied to it
        (`webhook`: WebhookStoredBefore when it is a received event stored before,
        and the transaction must be abandoned) and its new events, and read
        the stored webhooks `waiting` names (none without it): one statement."""
        assert self._conn is not None, "save_refund outside the unit of work"
        with_payment = payments_sql.counters_moved(payment)
        with_approvals = refunds_sql.has_new_approvals(refund)
        args = refunds_sql.insert_args(refund) if new else refunds_sql.update_args(refund)
        args += refunds_sql.history_args(refund)
        if with_approvals:
            args += refunds_sql.approvals_args(refund)
        if with_payment:
            args += payments_sql.counters_args(payment)
        if answer is not None:
            args += idempotency_sql.complete_args(answer)
        if webhook is not None:
            args += webhooks_sql.outcome_args(webhook)
        args += outbox_sql.append_args(events, deliver)
        statement = _save_statement(
            new,
            with_payment,
            with_approvals,
            answer is not None,
            None if webhook is None else webhooks_sql.outcome_write(webhook),
            waiting is not None,
        )
        found: list[StoredWebhook] = []
        try:
            if waiting is None:
                await self._conn.execute(statement, *args)
            else:
                args += webhooks_sql.waiting_args(waiting)
                records = await self._conn.fetch(statement, *args)
                found = [webhooks_sql.webhook_from_record(record) for record in records]
        except asyncpg.UniqueViolationError as exc:
            if webhook is None or exc.constraint_name != webhooks_sql.UNIQUE_EVENT:
                raise
            raise WebhookStoredBefore(webhooks_sql.event_name(webhook)) from exc
        refunds_sql.mark_stored(refund)
        payments_sql.mark_stored(payment)
        return found

    async def save_refund_if_unchanged(
        self,
        refund: Refund,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        read: Refund,
        waiting: WaitingFor | None = None,
    ) -> list[StoredWebhook] | None:
        """Write a refund's change decided without its lock, its new history
        entries and events, if its row still holds what `read` (the refund
        as it was read) holds, and read the stored webhooks `waiting` names:
        one statement. None, with nothing written, when the row moved since.
        The payment's counters must not have moved, nor approvals been added:
        what those need is the lock."""
        assert self._conn is not None, "save_refund_if_unchanged outside the unit of work"
        assert not payments_sql.counters_moved(payment), "counters move under the lock"
        assert not refunds_sql.has_new_approvals(refund), "approvals are added under the lock"
        args = [*refunds_sql.update_args(refund), *refunds_sql.stored_values(read)]
        args += refunds_sql.history_args(refund)
        args += outbox_sql.append_args(events, deliver)
        if waiting is not None:
            args += webhooks_sql.waiting_args(waiting)
        records = await self._conn.fetch(_unchanged_statement(waiting is not None), *args)
        if not records:
            return None
        refunds_sql.mark_stored(refund)
        if waiting is None:
            return []
        return [webhooks_sql.webhook_from_record(r) for r in records if r["id"] is not None]


class UnitOfWorkFactory:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def __call__(self) -> PgUnitOfWork:
        return PgUnitOfWork(self.pool)

    def single_statement(self) -> PgUnitOfWork:
        """A unit of work of one statement, which commits by itself (no
        BEGIN, no COMMIT: two round trips fewer). `commit()` then only runs
        what waits for the commit. For one write whose statement is the whole
        change, such as `save_refund_if_unchanged`."""
        return PgUnitOfWork(self.pool, single_statement=True)
