"""Settlement-file parsers: formats, units, skipped rows and errors naming the line."""

from __future__ import annotations

import io

import pytest

from app.adapters.settlement.parsers import SettlementFileError, open_settlement
from app.domain.money import Money
from app.domain.reconciliation import SettledStatus, SettlementRow
from app.domain.reconciliation_disputes import DisputeMovement, SettledDispute

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
    assert first.money == Money(12000, "JPY")
    assert first.fee_money == Money(45, "USD")
    assert first.settlement_money == Money(8040, "USD")
    assert first.status is SettledStatus.SUCCEEDED
    assert first.settled_at.isoformat() == "2026-11-27T08:00:00+00:00"
    assert rows[1].pse_refund_id is None and rows[1].reference == "rf_2"
    assert rows[1].money == Money(1500, "KWD") and rows[1].fee_money is None


def test_columns_may_come_in_any_order_and_a_bom_is_ignored():
    header = "\ufeffstatus,type,amount,currency,pse_refund_id,reference,settled_at,fee,"
    header += "settlement_amount,settlement_currency\n"
    _, rows = parse(header + "failed,refund,100,USD,re_9,,,,,\n")
    assert rows[0].status is SettledStatus.FAILED and rows[0].money == Money(100, "USD")


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
        # Beyond what 64-bit minor units hold, each named by its column.
        ("re_1,,refund,9223372036854775808,JPY,succeeded,,,,", "amount: amount is beyond"),
        ("re_1,,refund,5,JPY,succeeded,,9223372036854775808,,", "fee: amount is beyond"),
        (
            "re_1,,refund,5,JPY,succeeded,,,-9223372036854775809,USD",
            "settlement_amount: amount is beyond",
        ),
        # More digits than int() reads (4,300), each column.
        ("re_1,,refund," + "9" * 5000 + ",JPY,succeeded,,,,", "amount: amount is beyond"),
        ("re_1,,refund,5,JPY,succeeded,,-" + "9" * 5000 + ",,", "fee: amount is beyond"),
        ("re_1,,refund,5,JPY,succeeded,,,1" + "0" * 5000 + ",USD", "settlement_amount: amount is"),
        # Digits that are not ASCII: str.isdigit() says yes to both, int()
        # refuses the first and reads the second as 12.
        ("re_1,,refund,\u00b2,JPY,succeeded,,,,", "amount '\u00b2' is not an integer of minor"),
        ("re_1,,refund,\u0661\u0662,JPY,succeeded,,,,", "amount '\u0661\u0662' is not an integer"),
        ("re_1,,refund,5,JPY,succeeded,,-\u00b2,,", "fee '-\u00b2' is not an integer"),
        ("re_1,,refund,5,JPY,succeeded,,,\u0661,USD", "settlement_amount '\u0661' is not"),
        # Times without a UTC form (astimezone() overflows) or beyond 1970-2999.
        (
            "re_1,,refund,5,JPY,succeeded,0001-01-01T00:00:00+01:00,,,",
            "settled_at '0001-01-01T00:00:00+01:00' is not a time between 1970 and 2999",
        ),
        ("re_1,,refund,5,JPY,succeeded,9999-12-31T23:59:59-01:00,,,", "not a time between"),
        ("re_1,,refund,5,JPY,succeeded,1969-12-31T23:59:59Z,,,", "not a time between"),
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
    assert refund.money == Money(3750, "JPY")
    assert refund.settlement_money == Money(2500, "USD") and refund.fee_money == Money(0, "USD")
    assert refund.reference == "rf_1" and refund.pse_refund_id == "re_1"
    assert refund.settled_at.isoformat() == "2026-11-27T08:00:00+00:00"
    assert failure.status is SettledStatus.FAILED and failure.money == Money(2500, "USD")


STRIPE = "created_utc,currency,gross,fee,reporting_category,source_id\n"


@pytest.mark.parametrize(
    ("gross", "message"),
    [
        ("NaN", "gross: NaN USD cannot be expressed in minor units"),
        ("-Infinity", "gross: Infinity USD cannot be expressed in minor units"),
        ("sNaN", "gross: sNaN USD cannot be expressed in minor units"),
        # Exponents beyond what decimal arithmetic takes (it would overflow).
        ("1e99999999", "gross: amount is beyond what can be stored"),
        ("-1E+999999999", "gross: amount is beyond what can be stored"),
        ("92233720368547758.08", "gross: amount is beyond what can be stored"),
        ("\u0661\u0662.00", "gross '\u0661\u0662.00' is not a decimal amount"),
        # Digits past the cent are never rounded into an amount (nor to 0).
        ("-0.004", "gross: 0.004 USD has more decimals than USD has"),
        ("-12.345", "gross: 12.345 USD has more decimals than USD has"),
        ("-0.00", "amount must be a positive number of minor units"),
    ],
)
def test_a_stripe_amount_that_is_no_amount_names_its_line(gross, message):
    with pytest.raises(SettlementFileError) as caught:
        parse(
            STRIPE
            + "2026-11-27 08:00:00,usd,-1.00,0,refund,re_0\n"
            + f"2026-11-27 08:00:00,usd,{gross},0,refund,re_1\n",
            provider="stripe",
        )
    assert str(caught.value).startswith(f"line 3: {message}")


