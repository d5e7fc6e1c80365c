"""API keys: created with a secret shown once, stored only as a SHA-256 hash.

Keys carry 256 bits of randomness, so a fast hash is enough: there is
nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable

from app.domain.errors import InvalidInput, NotFound
from app.domain.records import ApiKey, Role
from app.services.context import Deps
from app.services.ids import new_id

KEY_PREFIX = "prk_"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyService:
    def __init__(self, deps: Deps, cache_seconds: float = 5.0) -> None:
        self.deps = deps
        # Authenticated keys are remembered briefly, so a request does not pay a
        # database round trip to know its caller. A revocation is immediate in
        # the process that makes it and takes at most `cache_seconds` elsewhere.
        self._cache: dict[str, tuple[ApiKey, float]] = {}
        self._cache_seconds = cache_seconds

    async def create(
        self, name: str, roles: Iterable[str], approval_level: int | None = None
    ) -> tuple[ApiKey, str]:
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidInput("a key needs a name of 1 to 200 characters")
        try:
            role_set = frozenset(Role(r) for r in roles)
        except ValueError:
            allowed = ", ".join(r.value for r in Role)
            raise InvalidInput(f"roles must be among: {allowed}") from None
        if not role_set:
            raise InvalidInput("a key needs at least one role")
        if approval_level is not None and approval_level not in (1, 2, 3):
            raise InvalidInput("approval_level must be 1, 2 or 3")
        if Role.APPROVER in role_set and approval_level is None:
            raise InvalidInput("an approver key needs an approval level (1, 2 or 3)")
        if approval_level is not None and not role_set & {Role.APPROVER, Role.ADMIN}:
            raise InvalidInput("approval_level only applies to approver or admin keys")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_id("key"),
            name=name,
            prefix=secret[: len(KEY_PREFIX) + 6],
            roles=role_set,
            approval_level=approval_level,
            created_at=self.deps.clock.now(),
        )
        async with self.deps.uow() as uow:
            await uow.api_keys.add(key, hash_key(secret))
            await uow.commit()
        self.deps.audit.record(
            "key.created",
            {
                "key_id": key.id,
                "name": key.name,
                "prefix": key.prefix,
                "roles": sorted(r.value for r in key.roles),
                "approval_level": key.approval_level,
            },
        )
        return key, secret

    async def revoke(self, key_id: str) -> None:
        """Revoke the key, and end its console sessions in the same transaction:
        nobody is left signed in with a key that no longer opens anything."""
        async with self.deps.uow() as uow:
            revoked = await uow.api_keys.revoke(key_id, self.deps.clock.now())
            sessions_ended = await uow.console_sessions.delete_for_key(key_id)
            await uow.commit()
        self._cache = {h: entry for h, entry in self._cache.items() if entry[0].id != key_id}
        if not revoked:
            raise NotFound(f"no active key {key_id}")
        self.deps.audit.record(
            "key.revoked", {"key_id": key_id, "console_sessions_ended": sessions_ended}
        )

    async def authenticate(self, secret: str) -> ApiKey | None:
        if not secret.startswith(KEY_PREFIX):
            return None
        digest = hash_key(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.deps.uow() as uow:
            key = await uow.api_keys.by_hash(digest)
        if key is None or not key.active:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (key, now + self._cache_seconds)
        return key

    async def list(self) -> list[ApiKey]:
        async with self.deps.uow() as uow:
            return await uow.api_keys.list()
