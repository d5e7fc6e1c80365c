"""How the console writes amounts, ages and times, and when a session ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.console.formatting import age, error_message, money, rfc3339, roles, sentence
from app.domain.console import ConsoleSession, SessionEnd, SessionLimits
from app.domain.errors import SelfApprovalForbidden
from app.domain.records import ApiKey, Role

AT = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (12000, "JPY", "¥12,000"),
        (1500, "USD", "$15.00"),
        (1500, "EUR", "€15.00"),
        (123456, "GBP", "£1,234.56"),
        (1500, "KWD", "KWD 1.500"),
        (1234567, "INR", "INR 12,345.67"),
        (5, "CLF", "CLF 0.0005"),
        (-250, "USD", "-$2.50"),
        (-1500, "BHD", "BHD -1.500"),
        (0, "JPY", "¥0"),
    ],
)
def test_amounts_are_written_in_major_units_with_the_currencys_decimals(amount, currency, shown):
    assert money(amount, currency) == shown


def test_an_amount_without_a_currency_we_know_is_written_as_it_is():
    assert money(1500, "XYZ") == "1500 XYZ"
    assert money(None, "JPY") == "—"


@pytest.mark.parametrize(
    ("delta", "shown"),
    [
        (timedelta(seconds=20), "just now"),
        (timedelta(minutes=12), "12 min ago"),
        (timedelta(hours=3, minutes=40), "3 h ago"),
        (timedelta(hours=47), "47 h ago"),
        (timedelta(days=4, hours=5), "4 d ago"),
        (-timedelta(minutes=5), "in 5 min"),
    ],
)
def test_ages_read_in_the_largest_whole_unit(delta, shown):
    assert age(AT - delta, AT) == shown


def test_times_are_rfc3339_in_utc():
    tokyo = datetime(2026, 11, 27, 17, 30, 5, 123456, tzinfo=timezone(timedelta(hours=9)))
    assert rfc3339(tokyo) == "2026-11-27T08:30:05Z"
    assert rfc3339(AT) == "2026-11-27T08:00:00Z"


def test_a_refused_rule_is_a_sentence_with_its_code():
    message = error_message(SelfApprovalForbidden("the key that created this refund cannot decide"))
    assert message.text == "The key that created this refund cannot decide."
    assert message.code == "self_approval_forbidden"
    assert message.kind == "error"
    assert sentence("done!") == "Done!"


def test_roles_name_the_approval_level():
    key = ApiKey("key_1", "finance", "prk_abc", frozenset({Role.APPROVER, Role.STORE}), 2, AT)
    assert roles(key) == "approver (level 2), store"


def _session(created: datetime, seen: datetime) -> ConsoleSession:
    return ConsoleSession("h" * 64, "key_1", created, seen, "csrf")


def test_a_session_ends_after_its_idle_limit_and_its_absolute_limit():
    limits = SessionLimits()
    assert _session(AT, AT).ended(AT + timedelta(minutes=29), limits) is None
    assert _session(AT, AT).ended(AT + timedelta(minutes=30), limits) is SessionEnd.IDLE
    busy = _session(AT, AT + timedelta(hours=11, minutes=59))
    assert busy.ended(AT + timedelta(hours=11, minutes=59, seconds=30), limits) is None
    assert busy.ended(AT + timedelta(hours=12), limits) is SessionEnd.ABSOLUTE
