"""Card numbers in free text (app.domain.cards): found however they are
written, and ordinary text never taken for one."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.domain import cards
from app.domain.cards import (
    card_numbers,
    find_card_number,
    holds_card_number,
    mask_card_numbers,
    refuse_card_number,
)
from app.domain.errors import CardDataForbidden, DomainError
from tests.unit.card_strategies import (
    CARD_NUMBERS_WITH_SEPARATORS,
    FULLWIDTH,
    NUMBERS_THAT_ARE_NOT_CARD_NUMBERS,
    embedded,
    luhn_invalid,
    ordinary_texts,
    pans,
    reads_as_date,
    whole_groupings,
    written,
)


@settings(max_examples=400, deadline=None)
@given(found=embedded(written()))
def test_a_card_number_is_found_however_it_is_written_and_wherever(found):
    text, card, start, end = found
    assume(not reads_as_date(card))
    assert holds_card_number(text)
    assert any(n.start <= start and end <= n.end for n in card_numbers(text)), text


@pytest.mark.parametrize("length", range(13, 20))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_card_numbers_of_every_length_are_found(length, data):
    card = data.draw(written(pans(st.just(length))))
    assume(not reads_as_date(card))
    number = find_card_number(f"card: {card.text}.")
    assert number is not None and card.digits in number.digits


@settings(max_examples=200, deadline=None)
@given(found=embedded(written(fullwidth=True)))
def test_full_width_digits_are_digits(found):
    text, card, start, end = found
    assume(not reads_as_date(card))
    assert any(n.start <= start and end <= n.end for n in card_numbers(text))


@settings(max_examples=300, deadline=None)
@given(found=embedded(whole_groupings(luhn_invalid())))
def test_a_number_failing_the_luhn_check_is_never_taken_for_a_card_number(found):
    text, _card, _start, _end = found
    assert not holds_card_number(text)


@settings(max_examples=200, deadline=None)
@given(card=pans(), at=st.integers(0, 18), digit=st.sampled_from("0123456789"))
def test_a_card_number_with_one_digit_mistyped_is_not_one(card, at, digit):
    at %= len(card)
    assume(card[at] != digit)
    mistyped = card[:at] + digit + card[at + 1 :]
    # (Luhn catches every single-digit error.)
    assert not holds_card_number(f"card {mistyped} ok")


@settings(max_examples=500, deadline=None)
@given(text=ordinary_texts)
def test_ordinary_text_is_never_taken_for_a_card_number(text):
    assert not holds_card_number(text), text
    assert mask_card_numbers(text) == text


@pytest.mark.parametrize(
    "text",
    [
        *NUMBERS_THAT_ARE_NOT_CARD_NUMBERS,
        "refunded 2026-11-27 15000 JPY",
        "2026-11-01/2026-11-27",
        "from 2026-11-01 to 2026-11-27",
        "2026/11/27 2026/11/28",
        "ORD-1001",
        "ORD-20261127-000123",
        "123e4567-e89b-12d3-a456-426614174000",
        "12345678-1234-4234-8234-123456789012",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "call +81 90-1234-5678",
        "ab4242424242424242",  # glued to a word: part of it
        "4242424242424242x",
        "42424242424242424242",  # 20 digits in one block: not searched inside
        "424242******4242",  # masked already
    ],
)
def test_examples_of_ordinary_text(text):
    assert not holds_card_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424242",
        "card 4242 4242 4242 4242 please",
        "4242-4242-4242-4242",
        *CARD_NUMBERS_WITH_SEPARATORS,
        "4242 - 4242 / 4242.4242",
        "3056 9309 0259 04",  # Diners, 14 digits
        "6011 1111 1111 1117",  # Discover
        "6062826786276634",  # Hipercard
        "4000 0000 0000 0000 006",  # 19 digits, 4-4-4-4-3
        "4242 4242 4242 4242 2 items",  # the whole run fails the check; the card passes
        "12 4242 4242 4242 4242".translate(FULLWIDTH),
        "カード番号4242424242424242です",
        "pan=4242424242424242&x=1",
        "4222222222222",  # 13 digits
    ],
)
def test_examples_of_card_numbers(text):
    assert holds_card_number(text)


def test_a_found_number_says_where_it_stands_and_its_digits():
    number = find_card_number("card: 4242 4242 4242 4242, thanks")
    assert number is not None
    assert (number.start, number.end, number.digits) == (6, 25, "4242424242424242")


def test_masking_keeps_the_first_six_and_last_four_digits_or_only_the_last_four():
    text = "paid with 3782 822463 10005 and 4242-4242-4242-4242."
    assert mask_card_numbers(text) == "paid with 378282*****0005 and 424242******4242."
    assert mask_card_numbers(text, first=0) == "paid with ***********0005 and ************4242."


def test_in_words_finds_digits_glued_to_letters_too():
    assert not holds_card_number("card4242424242424242")
    assert mask_card_numbers("card4242424242424242", in_words=True) == "card424242******4242"


def test_refusing_names_the_field_never_the_number():
    with pytest.raises(CardDataForbidden) as refused:
        refuse_card_number("card 4242 4242 4242 4242", "note")
    assert isinstance(refused.value, DomainError) and isinstance(refused.value, ValueError)
    assert refused.value.code == "card_data_forbidden"
    assert refused.value.detail.startswith("note holds what looks like a card number")
    assert "4242" not in refused.value.detail
    with pytest.raises(CardDataForbidden) as refused:
        refuse_card_number("4242424242424242", "metadata", key=True)
    assert refused.value.detail.startswith("a key of metadata holds")
    refuse_card_number("size too small", "note")
    refuse_card_number(None, "note")


def test_a_text_with_fewer_than_13_digits_is_answered_without_any_regex(monkeypatch):
    class Untouchable:
        def finditer(self, *_args):
            raise AssertionError("the regex ran")

    monkeypatch.setattr(cards, "_LONG_RUN", Untouchable())
    monkeypatch.setattr(cards, "_UUID", Untouchable())
    text = "refund 12000 JPY, order ORD-1001, " + "no digits here " * 500
    assert cards.digit_count(text) < 13
    assert not holds_card_number(text)
    assert not holds_card_number("abc" * 10_000)


def test_a_text_whose_digit_runs_are_all_short_never_looks_for_ids(monkeypatch):
    """A JSON answer full of dates and times holds many digits, in runs too
    short for a card number: the id search (UUIDs) is not run for it."""

    class Untouchable:
        def finditer(self, *_args):
            raise AssertionError("the id search ran")

    monkeypatch.setattr(cards, "_UUID", Untouchable())
    text = '{"at": "2026-12-01T16:21:35.123456+00:00", "id": "rf_1a231a820d3d72b7eb2815ac622"}' * 5
    assert cards.digit_count(text) >= 13
    assert list(card_numbers(text, in_words=True)) == []


# Digits, what joins them, and what breaks a run, in the mixes that sit at
# the edge of 13 characters.
_RUN_EDGE = st.text(alphabet="0123456789 -._/\\\t\n:+Tx\u00a0\uff10", max_size=40)


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(_RUN_EDGE, embedded(written()).map(lambda found: found[0]), ordinary_texts),
    in_words=st.booleans(),
)
def test_the_quick_test_for_a_long_run_never_hides_a_card_number(text, in_words):
    """A text the quick test passes over is one the runs' regular expression
    finds nothing in: the same card numbers are found with it as without."""
    found = list(card_numbers(text, in_words=in_words))
    with mock.patch.object(cards, "might_hold_long_run", lambda _text: True):
        assert found == list(card_numbers(text, in_words=in_words))


def test_a_json_body_of_short_runs_is_passed_over_without_the_runs_regex(monkeypatch):
    class Untouchable:
        def finditer(self, *_args):
            raise AssertionError("the runs' regex ran")

    monkeypatch.setattr(cards, "_LONG_RUN", Untouchable())
    body = (
        '{"id":"evt_000001234","created_at":"2026-12-02T06:40:01.123456Z",'
        '"data":{"id":"sbre_bm000001234","amount":1000,"payment_id":"pi_1a2356b4fc2c38255"}}'
    )
    assert cards.digit_count(body) >= 13 and not cards.might_hold_long_run(body)
    assert list(card_numbers(body, in_words=True)) == []
    assert cards.might_hold_long_run("card 4242 4242 4242 4242")
    assert cards.might_hold_long_run("ｶｰﾄﾞ")  # not ASCII: left to the regex


def _read_time(text: str) -> float:
    started = time.perf_counter()
    list(card_numbers(text, in_words=True))
    return time.perf_counter() - started


def _fastest_reads(small: str, large: str) -> tuple[float, float]:
    """The fastest of five reads of each, taken in turns: a burst of other
    work on the machine (another test worker, say) slows both alike."""
    times = [(_read_time(small), _read_time(large)) for _ in range(5)]
    return min(t[0] for t in times), min(t[1] for t in times)


def test_a_long_text_full_of_numbers_is_read_in_linear_time():
    # Four times the text takes about four times as long (sixteen if the
    # search were quadratic): a ratio within one run, whatever the machine's speed.
    for unit, count in (("1 ", 8_000), ("4242 ", 3_200), ("2026-11-27 ", 1_500), ("9", 16_000)):
        small, large = _fastest_reads(unit * count, unit * count * 4)
        assert large < 8 * small + 0.01, (unit, small, large)
