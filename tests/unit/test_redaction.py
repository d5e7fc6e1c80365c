"""Redaction of secrets and card numbers, in stored records and in log lines."""

from __future__ import annotations

import io
import json
import re
from unittest import mock
from urllib.parse import parse_qs, quote, quote_plus, urlencode

import pytest
import structlog
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app import redaction
from app.domain.cards import digit_count
from app.logs import configure_logging
from app.redaction import REDACTED, Redactor
from tests.unit.card_strategies import (
    CARD_NUMBERS_WITH_SEPARATORS,
    FULLWIDTH,
    NUMBERS_THAT_ARE_NOT_CARD_NUMBERS,
    embedded,
    ordinary_texts,
    reads_as_date,
    written,
)


def test_configured_secrets_are_replaced_wherever_they_appear():
    redactor = Redactor(["sk_live_abcdef123", "whsec_zzz999yyy"])
    out = redactor.value(
        {"msg": "key sk_live_abcdef123 failed", "nested": ["x whsec_zzz999yyy y"], "n": 3}
    )
    assert out == {"msg": f"key {REDACTED} failed", "nested": [f"x {REDACTED} y"], "n": 3}


def test_service_api_keys_and_credentials_are_masked_even_when_unknown():
    redactor = Redactor()
    assert redactor.text("Bearer prk_AbCdEfGhIjKlMnOp") == f"Bearer {REDACTED}"
    assert redactor.text("Authorization: Basic c2tfdGVzdDo=") == f"Authorization: Basic {REDACTED}"
    assert REDACTED in redactor.text("key=prk_AbCdEfGhIjKlMnOp")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4242 4242 4242 4242 ok", "card 424242******4242 ok"),
        ("4111-1111-1111-1111", "411111******1111"),
        ("pan=5555555555554444", "pan=555555******4444"),
    ],
)
def test_card_numbers_keep_at_most_bin_and_last_four(text, expected):
    assert Redactor().text(text) == expected


@pytest.mark.parametrize("text", NUMBERS_THAT_ARE_NOT_CARD_NUMBERS)
def test_numbers_that_are_not_card_numbers_are_left_alone(text):
    assert Redactor().text(text) == text


def test_sensitive_headers_are_dropped_to_a_marker():
    headers = Redactor().headers([("Authorization", "Bearer x"), ("Content-Type", "json")])
    assert headers == {"authorization": REDACTED, "content-type": "json"}


def test_log_lines_are_redacted(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("json", "info", Redactor(["sk_live_secret_12345"]))
    try:
        structlog.get_logger("t").info(
            "pse.call.failed", error="sk_live_secret_12345 rejected", card="4242424242424242"
        )
    finally:
        configure_logging("console", "info")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["error"] == f"{REDACTED} rejected"
    assert line["card"] == "424242******4242"


# -- card numbers, however written -------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        *CARD_NUMBERS_WITH_SEPARATORS,
        "4242 4242-4242.4242",
        "4242 4242 4242 4242".translate(FULLWIDTH),
    ],
)
def test_card_numbers_are_masked_whatever_their_separators(text):
    out = Redactor().text(f"card {text} ok")
    assert digit_count(out) <= 10 and "*" in out and out.startswith("card ")


def _hidden(text: str, card, out: str) -> bool:
    """The card number is no longer in `out`: not as written, and its middle
    digits (all but the first six and last four) are gone."""
    return card.text not in out and digit_count(out) <= digit_count(text) - (len(card.digits) - 10)


@settings(max_examples=300, deadline=None)
@given(found=embedded(written()))
def test_a_card_number_in_any_text_is_masked(found):
    text, card, _start, _end = found
    assume(not reads_as_date(card))
    assert _hidden(text, card, Redactor().text(text))


