"""Money: integer minor units, ISO 4217 exponents, half-even conversions."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.errors import CurrencyMismatch, InvalidMoney, UnknownCurrency
from app.domain.money import CURRENCY_EXPONENTS, Money, exponent, is_currency, parse_rate

ALL_CURRENCIES = sorted(CURRENCY_EXPONENTS)
# What the database stores: a signed 64-bit integer of minor units.
BIGINT = st.integers(min_value=-(2**63), max_value=2**63 - 1)


# -- currencies and minor units ---------------------------------------------


@pytest.mark.parametrize(
    ("currency", "decimals"),
    [("JPY", 0), ("KRW", 0), ("USD", 2), ("EUR", 2), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_each_currency_has_its_iso_4217_number_of_decimals(currency: str, decimals: int) -> None:
    assert exponent(currency) == decimals


@pytest.mark.parametrize(
    ("amount", "currency", "major"),
    [
        (1500, "JPY", Decimal("1500")),
        (1500, "USD", Decimal("15.00")),
        (1500, "KWD", Decimal("1.500")),
        (1, "KWD", Decimal("0.001")),
        (-250, "USD", Decimal("-2.50")),
        (0, "USD", Decimal("0")),
    ],
)
def test_to_major_reads_minor_units_in_the_currencys_exponent(
    amount: int, currency: str, major: Decimal
) -> None:
    assert Money(amount, currency).to_major() == major


def test_to_major_keeps_the_currencys_decimal_places() -> None:
    assert str(Money(1500, "USD").to_major()) == "15.00"
    assert str(Money(1500, "KWD").to_major()) == "1.500"
    assert str(Money(1500, "JPY").to_major()) == "1500"


def test_money_prints_as_major_units_and_code() -> None:
    assert str(Money(1234, "USD")) == "12.34 USD"


@pytest.mark.parametrize("amount", [1.0, 15.5, Decimal("15"), "1500", None])
def test_an_amount_that_is_not_an_integer_is_refused(amount: object) -> None:
    with pytest.raises(InvalidMoney):
        Money(amount, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [True, False])
def test_a_boolean_is_not_an_amount(amount: bool) -> None:
    with pytest.raises(InvalidMoney):
        Money(amount, "USD")


@pytest.mark.parametrize("currency", ["XXX", "usd", "JP", "", "Yen"])
def test_an_unknown_currency_code_is_refused(currency: str) -> None:
    assert not is_currency(currency)
    with pytest.raises(UnknownCurrency):
        Money(100, currency)


def test_an_unknown_currency_is_a_money_validation_error() -> None:
    with pytest.raises(InvalidMoney) as info:
        exponent("ABC")
    assert info.value.code == "validation_error"


def test_zero_is_zero_minor_units_of_the_currency() -> None:
    assert Money.zero("KWD") == Money(0, "KWD")


# -- arithmetic and comparison ----------------------------------------------


def test_amounts_of_one_currency_add_and_subtract() -> None:
    assert Money(1500, "USD") + Money(250, "USD") == Money(1750, "USD")
    assert Money(1500, "USD") - Money(2000, "USD") == Money(-500, "USD")


def test_amounts_of_one_currency_compare_by_value() -> None:
    small, large = Money(100, "JPY"), Money(101, "JPY")
    assert small < large
    assert small <= large
    assert small <= Money(100, "JPY")
    assert large > small
    assert large >= small
    assert large >= Money(101, "JPY")
    assert not large < small
    assert not small > large


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
    ids=["add", "sub", "lt", "le", "gt", "ge"],
)
def test_arithmetic_and_ordering_across_currencies_are_refused(operation) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CurrencyMismatch) as info:
        operation(Money(100, "USD"), Money(100, "JPY"))
    assert info.value.code == "currency_mismatch"


def test_equal_numbers_in_different_currencies_are_not_equal() -> None:
    assert Money(100, "USD") != Money(100, "JPY")


# -- from_major and convert: half-even, explicitly ---------------------------


@pytest.mark.parametrize(
    ("major", "currency", "minor"),
    [
        (Decimal("0.5"), "JPY", 0),
        (Decimal("1.5"), "JPY", 2),
        (Decimal("2.5"), "JPY", 2),
        (Decimal("3.5"), "JPY", 4),
        (Decimal("-0.5"), "JPY", 0),
        (Decimal("-1.5"), "JPY", -2),
        (Decimal("2.51"), "JPY", 3),
        (Decimal("2.49"), "JPY", 2),
        (Decimal("0.005"), "USD", 0),
        (Decimal("0.015"), "USD", 2),
        (Decimal("0.025"), "USD", 2),
        (Decimal("12.34"), "USD", 1234),
        (Decimal("1.2345"), "KWD", 1234),
        (Decimal("1.2355"), "KWD", 1236),
        (Decimal("15"), "USD", 1500),
    ],
)
def test_from_major_rounds_half_to_even_in_minor_units(
    major: Decimal, currency: str, minor: int
) -> None:
    assert Money.from_major(major, currency) == Money(minor, currency)


@pytest.mark.parametrize(
    ("major", "says"),
    [
        (Decimal("NaN"), "cannot be expressed in minor units"),
        (Decimal("sNaN"), "cannot be expressed in minor units"),
        (Decimal("-Infinity"), "cannot be expressed in minor units"),
        # Exponents beyond decimal arithmetic's limits: refused before any arithmetic.
        (Decimal("1e999999999"), "beyond what can be stored"),
        (Decimal("-1e999999999"), "beyond what can be stored"),
        (Decimal("92233720368547758.08"), "beyond what can be stored"),
        (Decimal("-92233720368547758.09"), "beyond what can be stored"),
    ],
)
def test_from_major_refuses_what_is_no_storable_amount(major: Decimal, says: str) -> None:
    with pytest.raises(InvalidMoney) as info:
        Money.from_major(major, "USD")
    assert says in info.value.detail


def test_from_major_takes_the_64_bit_edges_and_rounds_away_a_vanishing_amount() -> None:
    assert Money.from_major(Decimal("92233720368547758.07"), "USD").amount == 2**63 - 1
    assert Money.from_major(Decimal("-92233720368547758.08"), "USD").amount == -(2**63)
    assert Money.from_major(Decimal("1e-999999999"), "USD") == Money(0, "USD")


def test_exact_from_major_refuses_decimals_the_currency_does_not_have() -> None:
    assert Money.from_major(Decimal("12.50"), "USD", exact=True) == Money(1250, "USD")
    assert Money.from_major(Decimal("1.500"), "KWD", exact=True) == Money(1500, "KWD")
    with pytest.raises(InvalidMoney) as info:
        Money.from_major(Decimal("0.005"), "USD", exact=True)
    assert "more decimals than USD has" in info.value.detail
    with pytest.raises(InvalidMoney):
        Money.from_major(Decimal("1.5"), "JPY", exact=True)


@pytest.mark.parametrize(
    ("money", "rate", "to", "expected"),
    [
        (Money(1, "JPY"), "0.5", "JPY", Money(0, "JPY")),
        (Money(3, "JPY"), "0.5", "JPY", Money(2, "JPY")),
        (Money(5, "JPY"), "0.5", "JPY", Money(2, "JPY")),
        (Money(1, "USD"), "50", "JPY", Money(0, "JPY")),
        (Money(1, "USD"), "150", "JPY", Money(2, "JPY")),
        (Money(1, "USD"), "250", "JPY", Money(2, "JPY")),
        (Money(12_000, "JPY"), "0.0067", "USD", Money(8_040, "USD")),
        (Money(100, "USD"), "0.3075", "KWD", Money(308, "KWD")),
        (Money(100, "USD"), "0.3085", "KWD", Money(308, "KWD")),
        (Money(1_000, "KWD"), "3.25", "USD", Money(325, "USD")),
    ],
)
def test_convert_multiplies_major_units_by_the_rate_and_rounds_half_to_even(
    money: Money, rate: str, to: str, expected: Money
) -> None:
    assert money.convert(Decimal(rate), to) == expected


def test_convert_to_an_unknown_currency_is_refused() -> None:
    with pytest.raises(UnknownCurrency):
        Money(100, "USD").convert(Decimal(1), "XYZ")


@settings(max_examples=200, deadline=None, database=None)
@given(currency=st.sampled_from(ALL_CURRENCIES), amount=BIGINT, one=st.sampled_from(["1", "1.0"]))
def test_converting_to_the_same_currency_at_rate_one_changes_nothing(
    currency: str, amount: int, one: str
) -> None:
    money = Money(amount, currency)
    assert money.convert(Decimal(one), currency) == money


@settings(max_examples=300, deadline=None, database=None)
@given(currency=st.sampled_from(ALL_CURRENCIES), amount=BIGINT)
def test_to_major_and_back_returns_the_same_money_in_every_currency(
    currency: str, amount: int
) -> None:
    money = Money(amount, currency)
    assert Money.from_major(money.to_major(), currency) == money


@settings(max_examples=200, deadline=None, database=None)
@given(currency=st.sampled_from(ALL_CURRENCIES), amount=BIGINT)
def test_to_major_is_minor_units_divided_by_ten_to_the_exponent(currency: str, amount: int) -> None:
    major = Money(amount, currency).to_major()
    assert major * (10 ** exponent(currency)) == amount


def test_to_major_is_exact_at_the_largest_storable_amount() -> None:
    amount = 2**63 - 1
    assert Money(amount, "KWD").to_major().scaleb(3) == amount


@pytest.mark.parametrize("amount", [2**63, -(2**63) - 1, 10**30 + 1])
def test_amounts_beyond_64_bit_minor_units_are_refused(amount: int) -> None:
    with pytest.raises(InvalidMoney):
        Money(amount, "USD")


# -- exchange rates -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [("0.0067", Decimal("0.0067")), ("1", Decimal(1)), ("149.25", Decimal("149.25"))],
)
def test_a_positive_decimal_string_is_a_rate(text: str, rate: Decimal) -> None:
    assert parse_rate(text) == rate


def test_a_decimal_rate_is_taken_as_is() -> None:
    assert parse_rate(Decimal("0.0067")) == Decimal("0.0067")


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "0.000",
        "-0",
        "-1",
        "-0.0067",
        "NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        "abc",
        "",
        "1,5",
        Decimal(0),
        Decimal(-2),
        Decimal("NaN"),
        Decimal("Infinity"),
        None,
        ["1"],
    ],
)
def test_a_rate_that_is_not_a_positive_finite_decimal_is_refused(value: object) -> None:
    with pytest.raises(InvalidMoney):
        parse_rate(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["1e-6", "1E+3", "0.0000000000001", "1234567890123", " 1", "1.", ".5", "+1", "1_000", "\u0661"],
)
def test_a_rate_must_be_plain_digits_of_a_sane_length(value: str) -> None:
    with pytest.raises(InvalidMoney):
        parse_rate(value)


def test_the_longest_sane_rates_are_accepted() -> None:
    assert parse_rate("0.000000000001") == Decimal("1E-12")
    assert parse_rate("999999999999.999999999999") == Decimal("999999999999.999999999999")
    assert parse_rate(Decimal("1E+2")) == Decimal(100)


@pytest.mark.parametrize("value", [0.0067, True])
def test_a_float_or_boolean_rate_is_refused(value: object) -> None:
    with pytest.raises(InvalidMoney):
        parse_rate(value)  # type: ignore[arg-type]
