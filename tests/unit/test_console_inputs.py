"""How the console reads what people type into its filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.console import inputs
from app.console.paging import decode_cursor, encode_cursor, link
from app.domain.errors import InvalidInput, UnknownCurrency


@pytest.mark.parametrize(
    ("typed", "currency", "minor"),
    [
        ("12000", "JPY", 12_000),
        ("12,000", "JPY", 12_000),
        ("15", "USD", 1_500),
        ("15.00", "USD", 1_500),
        ("1.5", "KWD", 1_500),
        ("1.500", "KWD", 1_500),
        ("0", "EUR", 0),
    ],
)
def test_amounts_are_major_units_of_their_currency(typed, currency, minor):
    assert inputs.amount(typed, currency, "The amount") == minor


@pytest.mark.parametrize(
    ("typed", "currency", "says"),
    [
        ("12.5", "JPY", "The amount has more decimals than JPY has (0)"),
        ("1.0001", "KWD", "The amount has more decimals than KWD has (3)"),
        ("-5", "USD", "The amount cannot be negative"),
        ("ten", "USD", "The amount must be a number such as 15.00, not 'ten'"),
        ("Infinity", "USD", "The amount must be a number"),
        ("1e30", "USD", "The amount is larger than any amount a refund can have"),
        ("1e999999999", "USD", "The amount is larger than any amount a refund can have"),
        ("5", None, "an amount range needs its currency"),
    ],
)
def test_an_amount_that_cannot_be_read_is_refused_naming_its_field(typed, currency, says):
    with pytest.raises(InvalidInput) as refused:
        inputs.amount(typed, currency, "The amount")
    assert says in refused.value.detail


def test_a_currency_is_a_known_code_in_any_case():
    assert inputs.currency("jpy") == "JPY"
    assert inputs.currency("") is None
    with pytest.raises(UnknownCurrency):
        inputs.currency("ABC")


@pytest.mark.parametrize(
    ("typed", "end"),
    [
        ("9999-12-31", True),  # its next midnight is past the calendar's end
        ("0001-01-01T00:00:00+01:00", False),  # no UTC form
        ("1969-12-31", False),
        ("3000-01-01T00:00:00Z", False),
    ],
)
def test_a_time_beyond_1970_2999_is_refused_naming_its_field(typed, end):
    with pytest.raises(InvalidInput) as refused:
        inputs.instant(typed, "To", end=end)
    assert refused.value.detail.startswith("To must be between 1970 and 2999")


def test_a_day_that_ends_a_range_counts_whole():
    assert inputs.instant("2026-11-27", "From") == datetime(2026, 11, 27, tzinfo=UTC)
    assert inputs.instant("2026-11-27", "To", end=True) == datetime(2026, 11, 28, tzinfo=UTC)
    assert inputs.instant("2026-11-27T17:00:00+09:00", "From") == datetime(
        2026, 11, 27, 8, tzinfo=UTC
    )
    assert inputs.instant("", "From") is None
    for typed in ("2026-11-27T08:00:00", "27/11/2026", "soon"):
        with pytest.raises(InvalidInput, match="From must be a day such as 2026-11-27"):
            inputs.instant(typed, "From")


def test_overlong_text_is_refused():
    assert inputs.text("  ORD-1  ", "The id") == "ORD-1"
    with pytest.raises(InvalidInput, match="at most 100 characters"):
        inputs.text("x" * 101, "The id")


def test_cursors_are_the_apis_and_a_forged_one_is_refused():
    assert (
        encode_cursor("rf_123") == "YzE6cmZfMTIz"
    )  # base64url of "c1:rf_123", as the API writes it
    assert decode_cursor(encode_cursor("rf_123")) == "rf_123"
    assert decode_cursor(None) is None and decode_cursor("") is None
    for forged in ("nope", "YzE6", "x" * 500, "%%%"):
        with pytest.raises(InvalidInput, match="not one the console gave"):
            decode_cursor(forged)


def test_links_keep_their_filters_and_leave_out_empty_ones():
    assert link("/console/refunds", [("status", "pending"), ("q", ""), ("status", "unknown")]) == (
        "/console/refunds?status=pending&status=unknown"
    )
    assert link("/console/refunds", [("q", "")]) == "/console/refunds"
