"""API keys: created with a secret shown once, stored only as a SHA-256 hash.

Keys carry 256 bits of randomness, so a fast hash is enough: there is
nothing to brute-force that a slow hash would protect.

A key may be scoped to PSE accounts (`accounts`): it then sees and acts on
their payments, refunds, events and audit records only (the services
answer "not found" for the rest, as for an unknown id).

Authenticated keys are cached briefly, but only while this process hears of
every revocation (`follow_revocations`, told by the listener on the
database's revocation channel); otherwise each request reads its key from the
database. A revocation thus takes effect in every process at once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable, Mapping

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
        # database round trip to know its caller; only while revocations are
        # heard (`follow_revocations`), each dropping its key at once. The
        # expiry bounds what a connection broken without a word could cost.
        self._cache: dict[str, tuple[ApiKey, float]] = {}
        self._cache_seconds = cache_seconds
        self._trusted = False
        # Moves on every revocation heard and every change of trust: a key read
        # from the database before either is not cached after it.
        self._generation = 0

    # -- revocations heard from every process -------------------------------------

    @property
    def trusts_cache(self) -> bool:
        """Whether authenticated keys are cached (revocations are being heard)."""
        return self._trusted

    def follow_revocations(self, listening: bool) -> None:
        """The listener is (True) or is no longer (False) hearing every
        revocation. Either way what is cached is forgotten: revocations made
        while nobody listened were not heard."""
        self._trusted = listening
        self._generation += 1
        self._cache.clear()

    def revoked(self, key_id: str) -> None:
        """A key was revoked (by this process or another): forget it now."""
        self._generation += 1
        self._forget(key_id)

    def _forget(self, key_id: str) -> None:
        self._cache = {h: entry for h, entry in self._cache.items() if entry[0].id != key_id}

    def cached(self, key_id: str) -> bool:
        """Whether the key is remembered (tests)."""
        return any(entry[0].id == key_id for entry in self._cache.values())

    # -- keys ---------------------------------------------------------------------

    async def create(
        self,
        name: str,
        roles: Iterable[str],
        approval_level: int | None = None,
        accounts: Iterable[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key; with `accounts`, scoped to those configured PSE accounts."""
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
        scope = _scope(accounts, self.deps.accounts)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_id("key"),
            name=name,
            prefix=secret[: len(KEY_PREFIX) + 6],
            roles=role_set,
            approval_level=approval_level,
            created_at=self.deps.clock.now(),
            accounts=scope,
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
                "accounts": sorted(scope) if scope is not None else None,
            },
        )
        return key, secret

    async def revoke(self, key_id: str) -> None:
        """Revoke the key, and end its console sessions in the same transaction:
        nobody is left signed in with a key that no longer opens anything.
        Every process listening for revocations hears of it as it commits."""
        async with self.deps.uow() as uow:
            revoked = await uow.api_keys.revoke(key_id, self.deps.clock.now())
            sessions_ended = await uow.console_sessions.delete_for_key(key_id)
            await uow.commit()
        self.revoked(key_id)
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
        if self._trusted:
            cached = self._cache.get(digest)
            if cached is not None and cached[1] > now:
                return cached[0]
        generation = self._generation
        async with self.deps.uow() as uow:
            key = await uow.api_keys.by_hash(digest)
        if key is None or not key.active:
            self._cache.pop(digest, None)
            return None
        # Not when a revocation was heard (or trust changed) while the key was
        # read: what was read may be from before it.
        if self._trusted and generation == self._generation:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (key, now + self._cache_seconds)
        return key

    async def list(self) -> list[ApiKey]:
        async with self.deps.uow() as uow:
            return await uow.api_keys.list()


def _scope(
    accounts: Iterable[str] | None, configured: Mapping[str, object]
) -> frozenset[str] | None:
    """The accounts a new key is scoped to (None: every account), each one a
    configured PSE account."""
    if accounts is None:
        return None
    names = frozenset(name.strip() for name in accounts)
    if not names:
        raise InvalidInput("a scoped key needs at least one PSE account")
    unknown = sorted(names - configured.keys())
    if unknown:
        known = ", ".join(sorted(configured)) or "none"
        listed = ", ".join(repr(name) for name in unknown)
        raise InvalidInput(
            f"no PSE account named {listed} is configured (the configured accounts: {known})"
        )
    return names
