"""What people type into the console's filter forms, read the way they mean
it: a day or an instant, an amount in major units of its currency.

Every refusal is an `InvalidInput` (or `UnknownCurrency`) naming the field,
shown as a sentence with its code, never a crash. Whatever is typed, a filter
or a note, is refused with `CardDataForbidden` when it holds a card number
(`app.domain.cards`), and a form shown again shows it masked (`echoed`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation

from app.domain.cards import mask_card_numbers, refuse_card_number
from app.domain.errors import InvalidInput, InvalidMoney
from app.domain.money import Money, exponent
from app.domain.text import text_problem
from app.domain.times import RANGE, in_range, in_utc

# Longer than any value these fields take: a URL edited by hand cannot make
# the page echo a novel back.
MAX_FIELD_LENGTH = 100


def text(value: str | None, name: str, max_length: int = MAX_FIELD_LENGTH) -> str:
    value = (value or "").strip()
    if len(value) > max_length:
        raise InvalidInput(f"{name} may be at most {max_length} characters long")
    refuse_card_number(value, name)
    return value


def free_text(
    value: str | None, name: str, max_length: int, *, required: str | None = None
) -> str | None:
    """Text the services store (a note, a payout reference): None when empty,
    refused when `required` (why it is) and empty, too long, not storable, or
    holding a card number."""
    value = (value or "").strip()
    if not value:
        if required:
            raise InvalidInput(required)
        return None
    if len(value) > max_length:
        raise InvalidInput(f"{name} may be at most {max_length} characters long")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidInput(f"{name} cannot be stored: {problem}")
    refuse_card_number(value, name)
    return value


def echoed(value: str) -> str:
    """What a form shown again may show of what was typed: all of it, but
    card numbers masked to their last four digits (what the refusal says may
    be kept)."""
    return mask_card_numbers(value, first=0)


def flag(value: str | None) -> bool:
    """A checkbox: sent ("1", "on", "true") or not."""
    return (value or "").strip().lower() in ("1", "on", "true", "yes")


def instant(value: str, name: str, *, end: bool = False) -> datetime | None:
    """A day (2026-11-27, in UTC) or an RFC 3339 instant. A day that ends a
    range counts whole: its bound is the next day's midnight (ranges end
    before their bound)."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        if not in_range(day):
            raise InvalidInput(f"{name} must be {RANGE}, not {value[:40]!r}")
        start = datetime.combine(day, time(), tzinfo=UTC)
        return start + timedelta(days=1) if end else start
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise InvalidInput(
            f"{name} must be a day such as 2026-11-27 or an instant with its offset "
            f"such as 2026-11-27T08:00:00Z, not {value[:40]!r}"
        )
    moment = in_utc(at)
    if moment is None:
        raise InvalidInput(f"{name} must be {RANGE}, not {value[:40]!r}")
    return moment


def currency(value: str) -> str | None:
    """An ISO 4217 code, whatever its case; UnknownCurrency for one that is none."""
    code = value.upper()
    if not code:
        return None
    exponent(code)
    return code


def amount(value: str, code: str | None, name: str) -> int | None:
    """An amount in major units of `code` (12000 yen, 15.00 dollars, 1.500
    dinars) as minor units; more decimals than the currency has are refused
    rather than rounded."""
    if not value:
        return None
    if code is None:
        raise InvalidInput("an amount range needs its currency")
    try:
        major = Decimal(value.replace(",", "").replace("_", ""))
    except InvalidOperation:
        major = None
    if major is None or not major.is_finite():
        raise InvalidInput(f"{name} must be a number such as 15.00, not {value[:40]!r}")
    if major < 0:
        raise InvalidInput(f"{name} cannot be negative")
    digits = exponent(code)
    if -major.as_tuple().exponent > digits:  # type: ignore[operator]
        raise InvalidInput(f"{name} has more decimals than {code} has ({digits})")
    try:
        return Money.from_major(major, code).amount
    except InvalidMoney:
        raise InvalidInput(f"{name} is larger than any amount a refund can have") from None
