"""Reconciling a PSE's settlement file against our refunds and disputes, and
the FX report.

One streaming pass over the file matches its lines in batches and writes
the outcomes; an unreadable line stops the run, naming the line. The
changes to refunds (uncertain refunds the file proves settled, fees and
settled amounts) are applied at the end in one transaction: a run that
fails leaves no refund half-changed and no outcome lines behind.

Dispute lines (chargeback withdrawals and reinstatements) are rare: a batch
holding some makes one more query, for their disputes; a batch of refund
lines only makes none. They change nothing in our records.

A dispute line is written in the columns a refund line uses: `pse_refund_id`
holds the file's dispute id, `reference` the file's id of the disputed
payment, `refund_id` our dispute's id, `file_status` `withdrawn` or
`reinstated`, `our_amount` / `our_status` the dispute's.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import BinaryIO, Protocol, cast

import structlog

from app.domain.errors import NotFound
from app.domain.reconciliation import (
    ADOPTABLE,
    JudgedBatch,
    Outcome,
    ReconciliationStatus,
    SettlementRow,
    empty_counts,
    settled_row,
)
from app.domain.reconciliation_disputes import DisputeIndex, SettledDispute, Taken
from app.domain.records import FxTotal, Reconciliation, ReconciliationLine
from app.services.context import Deps, Scoped, lock_refund, save
from app.services.ids import new_id
from app.services.jobs import BackgroundJobs
from app.services.views import RECONCILIATION_LINE_FIELDS, reconciliation_line_view

log = structlog.get_logger("app.reconciliation")

BATCH = 10000
# Connections storing batches side by side (each in a transaction of its own).
WRITERS = 2


class SettlementFormat(Protocol):
    format: str
    rows: Iterator[SettlementRow | SettledDispute]


# Opens a settlement file for a provider: (text stream) → format and rows.
OpenFile = Callable[[], AbstractContextManager[BinaryIO]]
ParseFile = Callable[[BinaryIO, str], SettlementFormat]
# Called with (phase, rows done, rows total or None).
Progress = Callable[[str, int, int | None], None]
# Reads up to n bytes of an uploaded file; b"" once all of it is read.
ReadChunk = Callable[[int], Awaitable[bytes]]

_UPLOAD_CHUNK = 1024 * 1024
# Lines per query of a report.
REPORT_CHUNK_LINES = 5000


class ReconciliationService(Scoped):
    """Scoped (`scoped`): runs of other PSE accounts are not found, nor is an
    account outside the scope to reconcile; the FX report counts the
    scope's refunds only."""

    def __init__(
        self,
        deps: Deps,
        parse: ParseFile,
        file_errors: tuple[type[Exception], ...],
    ) -> None:
        self.deps = deps
        self.parse = parse
        self.file_errors = file_errors

    def check_account(self, pse_account: str) -> None:
        """UnknownPseAccount unless `pse_account` is configured (before a file is read)."""
        self.deps.account(pse_account)

    async def start(
        self, pse_account: str, filename: str | None, created_by: str | None
    ) -> Reconciliation:
        self.deps.account(pse_account)
        reconciliation = Reconciliation(
            id=new_id("rec"),
            pse_account=pse_account,
            status=ReconciliationStatus.PROCESSING.value,
            created_at=self.deps.clock.now(),
            filename=filename,
            counts=empty_counts(),
            created_by=created_by,
        )
        async with self.deps.uow() as uow:
            await uow.reconciliations.add(reconciliation)
            await uow.commit()
        return reconciliation

    async def accept(
        self,
        pse_account: str,
        filename: str | None,
        created_by: str | None,
        read: ReadChunk,
        jobs: BackgroundJobs,
    ) -> Reconciliation:
        """Take an uploaded settlement file and reconcile it in the background:
        the answer does not wait for a large file, and the run it returns is
        `processing` until it ends. The upload is kept in a temporary file
        (the request's own copy is gone once it is answered), removed when
        the run ends."""
        if not self.sees(pse_account):
            raise NotFound(f"no PSE account {pse_account!r}")
        self.check_account(pse_account)
        fd, path = tempfile.mkstemp(prefix="settlement-", suffix=".csv")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := await read(_UPLOAD_CHUNK):
                    out.write(chunk)
            name = (filename or "").replace("\x00", "")[:500] or None
            reconciliation = await self.start(pse_account, name, created_by)
        except BaseException:
            os.unlink(path)
            raise

        async def job() -> None:
            try:
                await self.run(reconciliation.id, _file_opener(path))
            finally:
                os.unlink(path)

        jobs.spawn(f"reconciliation {reconciliation.id}", job)
        return reconciliation

    async def report_csv(self, reconciliation_id: str) -> AsyncIterator[str]:
        """Every line of the run with its outcome, as CSV text for a
        spreadsheet: the header, then one string per query of lines, however
        many there are. NotFound is raised before the first line."""
        await self.get(reconciliation_id)
        return self._report(reconciliation_id)

    async def _report(self, reconciliation_id: str) -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(RECONCILIATION_LINE_FIELDS)
        after: int | None = None
        while True:
            async with self.deps.uow() as uow:
                lines = await uow.reconciliations.lines(
                    reconciliation_id, outcome=None, limit=REPORT_CHUNK_LINES, after_id=after
                )
            for line in lines:
                view = reconciliation_line_view(line)
                writer.writerow(
                    ["" if view[f] is None else view[f] for f in RECONCILIATION_LINE_FIELDS]
                )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(lines) < REPORT_CHUNK_LINES:
                return
            after = lines[-1].id

    async def get(self, reconciliation_id: str) -> Reconciliation:
        async with self.deps.uow() as uow:
            found = await uow.reconciliations.get(reconciliation_id)
        if found is None or not self.sees(found.pse_account):
            raise NotFound(f"no reconciliation {reconciliation_id}")
        return found

    async def lines(
        self, reconciliation_id: str, *, outcome: str | None, limit: int, after_id: int | None
    ) -> list[ReconciliationLine]:
        await self.get(reconciliation_id)
        async with self.deps.uow() as uow:
            return await uow.reconciliations.lines(
                reconciliation_id, outcome=outcome, limit=limit, after_id=after_id
            )

    async def run(
        self,
        reconciliation_id: str,
        open_file: OpenFile,
        progress: Progress | None = None,
    ) -> Reconciliation:
        """Process the file; the reconciliation ends `completed` or `failed`."""
        reconciliation = await self.get(reconciliation_id)
        provider = self.deps.account(reconciliation.pse_account).provider
        report = progress or (lambda _phase, _done, _total: None)
        started = time.perf_counter()
        try:
            adopt = await self._match(reconciliation, open_file, provider, report)
            matched_at = time.perf_counter()
            await self._apply(reconciliation, adopt)
        except Exception as exc:
            async with self.deps.uow() as uow:
                await uow.reconciliations.delete_lines(reconciliation.id)
                await uow.commit()
            reconciliation.counts = empty_counts()
            if isinstance(exc, self.file_errors):
                return await self._fail(reconciliation, str(exc))
            log.exception("reconciliation.failed", reconciliation_id=reconciliation.id)
            return await self._fail(reconciliation, f"the run failed ({type(exc).__name__})")
        log.info(
            "reconciliation.completed",
            reconciliation_id=reconciliation.id,
            pse_account=reconciliation.pse_account,
            rows=reconciliation.rows_total,
            matching_seconds=round(matched_at - started, 2),
            applying_seconds=round(time.perf_counter() - matched_at, 2),
            **reconciliation.counts,
        )
        return reconciliation

    async def _match(
        self,
        reconciliation: Reconciliation,
        open_file: OpenFile,
        provider: str,
        report: Progress,
    ) -> list[int]:
        """Match the file in batches, the database working while Python parses:
        each batch of refund lines is matched, judged and stored by one
        statement (`add_judged_lines`), sent before the next batch is read,
        on one of `WRITERS` connections in turn (a transaction each; the
        lines' ids are taken in file order). Dispute lines (rare) are judged
        here, after one query for their disputes. An unreadable line stops
        the run (the caller deletes what was written: no refund has been
        touched yet). Gives the ids of the lines whose refund the file
        proves settled."""
        counts = empty_counts()
        adopt: list[int] = []
        # Disputes earlier dispute lines went to, with the money's direction.
        taken: Taken = {}
        done = 0
        first: datetime | None = None
        last: datetime | None = None
        account = reconciliation.pse_account
        # Batch k goes to writer k % WRITERS, with ids taken in file order.
        writing: list[asyncio.Future[JudgedBatch] | None] = [None] * WRITERS
        async with contextlib.AsyncExitStack() as stack:
            uows = [await stack.enter_async_context(self.deps.uow()) for _ in range(WRITERS)]
            writers = [uow.reconciliations for uow in uows]
            with open_file() as stream:
                parsed = self.parse(stream, provider)
                reconciliation.file_format = parsed.format
                rows = parsed.rows
                try:
                    slot = 0
                    while batch := list(itertools.islice(rows, BATCH)):
                        # Dispute lines are rare: one pass finds none, and the batch is all refunds.
                        disputes = [r for r in batch if type(r) is SettledDispute]
                        refunds = cast(
                            list[SettlementRow],
                            [r for r in batch if type(r) is not SettledDispute]
                            if disputes
                            else batch,
                        )
                        judged = (
                            await self._judge_disputes(reconciliation.id, account, disputes, taken)
                            if disputes
                            else []
                        )
                        earlier = writing[slot]
                        if earlier is not None:
                            first, last = _add(await earlier, counts, adopt, first, last)
                        writer = writers[slot]
                        ids = await writer.reserve_line_ids(len(batch))
                        writing[slot] = asyncio.ensure_future(
                            writer.add_judged_lines(
                                reconciliation.id, account, refunds, judged, ids
                            )
                        )
                        # Let it send the batch: the database works while the next is read.
                        await asyncio.sleep(0)
                        done += len(batch)
                        report("matching", done, None)
                        slot = (slot + 1) % WRITERS
                    for task in writing:
                        if task is not None:
                            first, last = _add(await task, counts, adopt, first, last)
                except BaseException as exc:
                    # A bad line: the batches on their way are let finish (their
                    # connections stay usable); on cancellation they stop too.
                    running = [t for t in writing if t is not None and not t.done()]
                    if not isinstance(exc, Exception):
                        for task in running:
                            task.cancel()
                    await asyncio.gather(*running, return_exceptions=True)
                    raise
            for uow in uows:
                await uow.commit()
        adopt.sort()  # file order
        report("matching", done, done)
        reconciliation.rows_total = done
        reconciliation.range_from, reconciliation.range_to = first, last
        reconciliation.counts = counts
        return adopt

    async def _judge_disputes(
        self,
        reconciliation_id: str,
        pse_account: str,
        disputes: list[SettledDispute],
        taken: Taken,
    ) -> list[ReconciliationLine]:
        """A batch's dispute lines, judged against the disputes they name (one query)."""
        async with self.deps.uow() as uow:
            known = await uow.reconciliations.settlement_disputes(
                pse_account,
                [d.pse_dispute_id for d in disputes if d.pse_dispute_id],
                [p for d in disputes for p in d.pse_payment_ids],
            )
        index = DisputeIndex(taken)
        index.add(known)
        lines = []
        for row in disputes:
            dispute, verdict = index.match(row)
            payment_ids = row.pse_payment_ids
            named = payment_ids[0] if payment_ids else None
            if dispute is not None and dispute.pse_payment_id in payment_ids:
                named = dispute.pse_payment_id
            settlement = row.settlement_amount
            lines.append(
                ReconciliationLine(
                    reconciliation_id,
                    row.line,
                    verdict.outcome,
                    row.pse_dispute_id,
                    named,
                    dispute.id if dispute else None,
                    row.amount.amount,
                    row.movement,
                    dispute.amount.amount if dispute else None,
                    dispute.status if dispute else None,
                    row.amount.currency,
                    row.settled_at,
                    row.fee.amount if row.fee else None,
                    settlement.amount if settlement else None,
                    settlement.currency if settlement else None,
                    verdict.detail,
                )
            )
        return lines

    async def _apply(self, reconciliation: Reconciliation, adopt: list[int]) -> None:
        """One transaction: settle the uncertain refunds the file proves (the
        lines `adopt` names), record fees and settled amounts, close the run.
        What the file misses is listed meanwhile, on another connection (it
        reads no refund this one changes but those the file has)."""
        now = self.deps.clock.now()
        actor = f"settlement file {reconciliation.id}"
        listing = asyncio.ensure_future(self._missing_in_file(reconciliation))
        try:
            await self._settle(reconciliation, adopt, listing, now, actor)
        except BaseException:
            if not listing.done():
                listing.cancel()
            await asyncio.gather(listing, return_exceptions=True)
            raise

    async def _missing_in_file(self, reconciliation: Reconciliation) -> int | None:
        """List the refunds we hold as succeeded within the file's period that
        it does not have (None for a file with no settlement times)."""
        if not (reconciliation.range_from and reconciliation.range_to):
            return None
        async with self.deps.uow() as uow:
            missing = await uow.reconciliations.add_missing_in_file(
                reconciliation.id,
                reconciliation.pse_account,
                reconciliation.range_from,
                reconciliation.range_to,
            )
            await uow.commit()
        return missing

    async def _settle(
        self,
        reconciliation: Reconciliation,
        adopt: list[int],
        listing: asyncio.Future[int | None],
        now: datetime,
        actor: str,
    ) -> None:
        async with self.deps.uow() as uow:
            adopted = 0
            for line in await uow.reconciliations.lines_by_id(adopt):
                assert line.refund_id is not None
                row = settled_row(line)
                payment, refund = await lock_refund(uow, line.refund_id)
                if refund.status not in ADOPTABLE:
                    continue  # settled meanwhile by a webhook or the worker
                refund.apply_pse(payment, row.as_pse_view(), now, actor)
                await save(self.deps, uow, payment, refund)
                adopted += 1
            await uow.reconciliations.apply_settled_figures(reconciliation.id)
            missing = await listing
            if missing is not None:
                reconciliation.counts[Outcome.MISSING_IN_FILE.value] = missing
            reconciliation.adopted = adopted
            reconciliation.status = ReconciliationStatus.COMPLETED.value
            reconciliation.completed_at = self.deps.clock.now()
            await uow.reconciliations.update(reconciliation)
            await uow.commit()

    async def _fail(self, reconciliation: Reconciliation, error: str) -> Reconciliation:
        reconciliation.status = ReconciliationStatus.FAILED.value
        reconciliation.error = error
        reconciliation.completed_at = self.deps.clock.now()
        async with self.deps.uow() as uow:
            await uow.reconciliations.update(reconciliation)
            await uow.commit()
        log.warning("reconciliation.rejected", reconciliation_id=reconciliation.id, error=error)
        return reconciliation

    async def fx_report(
        self, created_from: datetime | None, created_to: datetime | None, currency: str | None
    ) -> list[FxTotal]:
        async with self.deps.uow() as uow:
            return await uow.reconciliations.fx_totals(
                created_from, created_to, currency, self.accounts
            )

    async def list(self, *, limit: int, before_id: str | None) -> list[Reconciliation]:
        """Past runs, newest first."""
        async with self.deps.uow() as uow:
            return await uow.reconciliations.list(
                limit=limit, before_id=before_id, accounts=self.accounts
            )


def _add(
    batch: JudgedBatch,
    counts: dict[str, int],
    adopt: list[int],
    first: datetime | None,
    last: datetime | None,
) -> tuple[datetime | None, datetime | None]:
    """Add a stored batch to the run's counts and adoptions; the run's range so far."""
    for outcome, lines in batch.counts.items():
        counts[outcome] += lines
    adopt.extend(batch.adopt_line_ids)
    if batch.first is not None and (first is None or batch.first < first):
        first = batch.first
    if batch.last is not None and (last is None or batch.last > last):
        last = batch.last
    return first, last


def _file_opener(path: str) -> OpenFile:
    @contextlib.contextmanager
    def open_file() -> Iterator[BinaryIO]:
        with open(path, "rb") as stream:
            yield stream

    return open_file
