"""Ports: what the domain and services need from the outside world.

Adapters implement these; `app.bootstrap` wires them. Services depend only
on these abstractions, which keeps them testable with fakes.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, Self

from app.domain.pse import (
    LookupResult,
    PseWebhookEvent,
    RefundSubmission,
    SubmitResult,
)

if TYPE_CHECKING:
    from app.domain.audit import AuditEntry, AuditRecord
    from app.domain.console import ConsoleSession, Flash
    from app.domain.disputes import Dispute
    from app.domain.models import Payment, Refund, RefundStatus
    from app.domain.reconciliation import JudgedBatch, RefundSnapshot, SettlementRow
    from app.domain.reconciliation_disputes import KnownDisputes
    from app.domain.records import (
        ApiKey,
        DeliveryAttempt,
        DeliveryStatus,
        DisputeFigures,
        FxTotal,
        IdempotencyRecord,
        KeptAnswer,
        OutboxEvent,
        ReceivedWebhook,
        Reconciliation,
        ReconciliationLine,
        RefundRow,
        StoredWebhook,
        SuccessTimes,
        Volume,
        WaitingFor,
        WebhookOutcome,
        WebhookStatus,
    )

# --------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------


class Clock(abc.ABC):
    @abc.abstractmethod
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""


class Claimer(Protocol):
    """Who claims work (a worker process), as storage can tell it is alive.

    Claims carry the key; a claim whose claimer is no longer alive (its
    process died) is free for any other claimer at once, whatever its lease."""

    async def key(self) -> int:
        """The key this process's claims carry now (a new one once its old one
        may have been lost)."""
        ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------
# PSE gateway
# --------------------------------------------------------------------------


class PseGateway(abc.ABC):
    """One PSE account, in the domain's words."""

    @abc.abstractmethod
    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
        """Ask the PSE to refund. Retries transient failures with the same idempotency key."""

    @abc.abstractmethod
    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        """Find the refund by PSE id, else by our reference among the payment's refunds."""

    @abc.abstractmethod
    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        """Verify the signature (headers lower-cased) over the raw body, then translate.

        Raises InvalidWebhookSignature or InvalidWebhookPayload."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# --------------------------------------------------------------------------
# Events to the store backend
# --------------------------------------------------------------------------


class EventPublisher(abc.ABC):
    """Sends one event to the store backend (its webhook)."""

    @abc.abstractmethod
    async def publish(self, event: OutboxEvent, attempt: int) -> DeliveryAttempt:
        """One delivery attempt; never raises for network errors (they are recorded)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# --------------------------------------------------------------------------
# Persistence: repositories and the unit of work
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefundFilter:
    statuses: Sequence[RefundStatus] = ()
    payment_id: str | None = None
    pse_account: str | None = None
    # One search box: the refunds of the payment with this id, or of the
    # payments of the order with this id.
    payment_or_order_id: str | None = None
    # Amounts in minor units of `currency` (a bound without a currency means nothing).
    currency: str | None = None
    amount_min: int | None = None
    amount_max: int | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    # Not final and created before this instant (the stale list).
    open_before: datetime | None = None
    # Flagged for a person and not yet acknowledged.
    needs_attention: bool = False
    oldest_first: bool = False
    # Only refunds of these PSE accounts (a scoped key's); None: every account.
    accounts: Sequence[str] | None = None


class AlreadyExists(Exception):
    """A uniqueness rule refused the write; the transaction must be abandoned."""


class WebhookStoredBefore(AlreadyExists):
    """The webhook being stored with its outcome was stored before (a repeat):
    nothing was written; the transaction must be abandoned."""


