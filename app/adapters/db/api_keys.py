"""API keys: stored by the hash of their secret, never the secret."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.adapters.db.statements import rows_affected
from app.domain.records import ApiKey, Role

_COLUMNS = ("id", "name", "prefix", "roles", "approval_level", "created_at", "revoked_at")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM api_keys"  # noqa: S608
_INSERT = (
    "INSERT INTO api_keys (id, name, key_hash, prefix, roles, approval_level, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
_BY_HASH = _SELECT + " WHERE key_hash = $1"
_REVOKE = "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL"
_LIST = _SELECT + " ORDER BY created_at"


def api_key_from_record(record: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=record["id"],
        name=record["name"],
        prefix=record["prefix"],
        roles=frozenset(Role(role) for role in record["roles"]),
        approval_level=record["approval_level"],
        created_at=record["created_at"],
        revoked_at=record["revoked_at"],
    )


class ApiKeyRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(self, key: ApiKey, key_hash: str) -> None:
        await self.conn.execute(
            _INSERT,
            key.id,
            key.name,
            key_hash,
            key.prefix,
            sorted(role.value for role in key.roles),
            key.approval_level,
            key.created_at,
        )

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        record = await self.conn.fetchrow(_BY_HASH, key_hash)
        return api_key_from_record(record) if record else None

    async def revoke(self, key_id: str, at: datetime) -> bool:
        """False when there is no such key or it was revoked before."""
        return rows_affected(await self.conn.execute(_REVOKE, key_id, at)) > 0

    async def list(self) -> list[ApiKey]:
        return [api_key_from_record(record) for record in await self.conn.fetch(_LIST)]
