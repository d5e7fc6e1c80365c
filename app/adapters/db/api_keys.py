"""API keys: stored by the hash of their secret, never the secret.

A revocation notifies every process of the service (`NOTIFY` on `CHANNEL`,
sent when its transaction commits): each one's listener drops the key from
its cache (`key_events.RevocationListener`).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from app.domain.records import ApiKey, Role

# Where revocations are announced; the payload is the revoked key's id.
CHANNEL = "pse_refunds_keys"

_COLUMNS = (
    "id",
    "name",
    "prefix",
    "roles",
    "approval_level",
    "created_at",
    "revoked_at",
    "accounts",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM api_keys"  # noqa: S608
_INSERT = (
    "INSERT INTO api_keys (id, name, key_hash, prefix, roles, approval_level, created_at, "
    "accounts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
_BY_HASH = _SELECT + " WHERE key_hash = $1"
# The revocation and its announcement, in the caller's transaction: listeners
# hear of it when (and only if) it commits.
_REVOKE = (
    "WITH revoked AS (UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL "
    "RETURNING id) SELECT pg_notify($3, id) FROM revoked"
)
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
        accounts=frozenset(accounts) if (accounts := record["accounts"]) is not None else None,
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
            sorted(key.accounts) if key.accounts is not None else None,
        )

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        record = await self.conn.fetchrow(_BY_HASH, key_hash)
        return api_key_from_record(record) if record else None

    async def revoke(self, key_id: str, at: datetime) -> bool:
        """False when there is no such key or it was revoked before. Every
        process listening on `CHANNEL` hears of it once the transaction commits."""
        return len(await self.conn.fetch(_REVOKE, key_id, at, CHANNEL)) > 0

    async def list(self) -> list[ApiKey]:
        return [api_key_from_record(record) for record in await self.conn.fetch(_LIST)]