class PaymentRepository(Protocol):
    async def add(self, payment: Payment, created_by: str | None) -> None: ...
    async def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None: ...
    async def lock_with_day_total(
        self, payment_id: str, currency: str | None, day: str
    ) -> tuple[Payment, int] | None:
        """The payment, locked, and the day's auto-approved total in `currency`
        (the payment's own when None) as last committed, read without a lock:
        never more than the true total, since totals only grow."""
        ...

    async def get_by_pse(self, pse_account: str, pse_payment_id: str) -> Payment | None: ...
    async def get_many(self, payment_ids: Sequence[str]) -> list[Payment]: ...
    async def volume(
        self, created_since: datetime, accounts: Sequence[str] | None = None
    ) -> list[Volume]:
        """Payments registered since `created_since`, per currency (of
        `accounts` only, when given)."""
        ...

    async def list(
        self,
        *,
        order_id: str | None,
        limit: int,
        before_id: str | None,
        accounts: Sequence[str] | None = None,
    ) -> list[Payment]: ...


class RefundRepository(Protocol):
    """Refunds are written by `UnitOfWork.save_refund`, with their payment and events."""

    async def get(self, refund_id: str, *, for_update: bool = False) -> Refund | None: ...
    async def payment_id_of(self, refund_id: str) -> str | None: ...
    async def lock_of_payment(self, payment_id: str) -> list[Refund]:
        """Every refund of the payment, locked; call with the payment locked."""
        ...

    async def lock_with_payment(self, refund_id: str) -> tuple[Payment, Refund] | None:
        """The refund and its payment, both locked: the payment first."""
        ...

    async def stale_unflagged(self, created_before: datetime, limit: int) -> list[str]: ...
    async def lock_matching(
        self, pse_account: str, pse_refund_id: str | None, reference: str | None
    ) -> tuple[Payment, Refund] | None:
        """The account's refund with the PSE's refund id, else the one
        `reference` (our refund id) names, and its payment: both locked, the
        payment first. Empty values name nothing."""
        ...

    async def claim_due(
        self, now: datetime, lease_until: datetime, limit: int, claimer: int | None = None
    ) -> list[str]:
        """Refunds due for a self-check, or whose claimer is no longer alive,
        leased until `lease_until` to `claimer` (a `Claimer`'s key)."""
        ...

    async def release_claims(self, refund_ids: Sequence[str], claimer: int) -> None:
        """`claimer` is done with these refunds' checks (unless another took them)."""
        ...

    async def open_counts(
        self, stale_before: datetime, accounts: Sequence[str] | None = None
    ) -> tuple[dict[str, int], int]: ...
    async def find_for_settlement(
        self, pse_account: str, pse_refund_ids: Sequence[str], references: Sequence[str]
    ) -> list[RefundSnapshot]: ...
    async def rows(
        self, flt: RefundFilter, *, limit: int, before_id: str | None
    ) -> list[RefundRow]:
        """`list`'s refunds in its order, as rows with their payment's order id."""
        ...

    async def awaiting_approval(
        self, *, limit: int, after_id: str | None, accounts: Sequence[str] | None = None
    ) -> list[Refund]:
        """Refunds in `pending_approval`, oldest first, after `after_id`."""
        ...

    async def flagged_count(self, accounts: Sequence[str] | None = None) -> int: ...
    async def count_by_status(
        self,
        created_from: datetime,
        created_to: datetime,
        accounts: Sequence[str] | None = None,
    ) -> dict[str, int]: ...
    async def volume(
        self,
        created_since: datetime,
        statuses: Sequence[RefundStatus],
        accounts: Sequence[str] | None = None,
    ) -> list[Volume]:
        """Refunds requested since `created_since` now in one of `statuses`, per currency."""
        ...

    async def success_times(
        self, succeeded_since: datetime, accounts: Sequence[str] | None = None
    ) -> list[SuccessTimes]:
        """Per PSE account, from request to `succeeded`, of refunds that
        succeeded since `succeeded_since`."""
        ...

    async def list(
        self, flt: RefundFilter, *, limit: int, before_id: str | None
    ) -> list[Refund]: ...


