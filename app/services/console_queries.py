"""What the console's pages read, and redelivery, its one action without a
use case elsewhere (it goes through `DeliveryService`).

The same repositories as the API (the open disputes by deadline through
`DisputeService`), and no rule of the console's own: who may decide a refund
and why a refund waits for people come from the domain. Lists are indexed
queries paged by cursors over ids: a `Page` gives the id the next page starts
after, which the page builders encode as the API does (`encode_cursor`) and
hand back, decoded, as `cursor`. No HTML here.

Scoped (`scoped(key.accounts)`, as the console's dependencies hand it to each
page), every list, count and figure holds the scope's PSE accounts only, and
a refund, run or event of another account is not found.

The home page's figures and the attention queues' counts are read by
`ConsoleFigures` (console_figures.py), which this class extends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, time, timedelta
from typing import TypeVar

from app.domain.disputes import Dispute
from app.domain.errors import InvalidInput, NotFound
from app.domain.models import (
    CANCELABLE,
    Actor,
    DecisionBlock,
    Payment,
    Refund,
    RefundStatus,
    RiskLevel,
)
from app.domain.money import exponent
from app.domain.policy import ApprovalReason
from app.domain.ports import RefundFilter, UnitOfWork
from app.domain.reconciliation import DISPUTE_OUTCOMES, Outcome
from app.domain.records import (
    ApiKey,
    FxTotal,
    OutboxEvent,
    Reconciliation,
    RefundRow,
    Role,
)
from app.domain.text import row_id
from app.domain.times import in_utc
from app.services.console_figures import ConsoleFigures
from app.services.console_results import (
    ApprovalCounts,
    ApprovalItem,
    AttentionQueue,
    Home,
    OpenDispute,
    Page,
    ReconciliationDetail,
    RefundAction,
    RefundDetail,
    RefundSearch,
)
from app.services.context import Deps
from app.services.disputes import DisputeService
from app.services.events import DeliveryService
from app.services.refund_csv import CSV_HEADER, csv_lines, csv_row
from app.services.submission import ASKABLE
from app.services.timeline import (
    AUDIT_KINDS_FROM_ROWS,
    Timeline,
    TimelineEntry,
    approval_entry,
    audit_entry,
    delivery_entry,
    dispute_entries,
    event_entry,
    status_entry,
    webhook_entry,
)

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# Refunds awaiting approval are read this many at a time while a page of one
# approver's inbox (or of what it cannot decide) is filled.
_APPROVAL_SCAN = 200
# At most this many entries of each source make a timeline; a refund with
# more is shown with `truncated`.
_TIMELINE_SOURCE_LIMIT = 1000
# Refunds per query of a CSV export.
EXPORT_CHUNK_ROWS = 1000
# What "Sync now" accepts (SubmissionService.resolve sends an approved refund).
SYNCABLE = frozenset({RefundStatus.APPROVED, *ASKABLE})


def _page(items: list[T], limit: int, cursor_of: Callable[[T], str]) -> Page[T]:
    """`items` holds up to limit+1 rows; the extra one only says a next page exists."""
    more = len(items) > limit
    items = items[:limit]
    return Page(items, cursor_of(items[-1]) if more and items else None)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"a page holds 1 to {MAX_LIMIT} items, not {limit}")
    return limit


def _dispute_cursor(dispute: Dispute) -> str:
    """Where a page of open disputes ends: its last one's deadline and id."""
    due = dispute.evidence_due_by
    return f"{due.isoformat() if due else ''}|{dispute.id}"


def _after_dispute(cursor: str | None) -> tuple[datetime | None, str] | None:
    if cursor is None:
        return None
    due, bar, dispute_id = cursor.partition("|")
    try:
        if not bar or not dispute_id:
            raise ValueError(cursor)
        at = datetime.fromisoformat(due) if due else None
    except ValueError:
        raise InvalidInput("the cursor is not one a page of disputes gave") from None
    if at is not None and (at.tzinfo is None or in_utc(at) is None):
        raise InvalidInput("the cursor is not one a page of disputes gave")
    return at, dispute_id


