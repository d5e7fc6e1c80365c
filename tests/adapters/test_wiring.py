"""Every provider the configuration accepts is wired to its adapter."""

from __future__ import annotations

import typing

import pytest

from app.bootstrap import ADAPTERS, build_container
from app.config import ConfigError, Provider, load_settings
from tests.webhook_secrets import WELL_FORMED


def test_every_configurable_provider_has_an_adapter():
    assert set(typing.get_args(Provider)) == set(ADAPTERS)


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
async def test_an_account_of_each_provider_gets_its_gateway(provider, tmp_path, monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    account = {
        "provider": provider,
        "api_key": "sk_test",
        "webhook_secrets": [WELL_FORMED[provider]],
    }
    if provider == "razorpay":
        account["options"] = {"key_id": "rzp_test_1"}
    if provider == "sandbox":
        account["base_url"] = "http://127.0.0.1:9"
    settings = load_settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:9/unused", accounts={"acct": account}
    )
    container = build_container(settings)
    try:
        gateway = container.deps.gateways["acct"]
        module, cls = ADAPTERS[provider]
        assert type(gateway).__module__ == module and type(gateway).__name__ == cls
    finally:
        await container.aclose()


def test_an_adapter_refusing_its_settings_stops_the_start_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    settings = load_settings(
        database_url="postgresql+asyncpg://postgres@127.0.0.1:9/unused",
        accounts={"rzp": {"provider": "razorpay", "api_key": "secret"}},
    )
    with pytest.raises(ConfigError, match=r"accounts\.rzp\.options\.key_id"):
        build_container(settings)
