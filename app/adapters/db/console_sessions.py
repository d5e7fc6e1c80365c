"""Console sessions: stored by the hash of their token, read with their key."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.adapters.db.api_keys import api_key_from_record
from app.adapters.db.statements import rows_affected
from app.domain.console import ConsoleSession, Flash
from app.domain.records import ApiKey

_INSERT = (
    "INSERT INTO console_sessions (token_hash, api_key_id, created_at, last_seen_at, csrf_token) "
    "VALUES ($1, $2, $3, $4, $5)"
)
# The key is read with the session, in the same statement, on every request:
# a revocation made by any process is seen by the next request.
_GET = (
    "SELECT s.token_hash, s.api_key_id, s.created_at AS session_created_at, s.last_seen_at, "
    "s.csrf_token, s.flashes, k.id, k.name, k.prefix, k.roles, k.approval_level, "
    "k.created_at, k.revoked_at, k.accounts "
    "FROM console_sessions s JOIN api_keys k ON k.id = s.api_key_id WHERE s.token_hash = $1"
)
_TOUCH = "UPDATE console_sessions SET last_seen_at = $2 WHERE token_hash = $1"
_TOUCH_AND_CLEAR = (
    "UPDATE console_sessions SET last_seen_at = $2, flashes = NULL WHERE token_hash = $1"
)
_ADD_FLASH = (
    "UPDATE console_sessions SET flashes = COALESCE(flashes, '[]'::jsonb) || $2::jsonb "
    "WHERE token_hash = $1"
)
_DELETE = "DELETE FROM console_sessions WHERE token_hash = $1"
_DELETE_FOR_KEY = "DELETE FROM console_sessions WHERE api_key_id = $1"
_PURGE = "DELETE FROM console_sessions WHERE last_seen_at < $1 OR created_at < $2"


def _flashes(items: object) -> tuple[Flash, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(Flash.from_dict(item) for item in items if isinstance(item, dict))


def _session_from_record(record: asyncpg.Record) -> ConsoleSession:
    return ConsoleSession(
        token_hash=record["token_hash"],
        api_key_id=record["api_key_id"],
        created_at=record["session_created_at"],
        last_seen_at=record["last_seen_at"],
        csrf_token=record["csrf_token"],
        flashes=_flashes(record["flashes"]),
    )


class ConsoleSessionRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(self, session: ConsoleSession) -> None:
        await self.conn.execute(
            _INSERT,
            session.token_hash,
            session.api_key_id,
            session.created_at,
            session.last_seen_at,
            session.csrf_token,
        )

    async def get(self, token_hash: str) -> tuple[ConsoleSession, ApiKey] | None:
        record = await self.conn.fetchrow(_GET, token_hash)
        if record is None:
            return None
        return _session_from_record(record), api_key_from_record(record)

    async def touch(self, token_hash: str, at: datetime, *, clear_flashes: bool) -> None:
        await self.conn.execute(_TOUCH_AND_CLEAR if clear_flashes else _TOUCH, token_hash, at)

    async def add_flash(self, token_hash: str, flash: Flash) -> None:
        # The pool's codec turns Python values into JSON.
        await self.conn.execute(_ADD_FLASH, token_hash, [flash.as_dict()])

    async def delete(self, token_hash: str) -> bool:
        return rows_affected(await self.conn.execute(_DELETE, token_hash)) > 0

    async def delete_for_key(self, api_key_id: str) -> int:
        return rows_affected(await self.conn.execute(_DELETE_FOR_KEY, api_key_id))

    async def purge(self, idle_before: datetime, created_before: datetime) -> int:
        return rows_affected(await self.conn.execute(_PURGE, idle_before, created_before))
