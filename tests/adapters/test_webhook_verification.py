"""The one check every adapter's webhook signature or token goes through."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from app.adapters.pse.base import PseAccount, verify_webhook
from app.domain.pse import InvalidWebhookSignature

BODY = b'{"id":"evt_1"}'


def account(*secrets: str) -> PseAccount:
    return PseAccount(
        name="acct",
        provider="x",
        api_key="k",
        base_url="http://127.0.0.1:9",
        webhook_secrets=secrets,
    )


def hex_hmac(key: bytes) -> bytes:
    return hmac.new(key, BODY, hashlib.sha256).hexdigest().encode()


@pytest.mark.parametrize("secrets", [pytest.param(("",), id="empty"), pytest.param((), id="none")])
def test_an_hmac_keyed_with_nothing_is_never_accepted(secrets: tuple[str, ...]) -> None:
    with pytest.raises(InvalidWebhookSignature):
        verify_webhook(account(*secrets), [hex_hmac(b"")], hex_hmac, header="X-Signature")


def test_a_secret_that_decodes_to_no_key_is_never_used() -> None:
    with pytest.raises(InvalidWebhookSignature):
        verify_webhook(
            account("whsec_"),
            [hex_hmac(b"")],
            hex_hmac,
            header="X-Signature",
            key_of=lambda secret: secret.removeprefix("whsec_").encode(),
        )


def test_an_empty_token_never_matches_an_empty_secret() -> None:
    with pytest.raises(InvalidWebhookSignature):
        verify_webhook(account(""), [b""], lambda token: token, header="X-Token")


def test_an_empty_secret_beside_a_real_one_leaves_only_the_real_one() -> None:
    real = account("", "s3cret-webhook-key-0001")

    verify_webhook(real, [hex_hmac(b"s3cret-webhook-key-0001")], hex_hmac, header="X-Signature")
    with pytest.raises(InvalidWebhookSignature):
        verify_webhook(real, [hex_hmac(b"")], hex_hmac, header="X-Signature")


def test_any_presented_signature_may_match_any_configured_secret() -> None:
    rotating = account("old-webhook-key-000001", "new-webhook-key-000002")

    verify_webhook(
        rotating,
        [b"0" * 64, b"", hex_hmac(b"new-webhook-key-000002")],
        hex_hmac,
        header="X-Signature",
    )
    with pytest.raises(InvalidWebhookSignature):
        verify_webhook(rotating, [b"0" * 64], hex_hmac, header="X-Signature")