@settings(max_examples=300, deadline=None)
@given(found=embedded(written()), ensure_ascii=st.booleans(), php=st.booleans())
def test_a_card_number_in_a_json_body_is_masked_whatever_its_escapes(found, ensure_ascii, php):
    text, card, _start, _end = found
    assume(not reads_as_date(card))
    body = json.dumps({"note": text}, ensure_ascii=ensure_ascii)
    if php:  # PHP's json_encode writes "/" as "\/"
        body = body.replace("/", "\\/")
    out = Redactor().text(body)
    assert _hidden(text, card, json.loads(out)["note"])


@settings(max_examples=300, deadline=None)
@given(found=embedded(written()), plus=st.booleans())
def test_a_card_number_in_a_url_query_is_masked_whatever_its_escapes(found, plus):
    text, card, _start, _end = found
    assume(not reads_as_date(card))
    query = urlencode({"q": text}, quote_via=quote_plus if plus else quote)
    out = Redactor().text(f"order_id=ORD-1&{query}")
    assert _hidden(text, card, parse_qs(out)["q"][0])


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(
        st.text(alphabet='0123456789 -._/\\%+:Tu"abcdefnrtx', max_size=50),
        embedded(written()).map(
            lambda found: urlencode({"q": found[0]}, quote_via=quote).replace("q=", "")
        ),
        embedded(written()).map(lambda found: json.dumps(found[0])[1:-1]),
    )
)
def test_the_quick_test_before_decoding_escapes_never_hides_a_card_number(text):
    """A text the quick test passes over (no 13 characters in a row that a
    run of digits or its escapes could be written with) is masked the same as
    when its escapes are decoded and searched."""
    masked = Redactor().text(text)
    with mock.patch.object(redaction, "_might_decode_to_long_run", lambda _value: True):
        assert masked == Redactor().text(text)


def test_a_timestamp_is_passed_over_without_decoding_its_plus_sign(monkeypatch):
    monkeypatch.setattr(redaction, "_unescaped", None)  # decoding would fail
    at = "2026-12-02T06:40:01.123456+00:00"
    assert digit_count(at) >= 13
    assert Redactor().text(at) == at


@settings(max_examples=300, deadline=None)
@given(text=ordinary_texts.filter(lambda t: not re.search("[0-9a-fA-F]{16}", t)))
def test_ordinary_text_is_left_as_it_is(text):
    assert Redactor().text(text) == text
    assert Redactor().text(json.dumps({"note": text})) == json.dumps({"note": text})


def test_keys_are_redacted_as_values_are():
    out = Redactor(["sk_live_abcdef123"]).value({"4242 4242 4242 4242": {"sk_live_abcdef123": 1}})
    assert out == {"424242******4242": {REDACTED: 1}}


# -- secrets of any length ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc", REDACTED),
        ("Bearer abc", f"Bearer {REDACTED}"),
        ('{"api_key":"abc","other":"abcdef"}', f'{{"api_key":"{REDACTED}","other":"abcdef"}}'),
        ("https://pse.test/v1?key=abc&x=1", f"https://pse.test/v1?key={REDACTED}&x=1"),
        ("key abc rejected.", f"key {REDACTED} rejected."),
        ("abcdef xabc abc_1 cabcd", "abcdef xabc abc_1 cabcd"),  # inside other words
    ],
)
def test_a_short_secret_is_redacted_where_it_stands_as_a_whole_token(text, expected):
    assert Redactor(["abc"]).text(text) == expected


def test_secrets_of_every_length_are_redacted_and_the_longest_whole():
    redactor = Redactor(["x", "ab", "abc", "abcd1", "abcdef", "abcdefgh"])
    assert redactor.text("x ab abc abcd1 abcdef abcdefgh") == " ".join([REDACTED] * 6)
    # A long secret goes wherever it is, inside a word too; a short one does not.
    assert redactor.text("zzabcdefghzz xyz") == f"zz{REDACTED}zz xyz"


def test_a_secret_added_later_is_redacted_too():
    redactor = Redactor()
    redactor.add("k1")
    assert redactor.text("token k1.") == f"token {REDACTED}."
