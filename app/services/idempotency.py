"""Idempotency-Key: the first response of a request is kept and replayed.

A key is claimed in its own short transaction before the work starts, so a
concurrent duplicate sees it at once (409 while in flight). A claim whose
process died is taken over after `in_flight_timeout`: the work it guarded
had not committed (a refund completes its claim in its own transaction).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from app.domain.errors import IdempotencyKeyInUse, IdempotencyKeyReused
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


class IdempotencyService:
    def __init__(self, deps: Deps, in_flight_timeout: timedelta = timedelta(seconds=120)) -> None:
        self.deps = deps
        self.in_flight_timeout = in_flight_timeout

    async def begin(
        self, api_key_id: str, key: str, method: str, path: str, fingerprint: str
    ) -> IdempotencyClaim | Replay:
        for _ in range(3):
            now = self.deps.clock.now()
            async with self.deps.uow() as uow:
                record = IdempotencyRecord(
                    api_key_id=api_key_id,
                    key=key,
                    method=method,
                    path=path,
                    request_hash=fingerprint,
                    state=IdempotencyState.STARTED,
                    created_at=now,
                    locked_at=now,
                )
                if await uow.idempotency.insert_if_absent(record):
                    await uow.commit()
                    return IdempotencyClaim(api_key_id, key)
                existing = await uow.idempotency.get(api_key_id, key)
                if existing is None:
                    continue  # abandoned between our insert and read: try again
                if existing.request_hash != fingerprint:
                    raise IdempotencyKeyReused(
                        "this Idempotency-Key was first used with a different request"
                    )
                if existing.state is IdempotencyState.COMPLETED:
                    return Replay(existing.response_status or 200, existing.response_body or b"")
                if await uow.idempotency.reclaim(
                    api_key_id, key, stale_before=now - self.in_flight_timeout, now=now
                ):
                    await uow.commit()
                    return IdempotencyClaim(api_key_id, key)
                raise IdempotencyKeyInUse(
                    "the first request with this Idempotency-Key has not finished; retry later"
                )
        raise IdempotencyKeyInUse("the Idempotency-Key is contended; retry later")

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
