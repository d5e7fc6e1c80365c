"""Configuration refuses what would make the service unsafe, naming the key."""

from __future__ import annotations

import pytest

from app.config import WEBHOOK_SECRET_FORMATS, ConfigError, load_settings
from tests.webhook_secrets import WELL_FORMED

GOOD_SECRETS = WELL_FORMED


def account(provider: str, *secrets: str) -> dict:
    return {
        "accounts": {
            "acct": {
                "provider": provider,
                "api_key": "sk_test_key",
                "webhook_secrets": list(secrets),
                "options": {"key_id": "rzp_test_x"} if provider == "razorpay" else {},
            }
        }
    }


def test_every_provider_has_a_secret_format():
    assert set(GOOD_SECRETS) == set(WEBHOOK_SECRET_FORMATS)


@pytest.mark.parametrize("provider", sorted(GOOD_SECRETS))
def test_a_well_formed_webhook_secret_is_accepted(provider, monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    settings = load_settings(**account(provider, GOOD_SECRETS[provider]))
    [secret] = settings.accounts["acct"].webhook_secrets
    assert secret.get_secret_value() == GOOD_SECRETS[provider]


@pytest.mark.parametrize("provider", sorted(GOOD_SECRETS))
def test_an_empty_webhook_secret_stops_the_start_naming_the_key(provider, monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    with pytest.raises(ConfigError, match=r"accounts\.acct\.webhook_secrets.*#2 is empty"):
        load_settings(**account(provider, GOOD_SECRETS[provider], ""))


@pytest.mark.parametrize("provider", sorted(GOOD_SECRETS))
def test_a_webhook_secret_shorter_than_the_providers_format_is_refused(provider, monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    good = GOOD_SECRETS[provider]
    short = good[:-4] if provider not in ("sandbox", "omise") else good[: len(good) - 8]
    with pytest.raises(ConfigError, match=r"accounts\.acct\.webhook_secrets") as info:
        load_settings(**account(provider, short))
    assert short not in str(info.value)  # the error never repeats the secret


def test_a_stripe_secret_must_be_a_signing_secret(monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    with pytest.raises(ConfigError, match="must start with whsec_"):
        load_settings(**account("stripe", "sk_live_" + "a" * 40))


def test_a_secret_read_from_the_environment_is_checked_too(monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    monkeypatch.setenv("SHORT_SECRET", "abc")
    with pytest.raises(ConfigError, match="too short"):
        load_settings(**account("komoju", "env:SHORT_SECRET"))


# -- [policy.rates] -----------------------------------------------------------


def test_operator_rates_are_read_with_their_date(monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    settings = load_settings(
        policy={"rates": {"EUR_JPY": {"rate": "162.35", "as_of": "2026-11-30"}}}
    )
    rate = settings.policy.rates["EUR_JPY"]
    assert rate.rate == "162.35" and rate.as_of.isoformat() == "2026-11-30"


@pytest.mark.parametrize(
    ("rates", "key"),
    [
        ({"EURJPY": {"rate": "162", "as_of": "2026-11-30"}}, "policy.rates.EURJPY"),
        ({"EUR_XXX": {"rate": "162", "as_of": "2026-11-30"}}, "policy.rates.EUR_XXX"),
        ({"EUR_EUR": {"rate": "1", "as_of": "2026-11-30"}}, "policy.rates.EUR_EUR"),
        ({"EUR_JPY": {"rate": "-1", "as_of": "2026-11-30"}}, "policy.rates.EUR_JPY.rate"),
        ({"EUR_JPY": {"rate": "1e3", "as_of": "2026-11-30"}}, "policy.rates.EUR_JPY.rate"),
        ({"EUR_JPY": {"rate": 162.35, "as_of": "2026-11-30"}}, "policy.rates.EUR_JPY.rate"),
        ({"EUR_JPY": {"rate": "162"}}, "policy.rates.EUR_JPY.as_of"),
    ],
)
def test_a_bad_operator_rate_stops_the_start_naming_it(rates, key, monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(policy={"rates": rates})
