"""Redaction of secrets and card numbers before anything is stored or logged.

Known secrets (API keys, PSE secrets, webhook secrets, the database password)
are replaced (see `Redactor` for how short ones are); anything shaped like a
service API key or credentials is masked; a card number keeps at most its
first six and last four digits.

Card numbers are found by `app.domain.cards`, the definition the API and the
console refuse them with: 13-19 digits passing the Luhn check, in one block or
in groups joined by spaces of any kind or by one mark (`-` `.` `/` `_` …).
Masking takes digits glued to letters too (`card4242…`), and reads text as it
is recorded: a JSON body (`4242\\u00a04242…`, `4242\\/4242…`) or a URL query
(`4242+4242…`, `4242%204242…`) is searched with its escapes decoded.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from typing import Any

from app.domain.cards import (
    MIN_DIGITS,
    card_numbers,
    mask_card_numbers,
    masked,
    might_hold_card_number,
)

REDACTED = "[redacted]"
# A secret at least this long is replaced wherever it appears, inside a word
# included; a shorter one only where it stands as a whole token.
LONG_SECRET = 6
_API_KEY = re.compile(r"prk_[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
# What may continue a key: a short secret next to one is part of another word.
_NO_WORD_BEFORE = r"(?<![A-Za-z0-9_])"
_NO_WORD_AFTER = r"(?![A-Za-z0-9_])"
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)

# JSON string escapes and URL escapes (one UTF-8 character each, `+` for a space).
_ESCAPE = re.compile(
    r"\\u[0-9A-Fa-f]{4}|\\[\\/\"bfnrt]"
    r"|%[0-7][0-9A-Fa-f]|%[C-Dc-d][0-9A-Fa-f]%[89ABab][0-9A-Fa-f]"
    r"|%[Ee][0-9A-Fa-f](?:%[89ABab][0-9A-Fa-f]){2}"
    r"|%[Ff][0-7](?:%[89ABab][0-9A-Fa-f]){3}"
    r"|\+"
)
_JSON_ESCAPE = re.compile(r"\\u[0-9A-Fa-f]{4}|\\[\\/\"bfnrt]")
_JSON_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescaped(escape: str) -> str:
    if escape == "+":
        return " "
    if escape[0] == "\\":
        if escape[1] == "u":
            return chr(int(escape[2:], 16))
        return _JSON_ESCAPES.get(escape[1], escape[1])
    return bytes.fromhex(escape.replace("%", "")).decode("utf-8", errors="replace")


# Every character an escape is written with (`\\u00a0`, `\\n`, `%2F`, `+`), and
# those a run of digits is: an ASCII text with no 13 of them in a row decodes
# to no run long enough to hold a card number (each decoded character comes
# from a literal one, or from an escape written with these alone).
_ESCAPED_RUN_CHARS = frozenset('0123456789ABCDEFabcdefu\\/"bfnrt%+ \t\n\x0b\x0c\r-._')
_ESCAPED_RUN_CLASSES = bytes(
    ord("r") if chr(b) in _ESCAPED_RUN_CHARS or re.match(r"\s", chr(b)) else ord("x")
    for b in range(256)
)
_ESCAPED_LONG_RUN = b"r" * MIN_DIGITS


def _might_decode_to_long_run(value: str) -> bool:
    if not value.isascii():
        return True
    return _ESCAPED_LONG_RUN in value.encode("ascii").translate(_ESCAPED_RUN_CLASSES)


def _mask_card_numbers(value: str) -> str:
    """`value` with its card numbers masked, those written with escapes too
    (`4242\\u00a04242…`, `4242%2F4242…`, `4242+4242…`), the rest of it left
    as it was: with escapes, numbers are searched in a decoded view whose
    pieces map back to the text they came from."""
    if value[:1] in "{[":
        # A JSON body (as the audit records them): only JSON's escapes; a `+`
        # or a `%` there is itself, as in the text the API refused or took.
        if "\\" not in value:
            return mask_card_numbers(value, in_words=True)
        escapes = _JSON_ESCAPE
    elif "\\" not in value and "%" not in value and "+" not in value:
        return mask_card_numbers(value, in_words=True)
    else:
        escapes = _ESCAPE
    if not _might_decode_to_long_run(value):
        return value
    starts: list[int] = []  # where each piece starts in the decoded view
    spans: list[tuple[int, int, bool]] = []  # its span in `value`, and whether literal
    decoded: list[str] = []
    length = at = 0

    def piece(text: str, start: int, end: int, literal: bool) -> None:
        nonlocal length
        starts.append(length)
        spans.append((start, end, literal))
        decoded.append(text)
        length += len(text)

    for escape in escapes.finditer(value):
        if escape.start() > at:
            piece(value[at : escape.start()], at, escape.start(), True)
        piece(_unescaped(escape.group()), escape.start(), escape.end(), False)
        at = escape.end()
    if not spans:
        return mask_card_numbers(value, in_words=True)
    if at < len(value):
        piece(value[at:], at, len(value), True)

    def original(position: int, *, end: bool) -> int:
        index = bisect.bisect_right(starts, position - 1 if end else position) - 1
        start, stop, literal = spans[index]
        if literal:
            return start + position - starts[index]
        return stop if end else start

    found = [
        (original(n.start, end=False), original(n.end, end=True), n.digits)
        for n in card_numbers("".join(decoded), in_words=True)
    ]
    for start, end, digits in reversed(found):
        value = value[:start] + masked(digits) + value[end:]
    return value


class Redactor:
    """Replaces secrets, credentials and card numbers in text and values.

    Every configured secret is redacted, whatever its length. One of at least
    `LONG_SECRET` (6) characters is replaced wherever it appears, inside a
    longer word included. A shorter one (a PAY.JP key `abc`) is replaced
    where it stands as a whole token: with no letter, digit or `_` right
    before or after it, as in `Bearer abc`, `"api_key":"abc"`, `key=abc&`,
    or as a whole value, but not inside another word (`abcdef`, `xabc`). A
    secret of one to three characters is in every other word of ordinary
    text: replaced there too, it would destroy the logs (every "a" for a key
    "a") and protect nothing, since a key that short is guessed in moments.
    Its occurrences as a token, which are what a leak of it looks like, are
    the ones replaced; such a key is to be rotated all the same.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._all: set[str] = set()
        self._secrets: list[str] = []
        self._short: list[str] = []
        self._short_pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        self._all |= {s for s in secrets if s}
        # Longest first, so a secret containing another is replaced whole.
        ordered = sorted(self._all, key=lambda s: (-len(s), s))
        self._secrets = [s for s in ordered if len(s) >= LONG_SECRET]
        self._short = [s for s in ordered if len(s) < LONG_SECRET]
        self._short_pattern = None
        if self._short:
            alternatives = "|".join(re.escape(s) for s in self._short)
            self._short_pattern = re.compile(f"{_NO_WORD_BEFORE}(?:{alternatives}){_NO_WORD_AFTER}")

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        # Cheap tests first, each inline: most values hold none of these, and
        # the audit trail redacts some thirty strings per request.
        if self._short_pattern is not None:
            for short in self._short:
                if short in value:
                    value = self._short_pattern.sub(REDACTED, value)
                    break
        if "earer" in value or "asic" in value or "EARER" in value or "ASIC" in value:
            value = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        if "prk_" in value:
            value = _API_KEY.sub(REDACTED, value)
        if len(value) >= MIN_DIGITS and might_hold_card_number(value):
            value = _mask_card_numbers(value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        return {
            name.lower(): REDACTED if name.lower() in SENSITIVE_HEADERS else self.text(value)
            for name, value in headers
        }
