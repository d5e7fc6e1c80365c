"""How the console writes amounts, times, roles and errors for people."""

from __future__ import annotations

from datetime import UTC, datetime

from app.domain.console import Flash
from app.domain.errors import DomainError, InvalidMoney
from app.domain.money import Money, exponent
from app.domain.records import ApiKey, Role

# Currencies people know by their sign; every other is written with its code.
CURRENCY_SIGNS = {"JPY": "¥", "USD": "$", "EUR": "€", "GBP": "£"}


def money(amount: int | None, currency: str | None) -> str:
    """¥12,000 · $15.00 · €15.00 · £15.00 · KWD 1.500: in major units with
    the currency's own number of decimals."""
    if amount is None or not currency:
        return "—"
    try:
        major = Money(amount, currency).to_major()
        digits = exponent(currency)
    except InvalidMoney:  # not a currency we know: the raw figures, unconverted
        return f"{amount} {currency}"
    sign = "-" if major < 0 else ""
    figures = f"{abs(major):,.{digits}f}"
    symbol = CURRENCY_SIGNS.get(currency)
    return f"{sign}{symbol}{figures}" if symbol else f"{currency} {sign}{figures}"


def rfc3339(at: datetime | None) -> str:
    if at is None:
        return ""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(at: datetime | None, now: datetime) -> str:
    """How long ago, in the largest whole unit: "just now", "12 min ago", "3 h ago", "4 d ago"."""
    if at is None:
        return ""
    seconds = (now - at).total_seconds()
    ahead, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        count, unit = int(seconds // 60), "min"
    elif seconds < 2 * 86400:
        count, unit = int(seconds // 3600), "h"
    else:
        count, unit = int(seconds // 86400), "d"
    return f"in {count} {unit}" if ahead else f"{count} {unit} ago"


def sentence(text: str) -> str:
    """`text` as a sentence: a capital first letter and a full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def roles(key: ApiKey) -> str:
    """ "approver (level 2)", "ops", "admin", "store, approver (level 3)"."""
    named = []
    for role in (Role.ADMIN, Role.APPROVER, Role.OPS, Role.STORE):
        if role not in key.roles:
            continue
        if role is Role.APPROVER and key.approval_level:
            named.append(f"approver (level {key.approval_level})")
        else:
            named.append(role.value)
    return ", ".join(named)


def error_message(error: DomainError) -> Flash:
    """A refused rule as the console shows it: a sentence and its stable code."""
    return Flash("error", sentence(error.detail), error.code)