class ConsoleQueries(ConsoleFigures):
    def __init__(self, deps: Deps, deliveries: DeliveryService, disputes: DisputeService) -> None:
        self.deps = deps
        self.deliveries = deliveries
        self.disputes = disputes

    # -- approvals ---------------------------------------------------------------

    async def approvals_inbox(
        self, key: ApiKey, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[ApprovalItem]:
        """Refunds awaiting approval that `key` can approve now (an open slot its
        level fills, not created by it, not decided by it yet), oldest first."""
        return await self._approvals(key, blocked=False, limit=_limit(limit), cursor=cursor)

    async def approvals_blocked(
        self, key: ApiKey, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[ApprovalItem]:
        """Refunds awaiting approval that `key` cannot decide, each with why
        (`item.blocked`), oldest first."""
        return await self._approvals(key, blocked=True, limit=_limit(limit), cursor=cursor)

    async def approval_counts(self, key: ApiKey) -> ApprovalCounts:
        async with self.deps.uow() as uow:
            return await self._approval_counts(uow, key)

    async def _approval_counts(self, uow: UnitOfWork, key: ApiKey) -> ApprovalCounts:
        level = key.effective_approval_level
        inbox = blocked = 0
        after: str | None = None
        while True:
            batch = await uow.refunds.awaiting_approval(
                limit=_APPROVAL_SCAN, after_id=after, accounts=self.accounts
            )
            for refund in batch:
                if refund.decision_block(key.id, level) is None:
                    inbox += 1
                else:
                    blocked += 1
            if len(batch) < _APPROVAL_SCAN:
                return ApprovalCounts(inbox, blocked)
            after = batch[-1].id

    async def _approvals(
        self, key: ApiKey, *, blocked: bool, limit: int, cursor: str | None
    ) -> Page[ApprovalItem]:
        # Which refunds an approver may decide is the domain's rule (greedy slot
        # matching), not something SQL can say: refunds awaiting approval are
        # read in id order and sorted out here until the page is full.
        level = key.effective_approval_level
        found: list[tuple[Refund, DecisionBlock | None]] = []
        after = cursor
        async with self.deps.uow() as uow:
            while len(found) <= limit:
                batch = await uow.refunds.awaiting_approval(
                    limit=_APPROVAL_SCAN, after_id=after, accounts=self.accounts
                )
                for refund in batch:
                    block = refund.decision_block(key.id, level)
                    if (block is not None) is blocked:
                        found.append((refund, block))
                        if len(found) > limit:
                            break
                if len(batch) < _APPROVAL_SCAN:
                    break
                after = batch[-1].id
            shown = found[:limit]
            payments = await self._payments(uow, [refund.payment_id for refund, _ in shown])
        now = self.deps.clock.now()
        items = [
            self._approval_item(refund, payments[refund.payment_id], block, level, now)
            for refund, block in shown
        ]
        return Page(items, items[-1].refund.id if len(found) > limit else None)

    def _approval_item(
        self,
        refund: Refund,
        payment: Payment,
        block: DecisionBlock | None,
        level: int | None,
        now: datetime,
    ) -> ApprovalItem:
        return ApprovalItem(
            refund=refund,
            payment=payment,
            age=now - refund.created_at,
            reasons=self._reasons(refund, payment),
            open_slots=refund.open_slots,
            blocked=block,
            can_reject=block is None and level is not None and level >= refund.reject_level,
        )

    def _reasons(self, refund: Refund, payment: Payment) -> tuple[ApprovalReason, ...]:
        if not refund.required_approvals:
            return ()
        return self.deps.policy.approval_reasons(
            amount=refund.amount,
            high_risk=payment.risk_level is RiskLevel.HIGH,
            requested_at=refund.created_at,
        )

    @staticmethod
    async def _payments(uow: UnitOfWork, payment_ids: list[str]) -> dict[str, Payment]:
        return {p.id: p for p in await uow.payments.get_many(payment_ids)}

    # -- search and export -----------------------------------------------------------

    def _filter(self, search: RefundSearch) -> RefundFilter:
        bounds = search.amount_min is not None or search.amount_max is not None
        if bounds and search.currency is None:
            raise InvalidInput("an amount range needs its currency")
        if search.currency is not None:
            exponent(search.currency)  # UnknownCurrency for a code that is none
        if search.created_from and search.created_to and search.created_from > search.created_to:
            raise InvalidInput("the created range ends before it starts")
        if (
            search.amount_min is not None
            and search.amount_max is not None
            and search.amount_min > search.amount_max
        ):
            raise InvalidInput("the amount range ends below where it starts")
        open_before = None
        if search.stale:
            open_before = self.deps.clock.now() - timedelta(hours=self.deps.stale_after_hours)
        return RefundFilter(
            statuses=search.statuses,
            pse_account=search.pse_account or None,
            payment_or_order_id=search.payment_or_order_id or None,
            created_from=search.created_from,
            created_to=search.created_to,
            currency=search.currency,
            amount_min=search.amount_min,
            amount_max=search.amount_max,
            open_before=open_before,
            needs_attention=search.needs_attention,
            oldest_first=search.oldest_first,
            accounts=self.accounts,
        )

    async def search(
        self, search: RefundSearch, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[RefundRow]:
        """Refunds matching every filter, newest first (oldest with `oldest_first`)."""
        flt = self._filter(search)
        async with self.deps.uow() as uow:
            rows = await uow.refunds.rows(flt, limit=_limit(limit) + 1, before_id=cursor)
        return _page(rows, limit, lambda row: row.id)

    async def export_csv(
        self, search: RefundSearch, *, chunk_rows: int = EXPORT_CHUNK_ROWS
    ) -> AsyncIterator[str]:
        """The refunds `search` finds, as CSV text: the header line first, then
        one string of complete lines per chunk of `chunk_rows` refunds. Each
        chunk is its own short query after the last id of the one before, so
        an export of any size holds one chunk in memory and no transaction
        open while the caller sends it. Refunds created while it runs are not
        in it (newest first) or come at its end (oldest first)."""
        flt = self._filter(search)  # refused before the first line
        return self._export(flt, chunk_rows)

    async def _export(self, flt: RefundFilter, chunk_rows: int) -> AsyncIterator[str]:
        yield csv_lines([list(CSV_HEADER)])
        after: str | None = None
        while True:
            async with self.deps.uow() as uow:
                rows = await uow.refunds.rows(flt, limit=chunk_rows, before_id=after)
            if rows:
                yield csv_lines(csv_row(row) for row in rows)
            if len(rows) < chunk_rows:
                return
            after = rows[-1].id

    # -- one refund -------------------------------------------------------------------

    async def refund_detail(self, refund_id: str, viewer: ApiKey) -> RefundDetail:
        """Everything the refund page shows: the refund, its payment, its
        timeline and what `viewer` may do with it now."""
        async with self.deps.uow() as uow:
            refund = await uow.refunds.get(refund_id)
            if refund is None or not self.sees(refund.pse_account):
                raise NotFound(f"no refund {refund_id}")
            payment = await uow.payments.get(refund.payment_id)
            assert payment is not None  # a refund's payment is never deleted
            disputes, more_disputes = await self._payment_disputes(uow, payment.id)
            timeline = await self._timeline(uow, refund, disputes, more_disputes)
        level = viewer.effective_approval_level
        block = None
        if refund.status is RefundStatus.PENDING_APPROVAL:
            block = refund.decision_block(viewer.id, level)
        window = self.deps.accounts.get(refund.pse_account)
        return RefundDetail(
            refund=refund,
            payment=payment,
            timeline=timeline,
            actions=self._actions(refund, viewer, block, held=refund.hold is not None),
            decision_block=block,
            approval_reasons=self._reasons(refund, payment),
            refund_deadline=self.deps.policy.refund_deadline(
                payment.captured_at, window.refund_window_days if window else None
            ),
            disputes=disputes,
            hold=refund.hold,
        )

    def _actions(
        self, refund: Refund, viewer: ApiKey, block: DecisionBlock | None, *, held: bool = False
    ) -> frozenset[RefundAction]:
        """The API's roles for each action (approver: approve and reject; store
        or ops: cancel; ops: the rest), and the statuses the domain accepts.
        A held refund (its payment disputed) the domain neither approves nor
        lets be paid out offline; it may still be rejected or canceled."""
        actions: set[RefundAction] = set()
        level = viewer.effective_approval_level
        status = refund.status
        if status is RefundStatus.PENDING_APPROVAL and level and viewer.has_any(Role.APPROVER):
            if block is None and not held:
                actions.add(RefundAction.APPROVE)
            # A veto asks for the refund's highest level, whatever slots are open.
            may_decide = block not in (DecisionBlock.SELF_APPROVAL, DecisionBlock.ALREADY_DECIDED)
            if may_decide and level >= refund.reject_level:
                actions.add(RefundAction.REJECT)
        if status in CANCELABLE and viewer.has_any(Role.STORE, Role.OPS):
            actions.add(RefundAction.CANCEL)
        if viewer.has_any(Role.OPS):
            if status is RefundStatus.OFFLINE_REQUIRED and not held:
                actions.add(RefundAction.OFFLINE_PAYOUT)
            if status in SYNCABLE:
                actions.add(RefundAction.SYNC)
            if refund.attention is not None:
                actions.add(RefundAction.ACKNOWLEDGE)
        return frozenset(actions)

    async def timeline(self, refund_id: str) -> Timeline:
        """One list, by time, of all that happened to a refund: its status
        changes and approvals (its own rows), the events for the store and each
        attempt to deliver them (the outbox), the PSE's webhooks about it, and
        from the audit trail its PSE calls (redacted), the API requests that
        acted on it and anything else recorded about it."""
        async with self.deps.uow() as uow:
            refund = await uow.refunds.get(refund_id)
            if refund is None or not self.sees(refund.pse_account):
                raise NotFound(f"no refund {refund_id}")
            disputes, more_disputes = await self._payment_disputes(uow, refund.payment_id)
            return await self._timeline(uow, refund, disputes, more_disputes)

    @staticmethod
    async def _payment_disputes(
        uow: UnitOfWork, payment_id: str
    ) -> tuple[tuple[Dispute, ...], bool]:
        """The payment's disputes, oldest first (its newest ones, as many as a
        timeline shows of each source), and whether it has more."""
        limit = _TIMELINE_SOURCE_LIMIT
        newest = await uow.disputes.for_payment(payment_id, limit=limit + 1, before_id=None)
        oldest_first = sorted(newest[:limit], key=lambda d: (d.opened_at, d.id))
        return tuple(oldest_first), len(newest) > limit

    async def _timeline(
        self,
        uow: UnitOfWork,
        refund: Refund,
        disputes: tuple[Dispute, ...],
        more_disputes: bool,
    ) -> Timeline:
        # The refund's own rows and the outbox are the record of its changes
        # and deliveries (kept whatever the audit's retention and buffering);
        # the audit trail adds what only it holds. Its copies of the same
        # facts (refund.status, approval.decision, webhook.sent) are left out.
        entries: list[tuple[datetime, int, TimelineEntry]] = []
        limit = _TIMELINE_SOURCE_LIMIT
        truncated = more_disputes

        def add(rank: int, entry: TimelineEntry) -> None:
            entries.append((entry.at, rank, entry))

        for approval in refund.approvals:
            add(0, approval_entry(approval.approver, approval))
        previous: RefundStatus | None = None
        for change in refund.history:
            add(1, status_entry(previous, change))
            previous = change.status
        events = await uow.outbox.list_newest(
            types=(), refund_id=refund.id, limit=limit + 1, before=None
        )
        truncated |= len(events) > limit
        events = events[:limit]
        # The outbox lists newest first; added oldest first, events raised at
        # one instant keep the order they were raised in (the sort is stable).
        for event in reversed(events):
            add(2, event_entry(event))
        for attempt in await uow.outbox.attempts_of([event.id for event in events]):
            add(4, delivery_entry(attempt))
        webhooks = await uow.webhooks.for_refund(refund.id, limit + 1)
        truncated |= len(webhooks) > limit
        for webhook in webhooks[:limit]:
            add(3, webhook_entry(webhook))
        records = await uow.audit.search(
            refund_id=refund.id,
            payment_id=None,
            request_id=None,
            at_from=None,
            at_to=None,
            limit=limit + 1,
            before_seq=None,
            oldest_first=True,
            without_kinds=AUDIT_KINDS_FROM_ROWS,
            without_reads=True,
        )
        truncated |= len(records) > limit
        for record in records[:limit]:
            add(3, audit_entry(record.kind, record.actor, record.at, record.data()["data"]))
        # The payment's disputes: why a refund was held, released or canceled.
        for dispute in disputes:
            for entry in dispute_entries(dispute):
                add(1, entry)
        entries.sort(key=lambda item: (item[0], item[1]))
        return Timeline([entry for _at, _rank, entry in entries], truncated)

    # -- home ---------------------------------------------------------------------------

    async def home(self, viewer: ApiKey) -> Home:
        """The home page's figures, read in one unit of work."""
        now = self.deps.clock.now()
        today = datetime.combine(now.date(), time(), tzinfo=now.tzinfo)
        async with self.deps.uow() as uow:
            queues = await self._attention_counts(uow, now)
            approvals = None
            if viewer.effective_approval_level is not None:
                approvals = await self._approval_counts(uow, viewer)
            by_status = await uow.refunds.count_by_status(
                today, today + timedelta(days=1), self.accounts
            )
            times = await self._time_to_refund(uow, now)
            rates = await self._refund_rate(uow, now)
        return Home(queues, approvals, by_status, today, times, rates)

    # -- attention --------------------------------------------------------------------

    async def open_disputes(
        self, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[OpenDispute]:
        """Open disputes (chargebacks) of the scope's accounts, the soonest
        evidence deadline first (those without one last), each with its
        payment and whether its deadline has passed."""
        after = _after_dispute(cursor)
        now = self.deps.clock.now()
        disputes = await self.disputes.scoped(self.scope).open_by_deadline(
            limit=_limit(limit) + 1, after=after
        )
        page = _page(disputes, limit, _dispute_cursor)
        async with self.deps.uow() as uow:
            payments = await self._payments(uow, [d.payment_id for d in page.items])
        items = [
            OpenDispute(
                dispute,
                payments[dispute.payment_id],
                overdue=dispute.evidence_due_by is not None and dispute.evidence_due_by < now,
            )
            for dispute in page.items
        ]
        return Page(items, page.next_cursor)

    async def attention(
        self, queue: AttentionQueue, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[RefundRow]:
        """One queue of refunds ops must clear, oldest first."""
        search = {
            AttentionQueue.STALE: RefundSearch(stale=True, oldest_first=True),
            AttentionQueue.UNKNOWN: RefundSearch(
                statuses=(RefundStatus.UNKNOWN,), oldest_first=True
            ),
            AttentionQueue.NEEDS_ATTENTION: RefundSearch(needs_attention=True, oldest_first=True),
            AttentionQueue.OFFLINE_REQUIRED: RefundSearch(
                statuses=(RefundStatus.OFFLINE_REQUIRED,), oldest_first=True
            ),
        }[AttentionQueue(queue)]
        return await self.search(search, limit=limit, cursor=cursor)

    async def failed_deliveries(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        oldest_first: bool = False,
    ) -> Page[OutboxEvent]:
        """Events the store's webhook never accepted within the retry window,
        newest first (oldest first with `oldest_first`: the attention page's order)."""
        async with self.deps.uow() as uow:
            events = await uow.outbox.failed(
                limit=_limit(limit) + 1,
                before_id=cursor,
                oldest_first=oldest_first,
                accounts=self.accounts,
            )
        return _page(events, limit, lambda event: event.id)

    async def redeliver(self, event_id: str, actor: Actor) -> OutboxEvent:
        """Queue the event for delivery again, as the API's redeliver does; the
        audit trail records who asked."""
        return await self.deliveries.scoped(self.scope).redeliver(event_id, actor)

    # -- reconciliations ----------------------------------------------------------------

    def pse_accounts(self) -> list[str]:
        """The configured PSE accounts (of the scope), by name: what a
        settlement file or a search may name."""
        return sorted(name for name in self.deps.accounts if self.sees(name))

    async def reconciliations(
        self, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[Reconciliation]:
        """Past runs, newest first."""
        async with self.deps.uow() as uow:
            runs = await uow.reconciliations.list(
                limit=_limit(limit) + 1, before_id=cursor, accounts=self.accounts
            )
        return _page(runs, limit, lambda run: run.id)

    async def reconciliation(
        self,
        reconciliation_id: str,
        *,
        outcome: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> ReconciliationDetail:
        """A run (its counts by outcome are `run.counts`) and a page of its lines,
        of one outcome when asked."""
        if outcome is not None and outcome not in {o.value for o in Outcome}:
            known = ", ".join(o.value for o in Outcome)
            raise InvalidInput(f"outcome must be one of: {known}")
        after_id = None if cursor is None else row_id(cursor)
        if cursor is not None and after_id is None:
            raise InvalidInput("the cursor is not one a page of lines gave")
        async with self.deps.uow() as uow:
            run = await uow.reconciliations.get(reconciliation_id)
            if run is None or not self.sees(run.pse_account):
                raise NotFound(f"no reconciliation {reconciliation_id}")
            lines = await uow.reconciliations.lines(
                reconciliation_id, outcome=outcome, limit=_limit(limit) + 1, after_id=after_id
            )
            page = _page(lines, limit, lambda line: str(line.id))
            # Dispute lines hold our dispute's id where refund lines hold the refund's.
            dispute_ids = [
                line.refund_id
                for line in page.items
                if line.refund_id and line.outcome in DISPUTE_OUTCOMES
            ]
            disputes = await uow.disputes.get_many(dispute_ids)
        return ReconciliationDetail(run, page, outcome, {d.id: d for d in disputes})

    async def fx_report(
        self,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        currency: str | None = None,
    ) -> list[FxTotal]:
        """FX differences and fees by settlement currency (as the API's report)."""
        async with self.deps.uow() as uow:
            return await uow.reconciliations.fx_totals(
                created_from, created_to, currency, self.accounts
            )
