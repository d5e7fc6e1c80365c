"""When a refund is checked again with its PSE: the self-check schedule."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.domain.models import RefundStatus
from app.domain.resolution import CheckSchedule
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
