"""Hypothesis strategies and examples of card numbers, and of ordinary text
that holds none, for the tests of app.domain.cards (tests/unit/test_cards.py)
and of the redaction built on it (tests/unit/test_redaction.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from itertools import pairwise

from hypothesis import assume
from hypothesis import strategies as st

from app.domain.cards import luhn

# -- how a card number is written ------------------------------------------------------

MARKS = ["-", ".", "/", "_", "\\", "\u2010", "\u2013", "\u2014", "\u2212", "\uff0d", "\uff0f"]
SPACES = [" ", "\t", "\u00a0", "\u2007", "\u202f", "\u3000", "\n", "\u200b"]
FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + i) for i in range(10)))


def check_digit(body: str) -> str:
    """The digit that makes `body` + it pass the Luhn check."""
    return next(d for d in "0123456789" if luhn(body + d))


@st.composite
def pans(draw, lengths=st.integers(13, 19)) -> str:
    length = draw(lengths)
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    return body + check_digit(body)


def gaps() -> st.SearchStrategy[str]:
    """What may join two groups: a run of spaces, one mark, or a mark with
    spaces around it."""
    space_run = st.lists(st.sampled_from(SPACES), min_size=1, max_size=3).map("".join)
    return st.one_of(
        space_run,
        st.sampled_from(MARKS),
        st.tuples(space_run, st.sampled_from(MARKS), space_run).map("".join),
    )


@dataclass(frozen=True)
class Written:
    digits: str
    groups: tuple[str, ...]
    joins: tuple[str, ...]  # between the groups

    @property
    def text(self) -> str:
        out = self.groups[0]
        for join, group in zip(self.joins, self.groups[1:], strict=True):
            out += join + group
        return out


@st.composite
def written(draw, numbers=None, *, fullwidth: bool | None = None) -> Written:
    """`digits` in groups of random sizes, joined by random gaps (mixed)."""
    digits = draw(numbers if numbers is not None else pans())
    cuts = sorted(draw(st.sets(st.integers(1, len(digits) - 1), max_size=len(digits) - 1)))
    bounds = [0, *cuts, len(digits)]
    groups = tuple(digits[a:b] for a, b in pairwise(bounds))
    joins = tuple(draw(gaps()) for _ in groups[1:])
    if fullwidth is None:
        fullwidth = draw(st.integers(0, 3)) == 0  # one in four
    if fullwidth:
        groups = tuple(g.translate(FULLWIDTH) for g in groups)
    return Written(digits, groups, joins)


def reads_as_date(number: Written) -> bool:
    """Whether the grouping writes a calendar date, which cards.py takes for
    one (Y-M-D, D-M-Y, M-D-Y with one mark; YYYYMMDD as a group of its own)."""

    def date(year: str, month: str, day: str) -> bool:
        return 1900 <= int(year) <= 2099 and 1 <= int(month) <= 12 and 1 <= int(day) <= 31

    groups = [g.translate({0xFF10 + i: str(i) for i in range(10)}) for g in number.groups]
    if any(len(g) == 8 and date(g[:4], g[4:6], g[6:]) for g in groups):
        return True
    for i in range(len(groups) - 2):
        a, b, c = groups[i : i + 3]
        joins = number.joins[i : i + 2]
        if joins[0] != joins[1] or joins[0] not in "-/.":
            continue
        if len(a) == 4 and len(b) <= 2 and len(c) <= 2 and date(a, b, c):
            return True
        if len(c) == 4 and len(a) <= 2 and len(b) <= 2 and (date(c, b, a) or date(c, a, b)):
            return True
    return False


# Text around a number: words, marks, kana, no digits (so no other number
# can be made of them), and on the number's side a character that is neither
# a letter (digits glued to a word are part of it) nor a gap.
AROUND = st.text(
    st.sampled_from(list("abcxyzABCXYZ ,;:()'\"=#!?-./カード番号です。\n\t")), max_size=30
)
EDGES = st.sampled_from([" ", "\n", ":", ";", ",", "(", ")", '"', "'", "=", "#", "カ", "。"])


@st.composite
def embedded(draw, number: st.SearchStrategy[Written]) -> tuple[str, Written, int, int]:
    """(text, the number, where it starts, where it ends)."""
    card = draw(number)
    before = draw(st.one_of(st.just(""), st.tuples(AROUND, EDGES).map("".join)))
    after = draw(st.one_of(st.just(""), st.tuples(EDGES, AROUND).map("".join)))
    text = before + card.text + after
    return text, card, len(before), len(before) + len(card.text)


@st.composite
def luhn_invalid(draw) -> str:
    length = draw(st.integers(13, 19))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    good = check_digit(body)
    return body + draw(st.sampled_from([d for d in "0123456789" if d != good]))


@st.composite
def whole_groupings(draw, numbers) -> Written:
    """A number in groups such that no shorter run of whole groups has 13
    digits: only the whole number could be a card number."""
    digits = draw(numbers)
    n = len(digits)
    # Whole, or cut so that leaving out the first or the last group leaves
    # fewer than 13 digits.
    first = draw(st.one_of(st.just(n), st.integers(max(1, n - 12), 12)))
    groups = [digits[:first]]
    rest = digits[first:]
    if rest:
        last = draw(st.integers(max(1, n - 12), len(rest)))
        middle, tail = rest[: len(rest) - last], rest[len(rest) - last :]
        while middle:
            size = draw(st.integers(1, len(middle)))
            groups.append(middle[:size])
            middle = middle[size:]
        groups.append(tail)
    joins = tuple(draw(gaps()) for _ in groups[1:])
    return Written(digits, tuple(groups), joins)


# -- ordinary text -----------------------------------------------------------------------


@st.composite
def phone_numbers(draw) -> str:
    """Japanese numbers (11 digits at most), and international ones of 13
    digits failing the Luhn check."""
    if draw(st.booleans()):
        head = draw(st.sampled_from(["090", "080", "070", "03", "06", "0120"]))
        tail = draw(st.text("0123456789", min_size=8 - len(head) + 3, max_size=8 - len(head) + 3))
        return f"{head}-{tail[:4]}-{tail[4:]}"
    digits = draw(st.text("0123456789", min_size=13, max_size=13))
    assume(not luhn(digits))
    return f"+{digits[:2]} {digits[2:5]} {digits[5:9]} {digits[9:]}"


def ordinary_tokens() -> st.SearchStrategy[str]:
    # Years as cards.py reads dates: 1900-2099.
    days = st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31))
    amounts = st.integers(0, 10**12)
    currencies = st.sampled_from(["JPY", "USD", "EUR", "IDR", "円"])
    return st.one_of(
        days.map(lambda d: d.isoformat()),
        days.map(lambda d: d.strftime("%Y/%m/%d")),
        days.map(lambda d: d.strftime("%d.%m.%Y")),
        days.map(lambda d: d.strftime("%m/%d/%Y")),
        st.tuples(days, days).map(lambda p: f"{p[0].isoformat()}/{p[1].isoformat()}"),
        st.tuples(days, amounts).map(lambda p: f"{p[0].isoformat()} {p[1]}"),
        st.datetimes(min_value=datetime(1900, 1, 1)).map(lambda t: t.isoformat() + "Z"),
        st.tuples(amounts, currencies).map(lambda p: f"{p[0]:,} {p[1]}"),
        st.tuples(amounts, currencies).map(lambda p: f"{p[0]} {p[1]}"),
        amounts.map(lambda a: f"¥{a:,}"),
        st.integers(0, 10**9).map(lambda a: f"${a / 100:,.2f}"),
        phone_numbers(),
        st.integers(1, 10**6).map(lambda n: f"ORD-{n}"),
        st.tuples(days, st.integers(0, 999_999)).map(
            lambda p: f"ORD-{p[0].strftime('%Y%m%d')}-{p[1]:06d}"
        ),
        st.tuples(days, days).map(
            lambda p: f"settlement_{p[0].strftime('%Y%m%d')}_{p[1].strftime('%Y%m%d')}.csv"
        ),
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.binary(min_size=16, max_size=20).map(bytes.hex),
        st.binary(min_size=16, max_size=16).map(lambda b: uuid.UUID(bytes=b).hex),
        st.text("abcdefghijklmnopqrstuvwxyz ", max_size=20),
        st.sampled_from(["size too small", "R-77", "rma", "card", "サイズ違い", "pay_abc"]),
    )


ordinary_texts = st.lists(ordinary_tokens(), min_size=1, max_size=6).flatmap(
    lambda tokens: st.lists(
        st.sampled_from([", ", "; ", " and ", " or ", " | ", "、"]),
        min_size=len(tokens) - 1,
        max_size=len(tokens) - 1,
    ).map(
        lambda joins: (
            tokens[0] + "".join(join + token for join, token in zip(joins, tokens[1:], strict=True))
        )
    )
)


# -- examples ----------------------------------------------------------------------------

# Card numbers with their groups joined otherwise than by one space or "-".
CARD_NUMBERS_WITH_SEPARATORS = [
    "4242.4242.4242.4242",
    "4242/4242/4242/4242",
    "4242  4242  4242  4242",
    "4242\t4242\t4242\t4242",
    "4242\u00a04242\u00a04242\u00a04242",
    "4242_4242_4242_4242",
    "3782 822463 10005",  # Amex, 4-6-5
]

# Long numbers in text that are not card numbers.
NUMBERS_THAT_ARE_NOT_CARD_NUMBERS = ["order 1234567890123", "amount 12000 JPY", "ts 1764230400123"]
