"""What every use case needs, handed over by the composition root."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Self

from app.domain.errors import NotFound, UnknownPseAccount
from app.domain.models import Payment, Refund
from app.domain.policy import RefundPolicy
from app.domain.ports import (
    AuditSink,
    Clock,
    PseGateway,
    UnitOfWork,
)
from app.domain.records import (
    AccountScope,
    KeptAnswer,
    OutboxEvent,
    StoredWebhook,
    WaitingFor,
    WebhookOutcome,
    in_scope,
)
from app.domain.resolution import CheckSchedule
from app.metrics import NoMetrics
from app.services.ids import new_id
from app.services.views import refund_view


@dataclass(frozen=True, slots=True)
class AccountInfo:
    name: str
    provider: str
    refund_window_days: int | None = None


class SubmissionQueue(Protocol):
    """Where approved refunds go to be sent to their PSE, after their commit.

    A queue that `sends_at_once` promises to send a refund right after the
    commit that created it: such a refund is marked `submitting` in that
    same transaction and handed over with `send_soon`, which saves the
    transaction that would only mark it. A refund so marked whose process
    dies before the call is an orphaned `submitting`, which resolution
    completes (it asks the PSE, and sends with the same key only if the
    PSE has nothing)."""

    @property
    def sends_at_once(self) -> bool: ...

    def submit_soon(self, refund_id: str) -> None: ...

    def send_soon(self, payment: Payment, refund: Refund) -> None: ...


class _NoAudit:
    def record(self, kind: str, data: dict[str, Any], **_ids: Any) -> None:
        return None

    def record_refusal(self, kind: str, summary: dict[str, Any]) -> bool:
        return False


class _NoQueue:
    sends_at_once = False

    def submit_soon(self, refund_id: str) -> None:
        return None

    def send_soon(self, payment: Payment, refund: Refund) -> None:
        return None


@dataclass(slots=True)
class Deps:
    uow: Callable[[], UnitOfWork]
    clock: Clock
    policy: RefundPolicy
    accounts: Mapping[str, AccountInfo]
    gateways: Mapping[str, PseGateway]
    queue: SubmissionQueue = field(default_factory=_NoQueue)
    stale_after_hours: float = 24.0
    schedule: CheckSchedule = field(default_factory=CheckSchedule)
    # Whether events are queued for the store's webhook (a URL is configured).
    deliver_events: bool = False
    audit: AuditSink = field(default_factory=_NoAudit)
    metrics: Any = field(default_factory=NoMetrics)
    # Units of work of one statement that commits by itself (see
    # SubmissionService.send); None: every change takes a transaction.
    single_statement_uow: Callable[[], UnitOfWork] | None = None

    def account(self, name: str) -> AccountInfo:
        try:
            return self.accounts[name]
        except KeyError:
            raise UnknownPseAccount(f"no PSE account named {name!r} is configured") from None

    def gateway(self, name: str) -> PseGateway:
        try:
            return self.gateways[name]
        except KeyError:
            raise UnknownPseAccount(f"no PSE account named {name!r} is configured") from None


def refund_deadline(deps: Deps, payment: Payment) -> datetime:
    """Until when the payment can be refunded through its PSE: its account's
    window, else the policy's."""
    window = None
    if payment.pse_account in deps.accounts:
        window = deps.accounts[payment.pse_account].refund_window_days
    return deps.policy.refund_deadline(payment.captured_at, window)


class Scoped:
    """A service whose reads and actions can be limited to one key's PSE
    accounts: `scoped(key.accounts)` is the same service seeing only those.

    The edges (the API's and the console's dependencies) hand each request
    the service scoped to its caller's key; what is outside the scope is
    answered as what does not exist (NotFound, the same words), and lists are
    filtered in their queries. The unscoped service (`scope` None) is the one
    the worker and the commands use, and what an unscoped key gets.
    """

    scope: AccountScope = None

    def scoped(self, accounts: AccountScope) -> Self:
        if accounts == self.scope:
            return self
        view = copy.copy(self)
        view.scope = accounts
        return view

    def sees(self, pse_account: str | None) -> bool:
        return in_scope(self.scope, pse_account)

    @property
    def accounts(self) -> list[str] | None:
        """The scope as a query's parameter: the accounts, or None for all."""
        return sorted(self.scope) if self.scope is not None else None


