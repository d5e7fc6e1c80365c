"""Idempotency keys as PSEs keep them: the first answer is stored and replayed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from app.sandbox.records import SandboxError


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer of the sandbox, as stored for replay."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def replayed(self) -> Answer:
        return Answer(self.status_code, self.body, {**self.headers, "Idempotent-Replayed": "true"})


def fingerprint(payload: Any) -> str:
    """The same JSON value gives the same fingerprint whatever its key order or spacing."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class _Record:
    fingerprint: str
    answer: Answer | None = None  # None while the first request is being processed


class IdempotencyStore:
    """Keys to first answers. Methods are synchronous on purpose: a check and the
    write that follows it can never be split by another request's coroutine."""

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}

    def begin(self, key: str, request_fingerprint: str) -> Answer | None:
        """Claim `key` for a new request (None) or return the stored answer to replay.

        Raises SandboxError 409 for a different body under the same key, or while
        the first request with this key has not answered yet.
        """
        record = self._records.get(key)
        if record is None:
            self._records[key] = _Record(request_fingerprint)
            return None
        if record.fingerprint != request_fingerprint:
            raise SandboxError(
                409,
                "idempotency_conflict",
                "This Idempotency-Key was used with a different request body.",
            )
        if record.answer is None:
            raise SandboxError(
                409,
                "idempotency_in_progress",
                "A request with this Idempotency-Key is still being processed.",
            )
        return record.answer

    def finish(self, key: str, answer: Answer) -> None:
        record = self._records.get(key)
        if record is not None:
            record.answer = answer

    def abandon(self, key: str) -> None:
        """Release a key whose request ended before doing anything, so a retry may run."""
        record = self._records.get(key)
        if record is not None and record.answer is None:
            del self._records[key]

    def clear(self) -> None:
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)
