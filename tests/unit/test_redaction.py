"""Redaction of secrets and card numbers, in stored records and in log lines."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from app.logs import configure_logging
from app.redaction import REDACTED, Redactor


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


@pytest.mark.parametrize("text", ["order 1234567890123", "amount 12000 JPY", "ts 1764230400123"])
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