def test_a_stripe_fee_or_customer_amount_past_its_currencys_decimals_names_its_line():
    header = "created_utc,currency,gross,fee,reporting_category,source_id,"
    header += "customer_facing_amount,customer_facing_currency\n"
    for cells, message in [
        ("usd,-1.00,0.125,refund,re_1,1.00,usd", "fee: 0.125 USD has more decimals"),
        ("usd,-1.00,0,refund,re_1,150.5,jpy", "customer_facing_amount: 150.5 JPY has more"),
    ]:
        with pytest.raises(SettlementFileError) as caught:
            parse(header + f"2026-11-27 08:00:00,{cells}\n", provider="stripe")
        assert str(caught.value).startswith(f"line 2: {message}")
    # Trailing zeros are no extra precision: 150.00 JPY is 150 yen.
    _, (row,) = parse(
        header + "2026-11-27 08:00:00,usd,-1.00,0.30,refund,re_1,150.00,jpy\n", provider="stripe"
    )
    assert row.money == Money(150, "JPY") and row.fee_money == Money(30, "USD")


def test_a_stripe_time_without_a_utc_form_names_its_line():
    with pytest.raises(SettlementFileError) as caught:
        parse(STRIPE + "0001-01-01 00:00:00+01:00,usd,-1.00,0,refund,re_1\n", provider="stripe")
    assert str(caught.value) == (
        "line 2: created_utc '0001-01-01 00:00:00+01:00' is not a time between 1970 and 2999"
    )


def test_a_stripe_amount_at_the_edge_of_64_bits_is_read():
    _, (row,) = parse(
        STRIPE + "2026-11-27 08:00:00,usd,-92233720368547758.07,0,refund,re_1\n",
        provider="stripe",
    )
    assert row.money == Money(2**63 - 1, "USD")


# -- dispute rows ----------------------------------------------------------------------


def test_generic_dispute_rows_name_their_dispute_or_payment_and_are_unsigned():
    header = GENERIC.rstrip("\n") + ",pse_dispute_id,pse_payment_id\n"
    fmt, rows = parse(
        header
        + "re_1,,refund,12000,JPY,succeeded,2026-11-27T08:00:00Z,,,,,\n"
        + ",,dispute,-5000,JPY,,2026-11-27T09:00:00Z,15,,,du_1,pi_1\n"
        + ",,Dispute_Reversal,5000,jpy,,2026-11-28T09:00:00Z,,34,USD,,pi_1\n"
        + "ch_1,,charge,999,JPY,succeeded,2026-11-27T08:00:00Z,,,,,\n"
    )
    assert fmt == "generic"
    refund, withdrawn, reinstated = rows
    assert isinstance(refund, SettlementRow) and refund.line == 2
    assert isinstance(withdrawn, SettledDispute)
    assert withdrawn.line == 3 and withdrawn.movement is DisputeMovement.WITHDRAWN
    assert withdrawn.pse_dispute_id == "du_1" and withdrawn.pse_payment_ids == ("pi_1",)
    assert withdrawn.amount == Money(5000, "JPY") and withdrawn.fee == Money(15, "JPY")
    assert withdrawn.settled_at.isoformat() == "2026-11-27T09:00:00+00:00"
    assert reinstated.movement is DisputeMovement.REINSTATED
    assert reinstated.pse_dispute_id is None and reinstated.amount == Money(5000, "JPY")
    assert reinstated.settlement_amount == Money(34, "USD")


def test_without_the_dispute_columns_a_dispute_row_names_its_dispute_in_pse_refund_id():
    _, rows = parse(GENERIC + "du_9,,dispute,700,USD,,,,,\n")
    (row,) = rows
    assert row.pse_dispute_id == "du_9" and row.pse_payment_ids == ()
    assert row.amount == Money(700, "USD")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (",,dispute,5,JPY,,,,,,,", "a dispute row needs pse_dispute_id or pse_payment_id"),
        (",,dispute,0,JPY,,,,,,du_1,", "a dispute row's amount must not be 0"),
        (",,dispute,5.5,JPY,,,,,,du_1,", "amount '5.5' is not an integer of minor units"),
        (",,dispute,5,JPY,,,,3,,du_1,", "settlement_amount needs settlement_currency"),
        (",,dispute_reversal,5,XXX,,,,,,,pi_1", "currency 'XXX' is not an ISO 4217 currency"),
    ],
)
def test_a_bad_dispute_row_is_named_with_what_is_wrong(line, message):
    header = GENERIC.rstrip("\n") + ",pse_dispute_id,pse_payment_id\n"
    with pytest.raises(SettlementFileError) as caught:
        parse(header + "re_0,,refund,1,JPY,succeeded,,,,,,\n" + line + "\n")
    assert caught.value.line == 3 and message in str(caught.value)


STRIPE_HEADER = (
    "balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,"
    "source_id,customer_facing_amount,customer_facing_currency,charge_id,payment_intent_id\n"
)