class DisputeRepository(Protocol):
    """Disputes on payments. A dispute is written with its payment's counters
    (all of them, the disputes' included) and the payment's new events: one
    write, as a refund's is."""

    async def add(
        self, dispute: Dispute, payment: Payment, events: Sequence[OutboxEvent], *, deliver: bool
    ) -> None:
        """Raises AlreadyExists when the PSE account has a dispute of this id
        (the transaction must then be abandoned)."""
        ...

    async def save(
        self, dispute: Dispute, payment: Payment, events: Sequence[OutboxEvent], *, deliver: bool
    ) -> None: ...
    async def get_by_pse(self, pse_account: str, pse_dispute_id: str) -> Dispute | None: ...
    async def get_many(self, dispute_ids: Sequence[str]) -> list[Dispute]:
        """The disputes of these ids (in no set order); those not found left out."""
        ...

    async def for_payment(
        self, payment_id: str, *, limit: int, before_id: str | None
    ) -> list[Dispute]:
        """The payment's disputes, newest first, before `before_id`."""
        ...

    async def open_by_deadline(
        self,
        *,
        limit: int,
        after: tuple[datetime | None, str] | None = None,
        accounts: Sequence[str] | None = None,
    ) -> list[Dispute]:
        """Open disputes, the nearest evidence deadline first (those without
        one last), after `after` (a dispute's (evidence_due_by, id))."""
        ...

    async def open_count(
        self, accounts: Sequence[str] | None = None, *, due_before: datetime | None = None
    ) -> int:
        """Open disputes; with `due_before`, those of them whose evidence
        deadline is earlier (those without one never are)."""
        ...

    async def figures(self, accounts: Sequence[str] | None = None) -> list[DisputeFigures]:
        """Per PSE account and currency of every account that ever had a
        dispute: the open ones (count, amount) and what lost ones counted."""
        ...


class OutboxRepository(Protocol):
    async def add(self, events: Sequence[OutboxEvent], *, deliver: bool) -> None: ...
    async def get(self, event_id: str) -> OutboxEvent | None: ...
    async def list_newest(
        self,
        *,
        types: Sequence[str],
        refund_id: str | None,
        limit: int,
        before: tuple[int, int] | None,
        accounts: Sequence[str] | None = None,
    ) -> list[OutboxEvent]:
        """With `accounts`, only the events of those PSE accounts' payments."""
        ...

    async def list_after(
        self,
        *,
        after: tuple[int, int],
        types: Sequence[str],
        refund_id: str | None,
        limit: int,
        accounts: Sequence[str] | None = None,
    ) -> list[OutboxEvent]: ...
    async def claim_deliveries(
        self, now: datetime, lease_until: datetime, limit: int, claimer: int | None = None
    ) -> list[OutboxEvent]:
        """Recording the delivery (`record_delivery`) ends the claim."""
        ...

    async def record_delivery(
        self,
        attempt: DeliveryAttempt,
        *,
        status: DeliveryStatus,
        next_delivery_at: datetime | None,
    ) -> None: ...
    async def attempts(self, event_id: str) -> list[DeliveryAttempt]: ...
    async def oldest_undelivered(self) -> datetime | None: ...
    async def redeliver(self, event_id: str, now: datetime) -> bool: ...
    async def failed(
        self,
        *,
        limit: int,
        before_id: str | None,
        oldest_first: bool = False,
        accounts: Sequence[str] | None = None,
    ) -> list[OutboxEvent]:
        """Events whose delivery failed, newest first, before `before_id`
        (oldest first, after it, with `oldest_first`)."""
        ...

    async def failed_count(self, accounts: Sequence[str] | None = None) -> int: ...
    async def attempts_of(self, event_ids: Sequence[str]) -> list[DeliveryAttempt]:
        """The delivery attempts of these events, in the order they were made."""
        ...


class IdempotencyRepository(Protocol):
    async def insert_if_absent(self, record: IdempotencyRecord) -> bool: ...
    async def get(self, api_key_id: str, key: str) -> IdempotencyRecord | None: ...
    async def reclaim(
        self, api_key_id: str, key: str, *, stale_before: datetime, now: datetime
    ) -> bool: ...
    async def complete(self, api_key_id: str, key: str, status: int, body: bytes) -> None: ...
    async def delete(self, api_key_id: str, key: str) -> None: ...
    async def purge(self, created_before: datetime) -> int: ...


