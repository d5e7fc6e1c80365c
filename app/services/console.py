"""Console sessions: a person signs in with an API key and gets a session.

The session's token goes to the browser once, in a cookie; the database
keeps only its hash. Every request reads the session together with its key
as stored at that moment, so a revocation (by any process) ends the session
on its next request, whatever the API's key cache still remembers.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum

from app.domain.console import ConsoleSession, Flash, SessionEnd, SessionLimits
from app.domain.records import ApiKey, Role
from app.services.context import Deps
from app.services.keys import KEY_PREFIX, hash_key

# An admin has every role (ApiKey.has_any): these two let it in as well.
CONSOLE_ROLES = (Role.APPROVER, Role.OPS)


def token_hash(token: str) -> str:
    """What the database knows of a session token. The token carries 256 bits
    of randomness: a fast hash leaves nothing to brute-force."""
    return hashlib.sha256(token.encode()).hexdigest()


class Refusal(StrEnum):
    UNKNOWN_KEY = "unknown_key"  # no such key, or revoked
    NO_CONSOLE_ROLE = "no_console_role"  # a store key


class SignInRefused(Exception):
    def __init__(self, reason: Refusal, sentence: str) -> None:
        super().__init__(sentence)
        self.reason = reason
        self.sentence = sentence


@dataclass(frozen=True, slots=True)
class SignedIn:
    key: ApiKey
    session: ConsoleSession
    token: str  # for the cookie; never stored


@dataclass(frozen=True, slots=True)
class ActiveSession:
    key: ApiKey
    session: ConsoleSession


class ConsoleService:
    def __init__(
        self,
        deps: Deps,
        limits: SessionLimits | None = None,
        *,
        touch_every: timedelta = timedelta(minutes=1),
    ) -> None:
        self.deps = deps
        self.limits = limits or SessionLimits()
        # Pages come in bursts; noting each request would be a write per
        # request. A session is thereby idle-expired up to this much early.
        self._touch_every = touch_every

    async def open(self, secret: str) -> SignedIn:
        """A new session for the key `secret`, when it may use the console.

        The key is looked up in the database, not through the API's cache: a
        key revoked a moment ago opens nothing."""
        secret = secret.strip()
        key = None
        if secret.startswith(KEY_PREFIX):
            async with self.deps.uow() as uow:
                key = await uow.api_keys.by_hash(hash_key(secret))
        if key is None or not key.active:
            self._refused(Refusal.UNKNOWN_KEY, secret)
            raise SignInRefused(
                Refusal.UNKNOWN_KEY,
                "This API key is unknown or has been revoked. Paste the whole key, "
                "starting with prk_.",
            )
        if not key.has_any(*CONSOLE_ROLES):
            self._refused(Refusal.NO_CONSOLE_ROLE, secret)
            raise SignInRefused(
                Refusal.NO_CONSOLE_ROLE,
                "This key has only the store role, which cannot sign in to the console. "
                "Sign in with an approver, ops or admin key.",
            )
        now = self.deps.clock.now()
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(
            token_hash=token_hash(token),
            api_key_id=key.id,
            created_at=now,
            last_seen_at=now,
            csrf_token=secrets.token_urlsafe(32),
        )
        async with self.deps.uow() as uow:
            # Ended sessions are cleared as people sign in: the table stays as
            # small as the number of people signed in.
            await uow.console_sessions.purge(now - self.limits.idle, now - self.limits.absolute)
            await uow.console_sessions.add(session)
            await uow.commit()
        self.deps.audit.record(
            "console.signed_in", {"key_id": key.id, "prefix": key.prefix}, actor=key.name
        )
        return SignedIn(key, session, token)

    async def resolve(
        self, token: str | None, *, take_flashes: bool = False
    ) -> ActiveSession | SessionEnd | None:
        """The session of `token` with its key, or why it ended (then it is
        removed), or None for no or an unknown token. Notes the activity;
        with `take_flashes` its messages are handed over once."""
        if not token:
            return None
        digest = token_hash(token)
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            found = await uow.console_sessions.get(digest)
            if found is None:
                return None
            session, key = found
            ended = session.ended(now, self.limits)
            if not key.active or not key.has_any(*CONSOLE_ROLES):
                ended = SessionEnd.REVOKED
            if ended is not None:
                await uow.console_sessions.delete(digest)
                await uow.commit()
                self.deps.audit.record(
                    "console.session_ended",
                    {"key_id": key.id, "reason": ended.value},
                    actor=key.name,
                )
                return ended
            clear = take_flashes and bool(session.flashes)
            if clear or now - session.last_seen_at >= self._touch_every:
                await uow.console_sessions.touch(digest, now, clear_flashes=clear)
                await uow.commit()
        if not take_flashes:
            session = replace(session, flashes=())
        return ActiveSession(key, session)

    async def flash(self, session: ConsoleSession, flash: Flash) -> None:
        """Keep `flash` for the next page the session sees."""
        async with self.deps.uow() as uow:
            await uow.console_sessions.add_flash(session.token_hash, flash)
            await uow.commit()

    async def close(self, active: ActiveSession) -> None:
        """Sign out: the session is gone, its cookie worth nothing."""
        async with self.deps.uow() as uow:
            await uow.console_sessions.delete(active.session.token_hash)
            await uow.commit()
        self.deps.audit.record(
            "console.signed_out", {"key_id": active.key.id}, actor=active.key.name
        )

    async def purge(self) -> int:
        """Remove the sessions that have ended."""
        now = self.deps.clock.now()
        async with self.deps.uow() as uow:
            removed = await uow.console_sessions.purge(
                now - self.limits.idle, now - self.limits.absolute
            )
            await uow.commit()
        return removed

    def _refused(self, reason: Refusal, secret: str) -> None:
        # The stored prefix of a key (what `keys list` shows) at most: never more of it.
        prefix = secret[: len(KEY_PREFIX) + 6] if secret.startswith(KEY_PREFIX) else None
        self.deps.audit.record(
            "console.sign_in_refused", {"reason": reason.value, "prefix": prefix}
        )
