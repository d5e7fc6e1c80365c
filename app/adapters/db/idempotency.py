"""Idempotency keys: a request's claim, then its kept answer."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.adapters.db.statements import Write, rows_affected
from app.domain.records import IdempotencyRecord, IdempotencyState, KeptAnswer

# Two requests with one key race on the primary key: the loser's insert does
# nothing (it waits for the winner's transaction first), and it reads the
# winner's claim instead.
_INSERT_IF_ABSENT = (
    "INSERT INTO idempotency_keys (api_key_id, key, method, path, request_hash, state, "
    "created_at, locked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
)
_GET = (
    "SELECT api_key_id, key, method, path, request_hash, state, created_at, locked_at, "
    "response_status, response_body FROM idempotency_keys WHERE api_key_id = $1 AND key = $2"
)
# A claim whose request stopped (its process died) may be taken over.
_RECLAIM = (
    "UPDATE idempotency_keys SET locked_at = $5 WHERE api_key_id = $1 AND key = $2 "
    "AND state = $3 AND (locked_at IS NULL OR locked_at < $4)"
)
# The kept answer; also written in one statement with the refund it answers
# (PgUnitOfWork.save_refund).
COMPLETE = Write(
    "UPDATE idempotency_keys SET state = $3, response_status = $4, response_body = $5, "
    "locked_at = NULL WHERE api_key_id = $1 AND key = $2",
    5,
)
_COMPLETE = COMPLETE.sql
_DELETE = "DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2"
_PURGE = "DELETE FROM idempotency_keys WHERE created_at < $1 AND state = $2"


def complete_args(answer: KeptAnswer) -> tuple[object, ...]:
    return (
        answer.api_key_id,
        answer.key,
        IdempotencyState.COMPLETED.value,
        answer.status,
        answer.body,
    )


def idempotency_from_record(record: asyncpg.Record) -> IdempotencyRecord:
    return IdempotencyRecord(
        api_key_id=record["api_key_id"],
        key=record["key"],
        method=record["method"],
        path=record["path"],
        request_hash=record["request_hash"],
        state=IdempotencyState(record["state"]),
        created_at=record["created_at"],
        locked_at=record["locked_at"],
        response_status=record["response_status"],
        response_body=record["response_body"],
    )


class IdempotencyRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def insert_if_absent(self, record: IdempotencyRecord) -> bool:
        status = await self.conn.execute(
            _INSERT_IF_ABSENT,
            record.api_key_id,
            record.key,
            record.method,
            record.path,
            record.request_hash,
            record.state.value,
            record.created_at,
            record.locked_at,
        )
        return rows_affected(status) > 0

    async def get(self, api_key_id: str, key: str) -> IdempotencyRecord | None:
        record = await self.conn.fetchrow(_GET, api_key_id, key)
        return idempotency_from_record(record) if record else None

    async def reclaim(
        self, api_key_id: str, key: str, *, stale_before: datetime, now: datetime
    ) -> bool:
        status = await self.conn.execute(
            _RECLAIM, api_key_id, key, IdempotencyState.STARTED.value, stale_before, now
        )
        return rows_affected(status) > 0

    async def complete(self, api_key_id: str, key: str, status: int, body: bytes) -> None:
        answer = KeptAnswer(api_key_id, key, status, body)
        await self.conn.execute(_COMPLETE, *complete_args(answer))

    async def delete(self, api_key_id: str, key: str) -> None:
        await self.conn.execute(_DELETE, api_key_id, key)

    async def purge(self, created_before: datetime) -> int:
        status = await self.conn.execute(_PURGE, created_before, IdempotencyState.COMPLETED.value)
        return rows_affected(status)
