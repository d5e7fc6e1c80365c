"""Configuration refuses what would make the service unsafe, naming the key."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import get_args

import pytest

from app.config import (
    WEBHOOK_SECRET_FORMATS,
    ConfigError,
    Provider,
    has_any_configuration,
    load_settings,
    secrets_of,
)
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
    # A provider without one would crash the check rather than be refused.
    assert set(get_args(Provider)) == set(WEBHOOK_SECRET_FORMATS) == set(GOOD_SECRETS)


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


# -- weak settings are refused at start ---------------------------------------


@pytest.mark.parametrize("provider", sorted(GOOD_SECRETS))
@pytest.mark.parametrize("padding", [" ", "\n", "\t"])
def test_a_webhook_secret_padded_with_whitespace_is_refused(provider, padding, monkeypatch):
    # Spaces would make a short secret long enough; a newline from a secret
    # file would make every signature fail.
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    padded = GOOD_SECRETS[provider] + padding
    with pytest.raises(
        ConfigError, match=r"webhook_secrets.*#1 has leading or trailing whitespace"
    ):
        load_settings(**account(provider, padded))
    with pytest.raises(
        ConfigError, match=r"webhook_secrets.*#1 has leading or trailing whitespace"
    ):
        load_settings(**account(provider, padding + GOOD_SECRETS[provider]))


def store_secret(size: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(size))).decode()


def store_webhook(**values) -> dict:
    return {
        "store_webhook": {
            "url": "https://store.example/hooks",
            "secret": store_secret(24),
            **values,
        }
    }


def test_a_store_webhook_secret_of_24_bytes_is_accepted(no_configuration):
    settings = load_settings(**store_webhook(secrets_previous=[store_secret(32)]))
    assert settings.store_webhook.secret.get_secret_value() == store_secret(24)


@pytest.mark.parametrize("size", [0, 1, 16, 23])
def test_a_store_webhook_secret_under_24_bytes_is_refused_naming_the_key(size, no_configuration):
    short = store_secret(size)
    with pytest.raises(ConfigError, match=r"store_webhook\.secret: .*at least 24") as info:
        load_settings(**store_webhook(secret=short))
    encoded = short.removeprefix("whsec_")
    assert not encoded or encoded not in str(info.value)


def test_a_short_previous_store_webhook_secret_is_refused_naming_its_position(no_configuration):
    short = store_secret(20)
    with pytest.raises(
        ConfigError, match=r"store_webhook\.secrets_previous: .*secret #2 is too short"
    ) as info:
        load_settings(**store_webhook(secrets_previous=[store_secret(24), short]))
    assert short.removeprefix("whsec_") not in str(info.value)


def test_a_short_store_webhook_secret_read_from_the_environment_is_refused(
    no_configuration, monkeypatch
):
    monkeypatch.setenv("STORE_SECRET", store_secret(12))
    with pytest.raises(ConfigError, match=r"store_webhook\.secret: .*too short"):
        load_settings(**store_webhook(secret="env:STORE_SECRET"))


def account_at(provider: str, base_url: str, **extra) -> dict:
    settings = account(provider, GOOD_SECRETS[provider])
    settings["accounts"]["acct"].update(base_url=base_url, **extra)
    return settings


REAL_PROVIDERS = sorted(set(GOOD_SECRETS) - {"sandbox"})


@pytest.mark.parametrize("provider", REAL_PROVIDERS)
@pytest.mark.parametrize(
    "url",
    [
        "http://api.pse.example",
        "http://10.0.0.5:8080",
        "http://192.168.1.20",
        "http://[2001:db8::1]:8080",
        "http://user:hunter2-password@pse.example/v1",
        "http://localhost.pse.example",
        "http://128.0.0.1",
        "HTTP://api.pse.example",
    ],
)
def test_an_http_base_url_outside_loopback_is_refused_naming_the_key_not_the_url(
    provider, url, no_configuration
):
    with pytest.raises(ConfigError, match=r"accounts\.acct\.base_url: .*is http://") as info:
        load_settings(**account_at(provider, url))
    assert "allow_insecure_base_url = true" in str(info.value)
    assert "hunter2" not in str(info.value) and "pse.example" not in str(info.value)


@pytest.mark.parametrize("provider", REAL_PROVIDERS)
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9",
        "http://127.8.9.10:8080/",
        "http://[::1]:8080",
        "http://localhost:8080",
        "http://LOCALHOST",
        "https://api.pse.example",
        "https://10.0.0.5:8443",
    ],
)
def test_https_or_a_loopback_base_url_is_accepted(provider, url, no_configuration):
    settings = load_settings(**account_at(provider, url))
    assert settings.accounts["acct"].base_url == url.rstrip("/")


@pytest.mark.parametrize("provider", REAL_PROVIDERS)
def test_an_http_base_url_is_accepted_when_the_account_allows_it_for_tests(
    provider, no_configuration
):
    settings = load_settings(
        **account_at(provider, "http://pse.test", allow_insecure_base_url=True)
    )
    assert settings.accounts["acct"].effective_base_url() == "http://pse.test"


def test_the_sandbox_provider_may_be_reached_over_http_anywhere(no_configuration):
    settings = load_settings(**account_at("sandbox", "http://sandbox.test/sandbox"))
    assert settings.accounts["acct"].base_url == "http://sandbox.test/sandbox"


def test_allow_insecure_base_url_is_off_by_default_and_may_come_from_the_environment(
    no_configuration, monkeypatch
):
    monkeypatch.setenv("PSE_REFUNDS_ACCOUNTS__ACCT__PROVIDER", "stripe")
    monkeypatch.setenv("PSE_REFUNDS_ACCOUNTS__ACCT__BASE_URL", "http://stripe-mock.test")
    with pytest.raises(ConfigError, match=r"accounts\.acct\.base_url"):
        load_settings()
    monkeypatch.setenv("PSE_REFUNDS_ACCOUNTS__ACCT__ALLOW_INSECURE_BASE_URL", "true")
    assert load_settings().accounts["acct"].allow_insecure_base_url is True


@pytest.mark.parametrize("url", ["http://", "http:///v1", "http://pse.example:port"])
def test_a_base_url_that_is_no_http_url_is_refused(url, no_configuration):
    with pytest.raises(ConfigError, match=r"accounts\.acct\.base_url"):
        load_settings(**account_at("stripe", url, allow_insecure_base_url=True))


@pytest.mark.parametrize(
    "url", ["http://store.example/hooks", "http://10.1.2.3/hooks", "http://[fd00::1]/hooks"]
)
def test_an_http_store_webhook_url_outside_loopback_is_refused(url, no_configuration):
    with pytest.raises(ConfigError, match=r"store_webhook\.url: .*is http://") as info:
        load_settings(**store_webhook(url=url))
    assert "allow_insecure_url = true" in str(info.value)
    assert url not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://store.example/hooks",
        "http://127.0.0.1:9/hooks",
        "http://[::1]:9/h",
        "http://localhost/h",
    ],
)
def test_an_https_or_loopback_store_webhook_url_is_accepted(url, no_configuration):
    assert load_settings(**store_webhook(url=url)).store_webhook.url == url


def test_an_http_store_webhook_url_is_accepted_when_allowed_for_tests(no_configuration):
    settings = load_settings(**store_webhook(url="http://store.test/h", allow_insecure_url=True))
    assert settings.store_webhook.url == "http://store.test/h"


def test_metrics_are_neither_authorised_nor_given_a_port_by_default(no_configuration):
    settings = load_settings()
    assert settings.metrics_token is None and settings.metrics_port is None


def test_a_metrics_token_is_a_secret_read_like_the_others(no_configuration, monkeypatch):
    monkeypatch.setenv("SCRAPE_TOKEN", "0123456789abcdef0123")
    settings = load_settings(metrics_token="env:SCRAPE_TOKEN")
    assert settings.metrics_token.get_secret_value() == "0123456789abcdef0123"
    assert "0123456789abcdef0123" not in repr(settings)
    assert "0123456789abcdef0123" in secrets_of(settings)  # redacted from logs


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("tiny-tok", "too short"),
        ("0123456789abcde", "too short"),
        ("0123456789 abcdef", "printable ASCII without spaces"),
        ("0123456789abcdef\n", "printable ASCII without spaces"),
        ("0123456789abcdéf", "printable ASCII without spaces"),
    ],
)
def test_a_weak_metrics_token_is_refused_naming_the_key_not_the_token(
    token, problem, no_configuration
):
    with pytest.raises(ConfigError, match=rf"metrics_token: .*{problem}") as info:
        load_settings(metrics_token=token)
    assert token.strip() not in str(info.value)


def test_an_empty_metrics_token_or_port_means_unset(no_configuration, monkeypatch):
    monkeypatch.setenv("PSE_REFUNDS_METRICS_TOKEN", "")
    monkeypatch.setenv("PSE_REFUNDS_METRICS_PORT", "")
    settings = load_settings()
    assert settings.metrics_token is None and settings.metrics_port is None


@pytest.mark.parametrize("port", [0, -1, 65536, "http"])
def test_a_metrics_port_that_is_no_port_is_refused(port, no_configuration):
    with pytest.raises(ConfigError, match=r"metrics_port: Input should"):
        load_settings(metrics_port=port)