class WebhookRepository(Protocol):
    async def insert_if_new(
        self,
        received: ReceivedWebhook,
        status: WebhookStatus = ...,
        at: datetime | None = None,
    ) -> StoredWebhook | None:
        """Store the event as `status` (`received` unless told; decided `at`);
        None when it was stored before."""
        ...

    async def mark(
        self, webhook_id: int, status: WebhookStatus, refund_id: str | None, at: datetime
    ) -> None: ...
    async def waiting_for(
        self, pse_account: str, pse_refund_id: str | None, reference: str
    ) -> list[StoredWebhook]: ...
    async def stuck(self, received_before: datetime, limit: int) -> list[StoredWebhook]: ...
    async def for_refund(self, refund_id: str, limit: int) -> list[StoredWebhook]:
        """The events applied (or tried) to this refund, in the order received."""
        ...


class ApiKeyRepository(Protocol):
    async def add(self, key: ApiKey, key_hash: str) -> None: ...
    async def by_hash(self, key_hash: str) -> ApiKey | None: ...
    async def revoke(self, key_id: str, at: datetime) -> bool: ...
    async def list(self) -> list[ApiKey]: ...


class ConsoleSessionRepository(Protocol):
    """Console sessions, by the hash of their token."""

    async def add(self, session: ConsoleSession) -> None: ...
    async def get(self, token_hash: str) -> tuple[ConsoleSession, ApiKey] | None:
        """The session with its API key as stored now (revoked or not)."""
        ...

    async def touch(self, token_hash: str, at: datetime, *, clear_flashes: bool) -> None: ...
    async def add_flash(self, token_hash: str, flash: Flash) -> None: ...
    async def delete(self, token_hash: str) -> bool: ...
    async def delete_for_key(self, api_key_id: str) -> int: ...
    async def purge(self, idle_before: datetime, created_before: datetime) -> int:
        """Remove the sessions last seen before `idle_before` or opened before
        `created_before`."""
        ...


class AutoApprovalTotals(Protocol):
    """The amount auto-approved each day, per currency. Totals only grow."""

    async def lock_total(self, currency: str, day: str) -> int: ...
    async def add(self, currency: str, day: str, amount: int) -> None: ...
    async def add_within(self, currency: str, day: str, amount: int, limit: int) -> bool:
        """Add `amount` to the day's total if that keeps it at most `limit`, in
        one step that locks the day's row until the end of the transaction;
        False, adding nothing, when it would pass `limit`."""
        ...


class ReconciliationRepository(Protocol):
    async def add(self, reconciliation: Reconciliation) -> None: ...
    async def get(self, reconciliation_id: str) -> Reconciliation | None: ...
    async def update(self, reconciliation: Reconciliation) -> None: ...
    async def add_lines(self, lines: Sequence[ReconciliationLine]) -> None: ...
    async def add_judged_lines(
        self,
        reconciliation_id: str,
        pse_account: str,
        rows: Sequence[SettlementRow],
        judged: Sequence[ReconciliationLine] = (),
        line_ids: Sequence[int] | None = None,
    ) -> JudgedBatch:
        """Match refund lines against the account's refunds, judge them as
        `reconciliation.judge` does and store their outcome lines, with
        `judged` among them in file order (and `line_ids` as their ids)."""
        ...

    async def reserve_line_ids(self, count: int) -> list[int]: ...

    async def lines_by_id(self, line_ids: Sequence[int]) -> list[ReconciliationLine]: ...
    async def fail_stalled(self, started_before: datetime, now: datetime) -> int: ...
    async def lines(
        self, reconciliation_id: str, *, outcome: str | None, limit: int, after_id: int | None
    ) -> list[ReconciliationLine]: ...
    async def delete_lines(self, reconciliation_id: str) -> None: ...
    async def add_missing_in_file(
        self,
        reconciliation_id: str,
        pse_account: str,
        succeeded_from: datetime,
        succeeded_to: datetime,
    ) -> int: ...
    async def apply_settled_figures(self, reconciliation_id: str) -> int: ...
    async def settlement_disputes(
        self, pse_account: str, pse_dispute_ids: Sequence[str], pse_payment_ids: Sequence[str]
    ) -> KnownDisputes:
        """Our disputes of the account that dispute lines name, by the PSE's
        dispute id or their payment's PSE id, and the payments so named."""
        ...

    async def fx_totals(
        self,
        created_from: datetime | None,
        created_to: datetime | None,
        currency: str | None,
        accounts: Sequence[str] | None = None,
    ) -> list[FxTotal]: ...
    async def list(
        self, *, limit: int, before_id: str | None, accounts: Sequence[str] | None = None
    ) -> list[Reconciliation]:
        """Runs newest first; with `before_id`, only those created before it;
        with `accounts`, only runs of those PSE accounts."""
        ...


