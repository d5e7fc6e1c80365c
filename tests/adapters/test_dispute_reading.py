"""The checks every adapter's dispute translation goes through (app/adapters/pse/disputes.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.adapters.pse.disputes import (
    UnreadableDispute,
    dispute_event,
    dispute_report,
    dispute_status,
    iso_time,
    unix_time,
)
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.pse import InvalidWebhookPayload

_STATUSES = {"open": DisputeStatus.OPEN, "lost": DisputeStatus.LOST}


def test_a_known_status_is_mapped_and_an_unknown_one_is_never_guessed() -> None:
    assert dispute_status("lost", _STATUSES) is DisputeStatus.LOST
    for value in ("won", "LOST", None, 3, ""):
        with pytest.raises(UnreadableDispute, match="unknown dispute status"):
            dispute_status(value, _STATUSES)


def test_unix_seconds_become_aware_utc_and_zero_or_null_is_no_time() -> None:
    assert unix_time(1768953599, "due_by") == datetime(2026, 1, 20, 23, 59, 59, tzinfo=UTC)
    assert unix_time(0, "due_by") is None
    assert unix_time(None, "due_by") is None
    # 10**11 is the year 5138: readable, but beyond the years a time may be.
    for value in (-1, True, 1.5, "1768953599", 10**20, 10**11):
        with pytest.raises(UnreadableDispute, match="due_by"):
            unix_time(value, "due_by")


def test_iso_times_need_a_zone_and_come_back_in_utc() -> None:
    assert iso_time("2026-03-15T19:50:51.724Z", "due_date") == datetime(
        2026, 3, 15, 19, 50, 51, 724000, tzinfo=UTC
    )
    assert iso_time("2026-03-16T02:50:51+07:00", "due_date") == datetime(
        2026, 3, 15, 19, 50, 51, tzinfo=UTC
    )
    moment = iso_time("2026-03-16T02:50:51+07:00", "due_date")
    assert moment is not None and moment.tzinfo is UTC
    assert iso_time(None, "due_date") is None
    assert iso_time("", "due_date") is None
    with pytest.raises(UnreadableDispute, match="no time zone"):
        iso_time("2026-03-15T19:50:51", "due_date")
    with pytest.raises(UnreadableDispute, match="no time zone"):
        iso_time("2026-03-15", "due_date")
    for value in ("15/03/2026", 1768953599):
        with pytest.raises(UnreadableDispute, match="due_date"):
            iso_time(value, "due_date")
    # No UTC form (astimezone() overflows), or beyond the years a time may be.
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1900-01-01T00:00:00Z"):
        with pytest.raises(UnreadableDispute, match="due_date is not a time between 1970 and 2999"):
            iso_time(value, "due_date")


def _report(**overrides: object) -> DisputeReport:
    fields: dict[str, object] = {
        "pse_dispute_id": "du_1",
        "status": DisputeStatus.OPEN,
        "amount": Money(5000, "JPY"),
        "reason": "fraudulent",
        "evidence_due_by": None,
        "opened_at": datetime(2026, 1, 1, tzinfo=timezone(timedelta(0))),
        "pse_payment_ids": ("ch_1", "pi_1"),
    }
    fields.update(overrides)
    return dispute_report(**fields)  # type: ignore[arg-type]


def test_a_report_keeps_each_payment_id_once_in_order() -> None:
    report = _report(pse_payment_ids=("ch_1", "", "pi_1", "ch_1"))

    assert report.pse_payment_ids == ("ch_1", "pi_1")


@pytest.mark.parametrize(
    ("reason", "kept"), [("  fraudulent ", "fraudulent"), ("  ", None), (7, None)]
)
def test_a_reason_is_text_or_nothing(reason: object, kept: str | None) -> None:
    assert _report(reason=reason).reason == kept


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        pytest.param({"pse_dispute_id": None}, "no id", id="no-id"),
        pytest.param({"pse_dispute_id": "  "}, "no id", id="blank-id"),
        pytest.param({"amount": None}, "amount", id="no-amount"),
        pytest.param({"amount": Money(0, "JPY")}, "positive", id="zero"),
        pytest.param({"amount": Money(-5, "JPY")}, "positive", id="negative"),
        pytest.param({"pse_payment_ids": ()}, "no payment", id="no-payment"),
        pytest.param({"pse_payment_ids": ("",)}, "no payment", id="empty-payment"),
    ],
)
def test_a_report_without_what_the_service_needs_is_unreadable(
    overrides: dict[str, object], why: str
) -> None:
    with pytest.raises(UnreadableDispute, match=why):
        _report(**overrides)


def test_an_unreadable_dispute_becomes_an_invalid_payload_with_its_reason() -> None:
    def unreadable() -> DisputeReport:
        raise UnreadableDispute("unknown dispute status 'x'")

    with pytest.raises(InvalidWebhookPayload) as raised:
        dispute_event("evt_1", "charge.dispute.updated", unreadable)

    assert str(raised.value) == (
        "charge.dispute.updated does not carry a readable dispute: unknown dispute status 'x'"
    )
    event = dispute_event("evt_1", "charge.dispute.created", _report)
    assert (event.event_id, event.event_type, event.refund) == (
        "evt_1",
        "charge.dispute.created",
        None,
    )
    assert event.dispute == _report()
