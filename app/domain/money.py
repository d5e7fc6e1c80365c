"""Money in integer minor units with an ISO 4217 currency.

Amounts never pass through floats. Conversions between currencies use
`Decimal` rates and round half-even, explicitly, in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, DecimalException
from functools import lru_cache

from app.domain.errors import CurrencyMismatch, InvalidMoney, UnknownCurrency

# ISO 4217 active codes by minor-unit exponent. Codes absent from the
# zero/three/four-decimal sets use two decimals.
_ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split()
)
_THREE_DECIMAL = frozenset("BHD IQD JOD KWD LYD OMR TND".split())
_FOUR_DECIMAL = frozenset("CLF UYW".split())
_TWO_DECIMAL = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL
    BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK
    DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF
    IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA
    MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB
    PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS
    SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS
    VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL
    """.split()
)

# Amounts are stored as 64-bit integers.
MIN_MINOR_UNITS, MAX_MINOR_UNITS = -(2**63), 2**63 - 1
# The most significant digit of a storable amount is at most 10**18.
_MAX_MINOR_DIGITS = len(str(MAX_MINOR_UNITS)) - 1

# Enough digits for any 64-bit amount times any sane rate, so Decimal
# arithmetic never rounds before the one explicit half-even step.
_EXACT = Context(prec=60)

CURRENCY_EXPONENTS: dict[str, int] = {
    **{code: 2 for code in _TWO_DECIMAL},
    **{code: 0 for code in _ZERO_DECIMAL},
    **{code: 3 for code in _THREE_DECIMAL},
    **{code: 4 for code in _FOUR_DECIMAL},
}


def is_currency(code: str) -> bool:
    return code in CURRENCY_EXPONENTS


def exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(currency) from None


# A rate is written as plain decimal digits, e.g. "0.0067" or "151.25": no
# exponent, sign, NaN or infinity, and few enough digits to be a real quote.
RATE_MAX_INTEGER_DIGITS = 12
RATE_MAX_FRACTION_DIGITS = 12
_RATE_SHAPE = re.compile(
    rf"[0-9]{{1,{RATE_MAX_INTEGER_DIGITS}}}(?:\.[0-9]{{1,{RATE_MAX_FRACTION_DIGITS}}})?"
)


def parse_rate(value: str | Decimal) -> Decimal:
    """A positive exchange rate written as plain decimal digits (at most 12
    before and 12 after the point)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidMoney(f"exchange rate {value!r} must be a positive decimal")
        value = format(value.normalize(), "f") if value != 0 else "0"
    if not isinstance(value, str):
        # Floats carry binary noise (0.0067 is 0.00670000000000000022…), bools are not rates.
        raise InvalidMoney(f"exchange rate {value!r} must be a decimal string")
    if not _RATE_SHAPE.fullmatch(value):
        raise InvalidMoney(
            f'exchange rate {value[:50]!r} must be plain decimal digits such as "0.0067", '
            f"at most {RATE_MAX_INTEGER_DIGITS} before and {RATE_MAX_FRACTION_DIGITS} "
            "after the point"
        )
    rate = Decimal(value)
    if rate <= 0:
        raise InvalidMoney(f"exchange rate {value!r} must be positive")
    return rate


def rate_text(value: str) -> str:
    """`value` unchanged if it is a valid rate (see parse_rate), else InvalidMoney."""
    parse_rate(value)
    return value


@dataclass(frozen=True, slots=True, order=False)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise InvalidMoney(f"amount must be an integer of minor units, got {self.amount!r}")
        if not MIN_MINOR_UNITS <= self.amount <= MAX_MINOR_UNITS:
            raise InvalidMoney("amount is beyond what can be stored (64-bit minor units)")
        exponent(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(self.currency, other.currency)

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def to_major(self) -> Decimal:
        """The amount in major units, exactly (JPY 1500 -> 1500, USD 1500 -> 15.00)."""
        return Decimal(self.amount).scaleb(-exponent(self.currency), context=_EXACT)

    @classmethod
    def from_major(cls, value: Decimal, currency: str, *, exact: bool = False) -> Money:
        """Major units to minor units, rounding half-even when `value` has more
        decimals than the currency (InvalidMoney instead when `exact`). NaN,
        infinities and amounts beyond 64-bit minor units are InvalidMoney,
        whatever their exponent: the check comes before any arithmetic."""
        digits = exponent(currency)
        if not value.is_finite():
            raise InvalidMoney(f"{value} {currency} cannot be expressed in minor units")
        if value and value.adjusted() + digits > _MAX_MINOR_DIGITS:
            raise InvalidMoney("amount is beyond what can be stored (64-bit minor units)")
        try:
            minor = value.scaleb(digits, context=_EXACT)
            whole = minor.quantize(Decimal(1), rounding=ROUND_HALF_EVEN, context=_EXACT)
        except DecimalException:
            raise InvalidMoney(f"{value} {currency} cannot be expressed in minor units") from None
        if exact and whole != minor:
            raise InvalidMoney(f"{value} {currency} has more decimals than {currency} has")
        return cls(int(whole), currency)

    def convert(self, rate: Decimal, to_currency: str) -> Money:
        """Convert at `rate` (units of `to_currency` per one major unit of ours), half-even."""
        if to_currency == self.currency and rate == 1:
            return self
        return Money.from_major(_EXACT.multiply(self.to_major(), rate), to_currency)

    def __str__(self) -> str:
        return f"{self.to_major()} {self.currency}"


@lru_cache(maxsize=8192)
def money(amount: int, currency: str) -> Money:
    """A shared Money for hot paths that build the same amounts over and over
    (settlement files): Money is immutable, so one instance serves them all."""
    return Money(amount, currency)