def test_stripe_dispute_and_dispute_reversal_rows_are_read_with_their_payment():
    lines = [
        "txn_1,2026-11-27 08:00:00,usd,-25.00,0.00,-25.00,refund,re_1,25.00,usd,ch_1,pi_1",
        "txn_2,2026-11-27 09:00:00,usd,-33.50,15.00,-48.50,dispute,du_1,5000,jpy,ch_2,pi_2",
        "txn_3,2026-11-29 09:00:00,usd,33.50,-15.00,48.50,dispute_reversal,du_1,5000,jpy,ch_2,pi_2",
        "txn_4,2026-11-29 10:00:00,usd,-10.00,0.00,-10.00,dispute,dp_old,,,ch_3,",
    ]
    fmt, rows = parse(STRIPE_HEADER + "\n".join(lines) + "\n", provider="stripe")
    assert fmt == "stripe_itemized"
    refund, withdrawn, reinstated, older = rows
    assert isinstance(refund, SettlementRow) and refund.pse_refund_id == "re_1"
    assert withdrawn.movement is DisputeMovement.WITHDRAWN
    assert withdrawn.pse_dispute_id == "du_1" and withdrawn.pse_payment_ids == ("ch_2", "pi_2")
    # The disputed amount as the customer paid it; the debit in the settlement currency.
    assert withdrawn.amount == Money(5000, "JPY")
    assert withdrawn.settlement_amount == Money(3350, "USD")
    assert withdrawn.fee == Money(1500, "USD")
    assert withdrawn.settled_at.isoformat() == "2026-11-27T09:00:00+00:00"
    assert reinstated.movement is DisputeMovement.REINSTATED
    assert reinstated.amount == Money(5000, "JPY") and reinstated.line == 4
    assert older.pse_dispute_id == "dp_old" and older.pse_payment_ids == ("ch_3",)
    assert older.amount == Money(1000, "USD")


def test_a_stripe_export_without_payment_columns_reads_dispute_rows_by_their_id():
    with pytest.raises(SettlementFileError, match=r"^line 3: a dispute row needs source_id"):
        parse(
            "balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,"
            "source_id\n"
            "txn_2,2026-11-27 09:00:00,jpy,-5000,2000,-7000,dispute,du_1\n"
            "txn_3,2026-11-27 09:00:00,jpy,-5000,0,-5000,dispute,\n",
            provider="stripe",
        )
    _, rows = parse(
        "balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,source_id\n"
        "txn_2,2026-11-27 09:00:00,jpy,-5000,2000,-7000,dispute,du_1\n",
        provider="stripe",
    )
    (row,) = rows
    assert row.pse_dispute_id == "du_1" and row.pse_payment_ids == ()
    assert row.amount == Money(5000, "JPY") and row.fee == Money(2000, "JPY")


# -- large files: lines are decoded a block at a time ------------------------

LINE = "re_{i},,refund,1000,JPY,succeeded,2026-11-27T08:00:00Z,,,\n"


def large(lines: int) -> bytes:
    """More than one block of lines (parsers._BLOCK bytes)."""
    text = GENERIC + "".join(LINE.format(i=i) for i in range(lines))
    assert len(text) > 2 * (1 << 20)
    return text.encode()


def test_a_file_of_several_blocks_reads_every_line_with_its_number():
    data = large(60_000)
    rows = list(open_settlement(io.BytesIO(data), "komoju").rows)
    assert len(rows) == 60_000
    assert [r.line for r in rows[:2]] == [2, 3] and rows[-1].line == 60_001
    assert rows[-1].pse_refund_id == "re_59999"


def test_a_bad_byte_deep_in_a_large_file_names_its_line():
    data = large(60_000).replace(b"re_45000,", b"re_\xff45000,")
    rows = open_settlement(io.BytesIO(data), "komoju").rows
    with pytest.raises(SettlementFileError, match=r"^line 45002: not UTF-8 text"):
        list(rows)


def test_an_earlier_bad_line_is_named_before_a_bad_byte_of_the_same_block():
    data = large(60_000).replace(b"re_44990,,refund,1000", b"re_44990,,refund,12.5")
    data = data.replace(b"re_45000,", b"re_\xff45000,")
    rows = open_settlement(io.BytesIO(data), "komoju").rows
    with pytest.raises(SettlementFileError, match=r"^line 44992: amount '12.5' is not an integer"):
        list(rows)


def test_crlf_lines_a_quoted_newline_and_unicode_read_as_one_by_one():
    text = GENERIC.replace("\n", "\r\n") + (
        're_1,"rf\n1",refund,100,JPY,succeeded,,,,\r\n'
        "re_ü,,refund,200,JPY,failed,,,,\r\n"
        "\r\n"
        "re_3,,refund,300,JPY,pending,2026-11-27 08:00:00,,,\r\n"
    )
    _, rows = parse("\ufeff" + text)
    assert [(r.line, r.pse_refund_id, r.reference) for r in rows] == [
        (2, "re_1", "rf\n1"),
        (3, "re_ü", None),
        (5, "re_3", None),
    ]
    assert rows[2].settled_at is not None and rows[2].settled_at.isoformat() == (
        "2026-11-27T08:00:00+00:00"
    )
