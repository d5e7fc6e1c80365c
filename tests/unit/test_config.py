"""Configuration refuses what would make the service unsafe, naming the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import WEBHOOK_SECRET_FORMATS, ConfigError, has_any_configuration, load_settings
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


# -- database_url and the config file -----------------------------------------


@pytest.fixture
def no_configuration(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("PSE_REFUNDS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_without_a_database_url_the_embedded_postgresql_is_used(no_configuration):
    settings = load_settings()
    assert settings.database_url is None and settings.uses_embedded_database
    assert settings.embedded_data_dir == Path(".pse-refunds")


def test_the_embedded_data_folder_is_a_setting(no_configuration, monkeypatch):
    monkeypatch.setenv("PSE_REFUNDS_EMBEDDED_DATA_DIR", "/var/lib/pse-refunds")
    assert load_settings().embedded_data_dir == Path("/var/lib/pse-refunds")
    # Where the demo keeps its data does not make it a configured service.
    assert not has_any_configuration()


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql+asyncpg://u:p@db:5432/refunds", "postgresql+asyncpg://u:p@db:5432/refunds"),
        ("postgresql://u@db/refunds", "postgresql+asyncpg://u@db/refunds"),
        (
            "postgresql://postgres@/refunds?host=/run/pg",
            "postgresql+asyncpg://postgres@/refunds?host=/run/pg",
        ),
        ("", None),
    ],
)
def test_postgresql_urls_are_accepted_in_either_spelling(given, used, no_configuration):
    assert load_settings(database_url=given).database_url == used


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///./pse-refunds.db",
        "mysql://u:secret@db/refunds",
        "postgres://u@db/refunds",
        "db.example:5432/orders",
    ],
)
def test_any_other_database_url_is_refused_naming_the_key_not_the_url(url, no_configuration):
    with pytest.raises(ConfigError, match=r"database_url: .*must be a PostgreSQL URL") as info:
        load_settings(database_url=url)
    assert url not in str(info.value)


def test_a_missing_config_file_is_refused_naming_it(no_configuration, monkeypatch):
    missing = no_configuration / "missing.toml"
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(missing))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        f"invalid configuration: {missing}: no such file (named by PSE_REFUNDS_CONFIG_FILE)"
    )


def test_a_config_file_with_a_toml_syntax_error_is_refused_naming_it_and_the_line(
    no_configuration, monkeypatch
):
    broken = no_configuration / "pse-refunds.toml"  # the default file, found in the folder
    broken.write_text('log_level = "info"\nlog_format = json\n')
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("invalid configuration: pse-refunds.toml: not TOML: ")
    assert "line 2" in message


def test_a_config_file_that_is_not_text_is_refused_naming_it(no_configuration, monkeypatch):
    binary = no_configuration / "c.toml"
    binary.write_bytes(b"\xff\xfe\x00log")
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(binary))
    with pytest.raises(ConfigError, match=rf"invalid configuration: {binary}: not UTF-8 text"):
        load_settings()
