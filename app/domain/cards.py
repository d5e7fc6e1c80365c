"""Card numbers (PANs) in free text: found so that the service can refuse them
at its edges and mask them in whatever it records.

A card number is 13 to 19 digits passing the Luhn check, written the ways
people write them: in one block (4242424242424242) or in groups of any sizes
(4-4-4-4, 4-6-5, 4-4-4-4-3, …) joined by

- a run of white space: spaces, tabs, line breaks, no-break and other Unicode
  spaces (U+00A0, U+2007, U+202F, U+3000 …), zero-width spaces;
- or one separator mark, with or without spaces around it: `-` `.` `/` `_`
  `\\`, the Unicode dashes and minus, the middle dots, and their full-width
  forms (U+FF0D, U+FF0E, U+FF0F, U+FF3F …) and the long vowel mark U+30FC,
  separators mixed as they come.

Digits are ASCII or full-width (U+FF10-U+FF19, as a Japanese IME types them).

A number is found wherever it stands among other numbers: `4242 4242 4242
4242 2 items` holds a card number although its whole run of digits (17) fails
the check. Runs are cut at group boundaries only: a block of more than 19
digits (an id, a timestamp in nanoseconds) is not searched for a card number
inside it.

What is not a card number, so that ordinary text is not refused:

- digits glued to a Latin letter are part of a word (`ORD20261127000123`,
  the hex of a hash or trace id), unless `in_words` (masking, below);
- a calendar date, years 1900-2099, written with `-`, `/` or `.`
  (2026-11-27, 2026/11/27, 27.11.2026, 11/27/2026) or as a group of eight
  digits of its own (20261127), is a date, never a part of a card number: a
  date and an amount (`2026-11-27 15000`), two dates (`2026-11-01/2026-11-27`)
  or a date-stamped id (`ORD-20261127-000123`) make no card number. (A card
  number written in groups that read as a valid date, 4-2-2 with one mark or
  a group of eight, is taken for one: no one writes a card number so.)
- a UUID (8-4-4-4-12 hex digits) is an id, never a card number;
- anything failing the Luhn check: most phone numbers, amounts and ids. One
  arbitrary number of 13-19 digits in ten passes it, so a long numeric id
  joined to others by spaces or marks can be taken for a card number: the
  refusal says which field, so the client can write it otherwise.

Cheap first: a text with fewer than 13 digits in all is answered before any
regular expression runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from app.domain.errors import CardDataForbidden

MIN_DIGITS = 13
MAX_DIGITS = 19

_FULLWIDTH_ZERO = 0xFF10
DIGIT_CHARS = "0-9\uff10-\uff19"
# A Latin letter or a digit: digits glued to one are part of a word.
_WORD_CHARS = f"A-Za-z{DIGIT_CHARS}\uff21-\uff3a\uff41-\uff5a"
_SPACE_CHARS = r"\s\u200b-\u200d\u2060\ufeff"
_SEPARATOR_CHARS = (
    "\\-._/\\\\\u00b7\u2010-\u2015\u2212\u2219\u30fb\u30fc"
    "\uff0d\uff0e\uff0f\uff3c\uff3f\uff65\uff70"
)
SPACE = f"[{_SPACE_CHARS}]"
SEPARATOR = f"[{_SEPARATOR_CHARS}]"
# What may join two groups of digits: a run of space, or one separator mark
# with or without space around it.
GAP = f"(?:{SPACE}+|{SPACE}*{SEPARATOR}{SPACE}*)"
GROUP = f"[{DIGIT_CHARS}]+"
# Groups of digits joined by gaps: the one definition of how a card number
# may be written. `app.redaction` masks with it too.
CARD_NUMBER_RUN = re.compile(f"{GROUP}(?:{GAP}{GROUP})*")
# The same runs, only where at least 13 characters a run may hold follow: a
# run of 13 digits is at least that long, so no card number is missed, and
# the many short runs of ordinary text (dates, times, ids in a JSON body) are
# passed over by the regular expression engine instead of one by one here.
_LONG_RUN = re.compile(
    f"(?=[{DIGIT_CHARS}][{DIGIT_CHARS}{_SPACE_CHARS}{_SEPARATOR_CHARS}]{{{MIN_DIGITS - 1}}})"
    f"{GROUP}(?:{GAP}{GROUP})*"
)

# A looser test for ASCII text, at C speed: each byte a digit, white space or
# a separator mark mapped to `r`, any other to `x`. No 13 `r` in a row, no
# long run: the text holds no card number.
_DIGIT = re.compile(f"[{DIGIT_CHARS}]")
_JOINER = re.compile(f"[{_SPACE_CHARS}{_SEPARATOR_CHARS}]")
_ASCII_RUN_CLASSES = bytes(
    ord("r") if _DIGIT.match(chr(b)) or _JOINER.match(chr(b)) else ord("x") for b in range(256)
)
_ASCII_LONG_RUN = b"r" * MIN_DIGITS

_GROUP = re.compile(GROUP)
_WORD = re.compile(f"[{_WORD_CHARS}]")
_UUID = re.compile(
    r"(?<![0-9A-Za-z])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}"
    r"-[0-9A-Fa-f]{12}(?![0-9A-Za-z])"
)
_DATE_MARKS = frozenset("-/.")
_ASCII_DIGITS = b"0123456789"
_NOT_DIGITS = {ord(c): None for c in "0123456789"} | {_FULLWIDTH_ZERO + i: None for i in range(10)}


@dataclass(frozen=True, slots=True)
class CardNumber:
    """Where a card number stands in a text (`text[start:end]`, separators
    included) and its digits (ASCII). Card numbers that overlap (two readings
    of one run) are one span, whose digits may then number more than 19."""

    start: int
    end: int
    digits: str


def digit_count(text: str) -> int:
    """How many digits `text` holds (ASCII and full-width)."""
    if text.isascii():  # the common case, counted on bytes: several times faster
        raw = text.encode("ascii")
        return len(raw) - len(raw.translate(None, _ASCII_DIGITS))
    return len(text) - len(text.translate(_NOT_DIGITS))


def might_hold_card_number(text: str) -> bool:
    """The cheap test run before any other: at least 13 digits in all."""
    return len(text) >= MIN_DIGITS and digit_count(text) >= MIN_DIGITS


def might_hold_long_run(text: str) -> bool:
    """False when `text` has no 13 characters in a row that are digits,
    spaces or separator marks, and so no card number: told at C speed for
    ASCII text (the regular expression that reads the runs costs some
    microseconds per hundred characters); True otherwise."""
    if not text.isascii():
        return True
    return _ASCII_LONG_RUN in text.encode("ascii").translate(_ASCII_RUN_CLASSES)


def luhn(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ascii(digits: str) -> str:
    if digits.isascii():
        return digits
    return "".join(c if c < "\x80" else chr(ord(c) - _FULLWIDTH_ZERO + 48) for c in digits)


@dataclass(frozen=True, slots=True)
class _Group:
    start: int
    end: int
    digits: str


def _is_date(first: _Group, second: _Group, third: _Group, gaps: tuple[str, str]) -> bool:
    """Three groups joined by the same one mark (no space) that read as a
    calendar date: Y-M-D, D-M-Y or M-D-Y, years 1900-2099."""
    if gaps[0] != gaps[1] or gaps[0] not in _DATE_MARKS:
        return False
    a, b, c = first.digits, second.digits, third.digits
    if len(a) == 4 and len(b) <= 2 and len(c) <= 2:
        year, pairs = int(a), [(int(b), int(c))]
    elif len(c) == 4 and len(a) <= 2 and len(b) <= 2:
        year, pairs = int(c), [(int(b), int(a)), (int(a), int(b))]
    else:
        return False
    return 1900 <= year <= 2099 and any(1 <= m <= 12 and 1 <= d <= 31 for m, d in pairs)


def _is_compact_date(group: _Group) -> bool:
    """A group of eight digits that reads as a YYYYMMDD date (an id's stamp,
    `settlement_20261101_20261130.csv`)."""
    digits = group.digits
    return (
        len(digits) == 8
        and 1900 <= int(digits[:4]) <= 2099
        and 1 <= int(digits[4:6]) <= 12
        and 1 <= int(digits[6:]) <= 31
    )


def _segments(
    text: str, run: re.Match[str], skipped: list[tuple[int, int]], in_words: bool
) -> Iterator[list[_Group]]:
    """The run's groups, cut where a group cannot be part of a card number
    (in a date, in a UUID, glued to a word)."""
    offset = run.start()
    groups = [
        _Group(offset + m.start(), offset + m.end(), _ascii(m.group()))
        for m in _GROUP.finditer(run.group())
    ]
    usable = [True] * len(groups)
    if not in_words:
        if run.start() > 0 and _WORD.match(text, run.start() - 1):
            usable[0] = False
        if run.end() < len(text) and _WORD.match(text, run.end()):
            usable[-1] = False
    if skipped:
        for i, group in enumerate(groups):
            if any(start < group.end and group.start < end for start, end in skipped):
                usable[i] = False
    for i, group in enumerate(groups):
        if _is_compact_date(group):
            usable[i] = False
    for i in range(len(groups) - 2):
        gaps = (
            text[groups[i].end : groups[i + 1].start],
            text[groups[i + 1].end : groups[i + 2].start],
        )
        if _is_date(groups[i], groups[i + 1], groups[i + 2], gaps):
            usable[i] = usable[i + 1] = usable[i + 2] = False
    segment: list[_Group] = []
    for group, ok in zip(groups, usable, strict=True):
        if ok:
            segment.append(group)
        elif segment:
            yield segment
            segment = []
    if segment:
        yield segment


def _windows(groups: list[_Group]) -> Iterator[tuple[int, int]]:
    """(first, last) group indexes of every card number among `groups`: whole
    groups, 13-19 digits, passing the Luhn check. Luhn sums are carried from
    the right end of each window, so each end costs at most 19 digits."""
    for last in range(len(groups)):
        total = count = 0
        for first in range(last, -1, -1):
            digits = groups[first].digits
            if count + len(digits) > MAX_DIGITS:
                break
            for char in reversed(digits):
                d = ord(char) - 48
                if count % 2:
                    d *= 2
                    if d > 9:
                        d -= 9
                total += d
                count += 1
            if count >= MIN_DIGITS and total % 10 == 0:
                yield first, last


def card_numbers(text: str, *, in_words: bool = False) -> Iterator[CardNumber]:
    """Every card number in `text`, left to right, overlapping ones merged.

    With `in_words`, digits glued to letters count too (`card4242…`): for
    masking, where taking a hex id's digits for a card number costs nothing,
    while refusing a client's text for it would.
    """
    if not might_hold_card_number(text) or not might_hold_long_run(text):
        return
    skipped: list[tuple[int, int]] | None = None
    for run in _LONG_RUN.finditer(text):
        if run.end() - run.start() < MIN_DIGITS:
            continue
        if skipped is None:  # only for a text that has a long run at all
            skipped = [m.span() for m in _UUID.finditer(text)] if text.count("-") >= 4 else []
        for segment in _segments(text, run, skipped, in_words):
            if sum(len(g.digits) for g in segment) < MIN_DIGITS:
                continue
            merged: tuple[int, int] | None = None
            for first, last in sorted(_windows(segment)):
                if merged is not None and first <= merged[1]:
                    merged = (merged[0], max(merged[1], last))
                    continue
                if merged is not None:
                    yield _span(segment, *merged)
                merged = (first, last)
            if merged is not None:
                yield _span(segment, *merged)


def _span(groups: list[_Group], first: int, last: int) -> CardNumber:
    chosen = groups[first : last + 1]
    return CardNumber(chosen[0].start, chosen[-1].end, "".join(g.digits for g in chosen))


def find_card_number(text: str) -> CardNumber | None:
    """The first card number in `text`, or None."""
    return next(card_numbers(text), None)


def holds_card_number(text: str) -> bool:
    return find_card_number(text) is not None


def masked(digits: str, *, first: int = 6) -> str:
    """What may be shown of a card number: its last four digits and, unless
    `first` is less, its first six (truncation as PCI DSS allows it)."""
    return f"{digits[:first]}{'*' * (len(digits) - first - 4)}{digits[-4:]}"


def mask_card_numbers(text: str, *, in_words: bool = False, first: int = 6) -> str:
    """`text` with each card number (separators included) replaced by its
    first six (or `first`) and last four digits."""
    found = list(card_numbers(text, in_words=in_words))
    if not found:
        return text
    pieces: list[str] = []
    at = 0
    for number in found:
        pieces += [text[at : number.start], masked(number.digits, first=first)]
        at = number.end
    pieces.append(text[at:])
    return "".join(pieces)


def refuse_card_number(text: str | None, field: str, *, key: bool = False) -> None:
    """CardDataForbidden naming `field` (never the number) when `text` holds
    a card number; `key` when it is a key of the mapping `field`."""
    if text and holds_card_number(text):
        raise CardDataForbidden(field, key=key)
