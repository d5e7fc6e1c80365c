"""Idempotency-Key: the first response of a request is kept and replayed.

Most actions claim the key in its own short transaction before the work
starts, so a concurrent duplicate sees it at once (409 while in flight); a
claim whose process died is taken over after `in_flight_timeout`. Refund
creation claims it inside its own transaction instead (`claim_in`): the
claim, the refund and the answer commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.domain.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from app.domain.ports import UnitOfWork
from app.domain.records import IdempotencyRecord, IdempotencyState
from app.services.context import Deps


@dataclass(slots=True)
class IdempotencyClaim:
    api_key_id: str
    key: str
    completed: bool = False


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: bytes


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """Same method, path and JSON document → same fingerprint, whatever the spacing."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    digest = hashlib.sha256()
    digest.update(method.upper().encode() + b" " + path.encode() + b"\n")
    digest.update(canonical)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class KeyedRequest:
    """A request sent with an Idempotency-Key, as the key's record knows it."""

    api_key_id: str
    key: str
    method: str
    path: str
    fingerprint: str


class _Retry:
    """The record vanished between our insert and our read: try again."""


async def claim_in(
    uow: UnitOfWork, request: KeyedRequest, now: datetime, in_flight_timeout: timedelta
) -> IdempotencyClaim | Replay | _Retry:
    """Claim the key inside the caller's transaction, or find its first answer.

    On PostgreSQL a concurrent claim of the same key waits on the unique index
    until the first transaction ends, then sees its answer."""
    record = IdempotencyRecord(
        api_key_id=request.api_key_id,
        key=request.key,
        method=request.method,
        path=request.path,
        request_hash=request.fingerprint,
        state=IdempotencyState.STARTED,
        created_at=now,
        locked_at=now,
    )
    if await uow.idempotency.insert_if_absent(record):
        return IdempotencyClaim(request.api_key_id, request.key)
    existing = await uow.idempotency.get(request.api_key_id, request.key)
    if existing is None:
        return _Retry()
    if existing.request_hash != request.fingerprint:
        raise IdempotencyKeyReused("this Idempotency-Key was first used with a different request")
    if existing.state is IdempotencyState.COMPLETED:
        return Replay(existing.response_status or 200, existing.response_body or b"")
    if await uow.idempotency.reclaim(
        request.api_key_id, request.key, stale_before=now - in_flight_timeout, now=now
    ):
        return IdempotencyClaim(request.api_key_id, request.key)
    raise IdempotencyKeyInUse(
        "the first request with this Idempotency-Key has not finished; retry later"
    )


CONTENDED = "the Idempotency-Key is contended; retry later"


class IdempotencyService:
    def __init__(self, deps: Deps, in_flight_timeout: timedelta = timedelta(seconds=120)) -> None:
        self.deps = deps
        self.in_flight_timeout = in_flight_timeout

    async def begin(
        self, api_key_id: str, key: str, method: str, path: str, fingerprint: str
    ) -> IdempotencyClaim | Replay:
        """Claim the key in its own short transaction, so a concurrent duplicate
        sees it at once (409 while in flight)."""
        request = KeyedRequest(api_key_id, key, method, path, fingerprint)
        for _ in range(3):
            async with self.deps.uow() as uow:
                outcome = await claim_in(
                    uow, request, self.deps.clock.now(), self.in_flight_timeout
                )
                if isinstance(outcome, IdempotencyClaim):
                    await uow.commit()
                if not isinstance(outcome, _Retry):
                    return outcome
        raise IdempotencyKeyInUse(CONTENDED)

    async def complete(self, claim: IdempotencyClaim, status: int, body: bytes) -> None:
        if claim.completed:
            return
        async with self.deps.uow() as uow:
            await uow.idempotency.complete(claim.api_key_id, claim.key, status, body)
            await uow.commit()
        claim.completed = True

    async def abandon(self, claim: IdempotencyClaim) -> None:
        """The request failed without an answer worth keeping: free the key for a retry."""
        if claim.completed:
            return
        async with self.deps.uow() as uow:
            await uow.idempotency.delete(claim.api_key_id, claim.key)
            await uow.commit()
