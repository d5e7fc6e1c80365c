"""Settlement-file parsers: formats, units, skipped rows and errors naming the line."""

from __future__ import annotations

import io

import pytest

from app.adapters.settlement.parsers import SettlementFileError, open_settlement
from app.domain.money import Money
from app.domain.reconciliation import SettledStatus

GENERIC = (
    "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
    "settlement_amount,settlement_currency\n"
)


def parse(text: str, provider: str = "komoju"):
    opened = open_settlement(io.BytesIO(text.encode()), provider)
    return opened.format, list(opened.rows)


def test_the_generic_format_reads_minor_units_fees_and_settled_amounts():
    fmt, rows = parse(
        GENERIC
        + "re_1,rf_1,refund,12000,JPY,succeeded,2026-11-27T08:00:00Z,45,8040,USD\n"
        + "ch_1,,charge,999,JPY,succeeded,2026-11-27T08:00:00Z,,,\n"
        + ",rf_2,refund,1500,KWD,pending,,,,\n"
    )
    assert fmt == "generic"
    assert [r.line for r in rows] == [2, 4]
    first = rows[0]
    assert first.amount == Money(12000, "JPY")
    assert first.fee == Money(45, "USD") and first.settlement_amount == Money(8040, "USD")
    assert first.status is SettledStatus.SUCCEEDED
    assert first.settled_at.isoformat() == "2026-11-27T08:00:00+00:00"
    assert rows[1].pse_refund_id is None and rows[1].reference == "rf_2"
    assert rows[1].amount == Money(1500, "KWD")


def test_columns_may_come_in_any_order_and_a_bom_is_ignored():
    header = "\ufeffstatus,type,amount,currency,pse_refund_id,reference,settled_at,fee,"
    header += "settlement_amount,settlement_currency\n"
    _, rows = parse(header + "failed,refund,100,USD,re_9,,,,,\n")
    assert rows[0].status is SettledStatus.FAILED and rows[0].amount == Money(100, "USD")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("re_1,,refund,12.5,JPY,succeeded,,,,", "amount '12.5' is not an integer of minor units"),
        ("re_1,,refund,0,JPY,succeeded,,,,", "amount must be a positive number of minor units"),
        ("re_1,,refund,5,XXX,succeeded,,,,", "currency 'XXX' is not an ISO 4217 currency"),
        ("re_1,,refund,5,JPY,done,,,,", "status 'done' is not succeeded, failed or pending"),
        (",,refund,5,JPY,succeeded,,,,", "a refund row needs pse_refund_id or reference"),
        ("re_1,,refund,5,JPY,succeeded,yesterday,,,", "settled_at 'yesterday' is not an RFC 3339"),
        ("re_1,,refund,5,JPY,succeeded,,,100,", "settlement_amount needs settlement_currency"),
        ("re_1,,refund,5,JPY", "5 fields, the header has 10"),
    ],
)
def test_a_bad_line_is_named_with_what_is_wrong(line, message):
    with pytest.raises(SettlementFileError) as caught:
        parse(GENERIC + "re_0,,refund,1,JPY,succeeded,,,,\n" + line + "\n")
    assert caught.value.line == 3
    assert message in str(caught.value)
    assert str(caught.value).startswith("line 3: ")


def test_an_unknown_header_and_an_empty_file_are_refused_at_line_one():
    with pytest.raises(SettlementFileError, match=r"^line 1: unknown header"):
        parse("id,amount\n1,2\n")
    with pytest.raises(SettlementFileError, match=r"^line 1: the file is empty"):
        parse("")


def test_bytes_that_are_not_utf8_name_their_line():
    opened = open_settlement(io.BytesIO(GENERIC.encode() + b"re_1,\xff\n"), "komoju")
    with pytest.raises(SettlementFileError, match=r"^line 2: not UTF-8 text"):
        list(opened.rows)


def test_a_stripe_itemized_export_reads_refunds_and_failures_in_major_units():
    fmt, rows = parse(
        "balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,"
        "source_id,customer_facing_amount,customer_facing_currency,refund_metadata[refund_id]\n"
        "txn_1,2026-11-27 08:00:00,usd,-25.00,0.00,-25.00,refund,re_1,3750,jpy,rf_1\n"
        "txn_2,2026-11-27 09:00:00,usd,25.00,0.00,25.00,refund_failure,re_2,25.00,usd,\n"
        "txn_3,2026-11-27 09:00:00,usd,100.00,3.20,96.80,charge,ch_1,100.00,usd,\n",
        provider="stripe",
    )
    assert fmt == "stripe_itemized"
    refund, failure = rows
    assert refund.amount == Money(3750, "JPY")
    assert refund.settlement_amount == Money(2500, "USD") and refund.fee == Money(0, "USD")
    assert refund.reference == "rf_1" and refund.pse_refund_id == "re_1"
    assert refund.settled_at.isoformat() == "2026-11-27T08:00:00+00:00"
    assert failure.status is SettledStatus.FAILED and failure.amount == Money(2500, "USD")
