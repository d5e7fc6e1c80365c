"""Fuzzing of the settlement-file parsers: whatever a file holds, each one
reads it into rows of storable values, or refuses it with a
`SettlementFileError` naming a line. Any other exception would fail the whole
run with no line to fix, so it is a bug."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.adapters.settlement.parsers import (
    GENERIC_COLUMNS,
    SettlementFileError,
    open_settlement,
)
from app.domain.money import MAX_MINOR_UNITS, MIN_MINOR_UNITS, Money, is_currency
from app.domain.reconciliation import SettlementRow
from app.domain.reconciliation_disputes import SettledDispute

# Values near what each column expects, and values a broken export writes.
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "",
            " 5 ",
            "-0",
            "+5",
            "1e999999999",
            "-1E-999999999",
            "NaN",
            "sNaN",
            "Infinity",
            "\u00b2",
            "\u0661\u0662",
            "\uff11\uff12",
            "1_000",
            "0x10",
            "9" * 5000,
            "-" + "9" * 30,
            "12.5",
            "-12.345",
            "1,000",
            "\u00a05",
        ]
    ),
)
TIMES = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat(" ")),
    st.sampled_from(
        [
            "",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-02-30T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T23:59:60Z",
            "2026-11-27",
            "yesterday",
            "2026-11-27T08:00:00.1234567Z",
            "20261127T080000Z",
            " 2026-11-27T08:00:00Z ",
        ]
    ),
)
CODES = st.sampled_from(["JPY", "usd", " IDR ", "XXX", "", "KWD", "\u0130NR", "jpy\x00"])
STATUSES = st.sampled_from(["succeeded", "failed", "pending", " Failed ", "done", ""])
TYPES = st.sampled_from(["refund", " REFUND ", "charge", "dispute", "dispute_reversal", ""])
CATEGORIES = st.sampled_from(["refund", "refund_failure", "dispute", "dispute_reversal", "fee"])
IDS = st.one_of(st.sampled_from(["", "re_1", " rf_2 ", "du_3", "pi_4"]), st.text(max_size=12))
CELL = st.one_of(NUMBERS, TIMES, CODES, STATUSES, TYPES, IDS, st.text(max_size=20))

GENERIC_ROW = st.fixed_dictionaries(
    {
        "pse_refund_id": IDS,
        "reference": IDS,
        "type": TYPES,
        "amount": NUMBERS,
        "currency": CODES,
        "status": STATUSES,
        "settled_at": TIMES,
        "fee": NUMBERS,
        "settlement_amount": NUMBERS,
        "settlement_currency": CODES,
        "pse_dispute_id": IDS,
        "pse_payment_id": IDS,
    }
)
STRIPE_COLUMNS = (
    "reporting_category",
    "source_id",
    "gross",
    "currency",
    "fee",
    "created_utc",
    "customer_facing_amount",
    "customer_facing_currency",
    "refund_metadata[refund_id]",
    "charge_id",
    "payment_intent_id",
)
STRIPE_ROW = st.fixed_dictionaries(
    {
        "reporting_category": CATEGORIES,
        "source_id": IDS,
        "gross": NUMBERS,
        "currency": CODES,
        "fee": NUMBERS,
        "created_utc": TIMES,
        "customer_facing_amount": NUMBERS,
        "customer_facing_currency": CODES,
        "refund_metadata[refund_id]": IDS,
        "charge_id": IDS,
        "payment_intent_id": IDS,
    }
)


def csv_bytes(
    columns: tuple[str, ...], rows: list[dict[str, str]], mangled: list[list[str]]
) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    for cells in mangled:  # rows of the wrong width, or of any cells at all
        writer.writerow(cells)
    return out.getvalue().encode("utf-8", "surrogatepass")


def storable(amount: int | None) -> bool:
    return amount is None or MIN_MINOR_UNITS <= amount <= MAX_MINOR_UNITS


def in_range(moment: datetime | None) -> bool:
    return moment is None or (moment.tzinfo is UTC and 1970 <= moment.year <= 2999)


def check(data: bytes, provider: str) -> None:
    """Rows of storable values, or a refusal naming a line. Both formats
    refuse a refund of 0 (Stripe's also refuses -0.004 USD rather than round
    it to 0)."""
    try:
        rows = list(open_settlement(io.BytesIO(data), provider).rows)
    except SettlementFileError as refused:
        assert refused.line >= 1
        return
    for row in rows:
        if isinstance(row, SettlementRow):
            assert type(row.amount) is int and row.amount >= 1 and storable(row.amount)
            assert storable(row.fee) and storable(row.settlement_amount)
            assert is_currency(row.currency)
            assert row.settlement_currency is None or is_currency(row.settlement_currency)
            assert row.pse_refund_id or row.reference
            assert in_range(row.settled_at)
        else:
            assert isinstance(row, SettledDispute)
            for money in (row.amount, row.fee, row.settlement_amount):
                assert money is None or isinstance(money, Money)
            assert in_range(row.settled_at)


FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MANGLED = st.lists(st.lists(CELL, max_size=14), max_size=2)


@FUZZ
@given(rows=st.lists(GENERIC_ROW, max_size=6), mangled=MANGLED)
def test_a_generic_file_is_read_into_storable_rows_or_refused_at_a_line(rows, mangled):
    columns = (*GENERIC_COLUMNS, "pse_dispute_id", "pse_payment_id")
    check(csv_bytes(columns, rows, mangled), "komoju")


@FUZZ
@given(rows=st.lists(STRIPE_ROW, max_size=6), mangled=MANGLED)
def test_a_stripe_export_is_read_into_storable_rows_or_refused_at_a_line(rows, mangled):
    check(csv_bytes(STRIPE_COLUMNS, rows, mangled), "stripe")


@FUZZ
@given(data=st.binary(max_size=400))
def test_any_bytes_after_a_header_are_read_or_refused_at_a_line(data):
    check(",".join(GENERIC_COLUMNS).encode() + b"\n" + data, "komoju")