class AuditRepository(Protocol):
    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]: ...
    async def head(self) -> tuple[int, str, int, str]: ...
    async def after(self, seq: int, limit: int) -> list[AuditRecord]: ...
    async def search(
        self,
        *,
        refund_id: str | None,
        payment_id: str | None,
        request_id: str | None,
        at_from: datetime | None,
        at_to: datetime | None,
        limit: int,
        before_seq: int | None,
        oldest_first: bool = False,
        after_seq: int | None = None,
        without_kinds: Sequence[str] = (),
        without_reads: bool = False,
        accounts: Sequence[str] | None = None,
    ) -> list[AuditRecord]:
        """`without_kinds` leaves those kinds out; `without_reads` leaves out
        the API requests that only read (GET, HEAD); `accounts` keeps only the
        records of a refund or payment of those PSE accounts (and of nothing
        else)."""
        ...

    async def purge(self, older_than: datetime, now: datetime) -> int: ...


class AuditSink(Protocol):
    """Where the services note what happened, for the audit trail."""

    def record(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        refund_id: str | None = None,
        payment_id: str | None = None,
        actor: str | None = None,
    ) -> None: ...

    def record_refusal(self, kind: str, summary: dict[str, Any]) -> bool:
        """A refused stranger's request, as a small summary, within a budget."""
        ...


class UnitOfWork(Protocol):
    """One transaction. Rolls back on exit unless `commit()` was called."""

    payments: PaymentRepository
    refunds: RefundRepository
    disputes: DisputeRepository
    outbox: OutboxRepository
    idempotency: IdempotencyRepository
    webhooks: WebhookRepository
    api_keys: ApiKeyRepository
    auto_approvals: AutoApprovalTotals
    reconciliations: ReconciliationRepository
    audit: AuditRepository
    console_sessions: ConsoleSessionRepository

    def after_commit(self, callback: Callable[[], None]) -> None: ...
    def before_commit(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` in the transaction, just before its COMMIT: what it
        locks is held only from there to the end. Whatever it raises aborts
        the commit (the unit of work then rolls back)."""
        ...

    async def save_refund(
        self,
        refund: Refund,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        new: bool = False,
        answer: KeptAnswer | None = None,
        webhook: WebhookOutcome | None = None,
        waiting: WaitingFor | None = None,
    ) -> list[StoredWebhook]:
        """Write a new or changed refund, its payment's counters, the answer
        kept for the key of the request that made it (`answer`, whose claim is
        in this unit of work), the outcome of the webhook applied to it
        (`webhook`: a stored one's, as `webhooks.mark` writes it, or a received
        one stored with it; raises WebhookStoredBefore, writing nothing, when
        that event was stored before) and its new events (together, where the
        database allows); return the stored webhooks `waiting` names, as
        `webhooks.waiting_for` finds them (none without it)."""
        ...

    async def save_refund_if_unchanged(
        self,
        refund: Refund,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        read: Refund,
        waiting: WaitingFor | None = None,
    ) -> list[StoredWebhook] | None:
        """`save_refund` for a change decided without the refund's lock: the
        refund, its new history and its events are written only if its row
        still holds what `read` (the refund as read, before the change) holds,
        in one statement; None, with nothing written, when it does not. Not
        for a change that moves the payment's counters or adds approvals."""
        ...

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def commit(self) -> None: ...