async def lock_refund(
    uow: UnitOfWork, refund_id: str, scope: AccountScope = None
) -> tuple[Payment, Refund]:
    """Lock the payment, then the refund: always in this order, so two
    transactions never wait on each other in a cycle. A refund outside
    `scope` is not found, as one that does not exist."""
    found = await uow.refunds.lock_with_payment(refund_id)
    if found is None or not in_scope(scope, found[1].pse_account):
        raise NotFound(f"no refund {refund_id}")
    return found


def reschedule(deps: Deps, refund: Refund) -> None:
    """A refund whose status changed gets the first self-check of its new status."""
    if refund.status_changed:
        deps.schedule.reschedule(refund, refund.updated_at)
        refund.status_changed = False


async def save(
    deps: Deps,
    uow: UnitOfWork,
    payment: Payment,
    refund: Refund,
    *,
    new: bool = False,
    answer: KeptAnswer | None = None,
    webhook: WebhookOutcome | None = None,
    waiting: WaitingFor | None = None,
) -> list[StoredWebhook]:
    """Write the refund (a new one with `new`), the payment's counters, the
    answer kept for the request's key (`answer`), the outcome of the webhook
    applied to it (`webhook`) and the refund's new events; return the stored
    webhooks `waiting` names."""
    reschedule(deps, refund)
    return await uow.save_refund(
        refund,
        payment,
        outbox_events(deps, uow, refund),
        deliver=deps.deliver_events,
        new=new,
        answer=answer,
        webhook=webhook,
        waiting=waiting,
    )


async def save_unless_moved(
    deps: Deps,
    uow: UnitOfWork,
    payment: Payment,
    refund: Refund,
    read: Refund,
    waiting: WaitingFor | None = None,
) -> list[StoredWebhook] | None:
    """`save` for a change decided without the refund's lock: written, with
    its events, only if the refund's row still holds `read` (the refund as
    it was read, before the change); None when it moved since, with nothing
    written (and nothing audited or counted, as the unit of work does not
    commit it)."""
    reschedule(deps, refund)
    return await uow.save_refund_if_unchanged(
        refund,
        payment,
        outbox_events(deps, uow, refund),
        deliver=deps.deliver_events,
        read=read,
        waiting=waiting,
    )


def audit_transitions(deps: Deps, uow: UnitOfWork, refund: Refund) -> None:
    """Note each status change in the audit trail once (and only if) it commits."""
    transitions, refund.transitions = refund.transitions, []
    for previous, change in transitions:
        if previous is None:
            uow.after_commit(
                lambda change=change: deps.metrics.refunds_created.labels(
                    refund.pse_account, change.status.value
                ).inc()
            )
        if change.status.is_final:
            uow.after_commit(
                lambda change=change: deps.metrics.refunds_finished.labels(
                    refund.pse_account, change.status.value
                ).inc()
            )
        uow.after_commit(
            lambda previous=previous, change=change: deps.audit.record(
                "refund.status",
                {
                    "from": previous.value if previous else None,
                    "to": change.status.value,
                    "detail": change.detail,
                    "at": change.at.isoformat(),
                },
                refund_id=refund.id,
                payment_id=refund.payment_id,
                actor=change.actor,
            )
        )


def outbox_events(deps: Deps, uow: UnitOfWork, refund: Refund) -> list[OutboxEvent]:
    """The refund's new events as outbox rows (its status changes noted for the
    audit trail once they commit)."""
    audit_transitions(deps, uow, refund)
    if not refund.events:
        return []
    snapshot = refund_view(refund)
    events = [
        OutboxEvent(
            id=new_id("evt"),
            type=event.type,
            refund_id=refund.id,
            payment_id=refund.payment_id,
            created_at=event.at,
            data=snapshot,
            detail=event.detail,
        )
        for event in refund.events
    ]
    refund.events.clear()
    return events
