"""The audit trail: what the service noted, sealed in a hash chain.

Recording is cheap on the request path: an entry is redacted and appended to
an in-memory buffer; a background task seals buffered entries in batches,
one short transaction each, under the chain head's lock. Shutdown flushes
what is buffered. (A process killed outright loses at most the entries of
its last fraction of a second; refund state changes stay in the refunds'
own history either way.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from app.domain.audit import AuditEntry, AuditRecord, Break, check
from app.domain.ports import (
    Clock,
    UnitOfWork,
)
from app.domain.records import AccountScope
from app.redaction import Redactor

log = structlog.get_logger("app.audit")


@dataclass(frozen=True, slots=True)
class Verification:
    checked: int
    first_seq: int
    last_seq: int
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None


class AuditService:
    def __init__(
        self,
        uow: Callable[[], UnitOfWork],
        clock: Clock,
        redactor: Redactor,
        *,
        enabled: bool = True,
        flush_interval_seconds: float = 0.2,
        batch_size: int = 500,
        refusals_per_minute: int = 60,
    ) -> None:
        self._uow = uow
        self._refusals_per_minute = refusals_per_minute
        self._refusal_window = 0.0
        self._refusals = 0
        self._suppressed = 0
        self._clock = clock
        self.redactor = redactor
        self.enabled = enabled
        self._interval = flush_interval_seconds
        self._batch = batch_size
        self._buffer: list[AuditEntry] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # -- recording (the hot path) --------------------------------------------

    def record(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        refund_id: str | None = None,
        payment_id: str | None = None,
        actor: str | None = None,
        request_id: str | None = None,
    ) -> None:
        if not self.enabled:
            return
        context = structlog.contextvars.get_contextvars()
        via = context.get("via")
        if via is not None and "via" not in data:
            # The edge a request came through (the console binds "console"):
            # whatever the service notes for that request says so.
            data = {**data, "via": via}
        self._buffer.append(
            AuditEntry(
                at=self._clock.now(),
                kind=kind,
                data=self.redactor.value(data),
                request_id=request_id or context.get("request_id"),
                refund_id=refund_id or context.get("refund_id"),
                payment_id=payment_id or context.get("payment_id"),
                actor=actor,
            )
        )
        if len(self._buffer) >= self._batch:
            self._wake.set()

    def record_refusal(self, kind: str, summary: dict[str, Any]) -> bool:
        """Note a request refused before anyone was known to have sent it (no
        valid key, no valid signature), as the small `summary` given, never its
        body: strangers must not fill the audit log. At most
        `refusals_per_minute` such entries a minute in this process; the rest
        are counted in the next entry's `suppressed`. True when recorded."""
        now = time.monotonic()
        if now - self._refusal_window >= 60:
            self._refusal_window, self._refusals = now, 0
        if self._refusals >= self._refusals_per_minute:
            self._suppressed += 1
            return False
        self._refusals += 1
        if self._suppressed:
            summary = {**summary, "suppressed": self._suppressed}
            self._suppressed = 0
        self.record(kind, summary)
        return True

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> int:
        """Seal everything buffered so far."""
        sealed = 0
        async with self._lock:
            while self._buffer:
                batch, self._buffer = self._buffer[: self._batch], self._buffer[self._batch :]
                try:
                    async with self._uow() as uow:
                        await uow.audit.append(batch)
                        await uow.commit()
                except Exception:
                    self._buffer[:0] = batch  # keep them for the next flush
                    raise
                sealed += len(batch)
        return sealed

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every `flush_interval_seconds` (or when a batch is full) until stopped."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("audit.flush_failed", buffered=len(self._buffer))
                await asyncio.sleep(min(5.0, self._interval * 10))
        await self.flush()

    # -- reading ---------------------------------------------------------------

    async def search(
        self,
        *,
        refund_id: str | None = None,
        payment_id: str | None = None,
        request_id: str | None = None,
        at_from: datetime | None = None,
        at_to: datetime | None = None,
        limit: int = 50,
        before_seq: int | None = None,
        scope: AccountScope = None,
    ) -> list[AuditRecord]:
        """With `scope` (a scoped key's accounts), only the records of a refund
        or a payment of those PSE accounts."""
        async with self._uow() as uow:
            return await uow.audit.search(
                refund_id=refund_id,
                payment_id=payment_id,
                request_id=request_id,
                at_from=at_from,
                at_to=at_to,
                limit=limit,
                before_seq=before_seq,
                accounts=sorted(scope) if scope is not None else None,
            )

    async def export(
        self, at_from: datetime | None, at_to: datetime | None, batch: int = 5000
    ) -> AsyncIterator[AuditRecord]:
        after: int | None = None
        while True:
            async with self._uow() as uow:
                records = await uow.audit.search(
                    refund_id=None,
                    payment_id=None,
                    request_id=None,
                    at_from=at_from,
                    at_to=at_to,
                    limit=batch,
                    before_seq=None,
                    oldest_first=True,
                    after_seq=after,
                )
            for record in records:
                yield record
            if len(records) < batch:
                return
            after = records[-1].seq

    async def verify(
        self, progress: Callable[[int], None] | None = None, batch: int = 5000
    ) -> Verification:
        """Walk the chain from its anchor (after a purge) or its start, to its head."""
        async with self._uow() as uow:
            head_seq, head_hash, anchor_seq, anchor_hash = await uow.audit.head()
        expected_seq, expected_prev = anchor_seq + 1, anchor_hash
        cursor, checked = anchor_seq, 0
        while True:
            async with self._uow() as uow:
                records = await uow.audit.after(cursor, batch)
            for record in records:
                broken = check(record, expected_seq, expected_prev)
                if broken is not None:
                    return Verification(checked, anchor_seq + 1, head_seq, broken)
                checked += 1
                expected_seq, expected_prev = record.seq + 1, record.hash
                cursor = record.seq
            if progress:
                progress(checked)
            if len(records) < batch:
                break
        if expected_seq - 1 < head_seq:
            broken = Break(expected_seq, f"missing (the chain's head is record {head_seq})")
            return Verification(checked, anchor_seq + 1, head_seq, broken)
        if expected_seq - 1 > head_seq or expected_prev != head_hash:
            broken = Break(expected_seq - 1, "not the record the chain's head was sealed with")
            return Verification(checked, anchor_seq + 1, head_seq, broken)
        return Verification(checked, anchor_seq + 1, head_seq, None)

    async def purge(self, retention_days: int) -> int:
        now = self._clock.now()
        async with self._uow() as uow:
            removed = await uow.audit.purge(now - timedelta(days=retention_days), now)
            await uow.commit()
        if removed:
            self.record(
                "audit.purged",
                {"removed": removed, "retention_days": retention_days},
                actor="pse-refunds audit purge",
            )
            await self.flush()
        return removed
