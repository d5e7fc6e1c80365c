"""When a refund is checked again with its PSE: the self-check schedule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from app.domain.models import Payment, Refund, RefundStatus
from app.domain.money import Money
from app.domain.policy import RefundPolicy
from app.domain.pse import (
    Accepted,
    PseRefund,
    PseRefundState,
)
from app.domain.records import OutboxEvent
from app.domain.resolution import CheckSchedule
from app.services.context import Deps
from app.services.submission import SubmissionService
from app.services.webhooks import WebhookService
from tests.fakes import FakeClock, FakeGateway
from tests.unit.builders import NOW, refund_in

SCHEDULE = CheckSchedule(
    backoff_seconds=(300, 3600, 86400),
    approved_grace_seconds=10,
    submitting_grace_seconds=60,
    pending_check_after_seconds=1800,
)


@pytest.mark.parametrize(
    ("status", "delay"),
    [
        (RefundStatus.APPROVED, 10),
        (RefundStatus.SUBMITTING, 60),
        (RefundStatus.UNKNOWN, 300),
        (RefundStatus.PENDING, 1800),
    ],
)
def test_a_refund_that_may_be_at_the_pse_gets_a_first_check(status, delay):
    assert SCHEDULE.first_check(status, NOW) == NOW + timedelta(seconds=delay)


@pytest.mark.parametrize(
    "status",
    [
        RefundStatus.PENDING_APPROVAL,
        RefundStatus.OFFLINE_REQUIRED,
        RefundStatus.SUCCEEDED,
        RefundStatus.FAILED,
        RefundStatus.REJECTED,
        RefundStatus.CANCELED,
        RefundStatus.OFFLINE_PAID,
    ],
)
def test_refunds_waiting_for_people_or_final_are_never_checked(status):
    assert SCHEDULE.first_check(status, NOW) is None


def test_a_status_change_restarts_the_schedule():
    _payment, refund = refund_in(RefundStatus.UNKNOWN)
    refund.resolve_attempts = 2
    SCHEDULE.reschedule(refund, NOW)
    assert refund.resolve_attempts == 0
    assert refund.next_check_at == NOW + timedelta(seconds=300)


def test_each_failed_check_waits_longer_then_the_spent_schedule_asks_a_person():
    _payment, refund = refund_in(RefundStatus.UNKNOWN)
    SCHEDULE.reschedule(refund, NOW)
    refund.events.clear()
    assert SCHEDULE.check_failed(refund, NOW) is False
    assert refund.next_check_at == NOW + timedelta(seconds=3600)
    assert SCHEDULE.check_failed(refund, NOW) is False
    assert refund.next_check_at == NOW + timedelta(seconds=86400)
    assert refund.events == []
    assert SCHEDULE.check_failed(refund, NOW) is True
    assert refund.next_check_at is None
    assert refund.status is RefundStatus.UNKNOWN
    assert [e.type for e in refund.events] == ["refund.needs_attention"]


def test_a_refund_entering_a_status_is_marked_for_rescheduling():
    payment, refund = refund_in(RefundStatus.APPROVED)
    refund.status_changed = False
    refund.start_submission(payment, NOW)
    assert refund.status_changed is True


# --------------------------------------------------------------------------
# What a check does with what the PSE holds under the refund's reference
# --------------------------------------------------------------------------


class OneRefundUnitOfWork:
    """One payment and its refund in memory: what the submission service locks,
    and the events it writes."""

    def __init__(self, payment: Payment, refund: Refund) -> None:
        self.payment, self.refund = payment, refund
        self.refunds = self.webhooks = self
        self.events: list[OutboxEvent] = []

    async def lock_with_payment(self, refund_id: str) -> tuple[Payment, Refund]:
        return self.payment, self.refund

    async def waiting_for(self, *_about: object) -> list[object]:
        return []

    async def save_refund(
        self,
        refund: Refund,
        payment: Payment,
        events: Sequence[OutboxEvent],
        *,
        deliver: bool,
        new: bool = False,
        answer: object = None,
        webhook: object = None,
        waiting: object = None,
    ) -> list[object]:
        self.events.extend(events)
        return []

    def after_commit(self, callback: object) -> None:
        return None

    async def commit(self) -> None:
        return None

    async def __aenter__(self) -> OneRefundUnitOfWork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def check_unknown_refund_finding(found: Accepted) -> tuple[Refund, list[OutboxEvent]]:
    payment, refund = refund_in(RefundStatus.UNKNOWN)
    uow = OneRefundUnitOfWork(payment, refund)
    deps = Deps(
        uow=lambda: uow,  # type: ignore[arg-type, return-value]
        clock=FakeClock(NOW),
        policy=RefundPolicy(),
        accounts={},
        gateways={refund.pse_account: FakeGateway(lookup_results=[found])},
    )
    checked = await SubmissionService(deps, WebhookService(deps)).resolve(refund.id)
    return checked, uow.events


def at_pse(pse_refund_id: str, state: PseRefundState) -> PseRefund:
    return PseRefund(pse_refund_id, state, Money(3_000, "JPY"), reference="rf_1")


async def test_a_check_finding_the_refund_made_twice_applies_the_paid_one_and_asks_a_person():
    found = Accepted(
        at_pse("re_paid", PseRefundState.SUCCEEDED),
        other_money_moving=(at_pse("re_twin", PseRefundState.PENDING),),
    )

    refund, events = await check_unknown_refund_finding(found)

    assert (refund.status, refund.pse_refund_id) == (RefundStatus.SUCCEEDED, "re_paid")
    assert [e.type for e in events] == ["refund.succeeded", "refund.needs_attention"]
    assert "re_paid" in (events[1].detail or "") and "re_twin" in (events[1].detail or "")


async def test_a_check_finding_one_refund_that_moved_money_asks_no_one():
    refund, events = await check_unknown_refund_finding(
        Accepted(at_pse("re_paid", PseRefundState.SUCCEEDED))
    )

    assert refund.status is RefundStatus.SUCCEEDED
    assert [e.type for e in events] == ["refund.succeeded"]
