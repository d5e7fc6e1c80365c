"""The command line: keys, migrations and configuration errors, on a SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import httpx
import pytest
from typer.testing import CliRunner

from app.api.app import create_app
from app.bootstrap import build_container
from app.cli import cli
from app.config import load_settings


@pytest.fixture
def sqlite_env(tmp_path, monkeypatch):
    db = tmp_path / "refunds.db"
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PSE_REFUNDS_DATABASE_URL", f"sqlite+aiosqlite:///{db}")
    return db


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_keys_create_prints_the_secret_once_and_stores_only_its_hash(sqlite_env):
    result = run(
        "keys", "create", "--name", "alice", "--role", "approver", "--approval-level", "2", "--json"
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert set(created) == {"id", "name", "key", "roles", "approval_level"}
    assert created["roles"] == ["approver"] and created["approval_level"] == 2
    assert created["key"].startswith("prk_")
    dump = "\n".join(sqlite3.connect(sqlite_env).iterdump())
    assert created["key"] not in dump
    assert created["id"] in dump


def test_a_created_key_authenticates_and_a_revoked_one_does_not(sqlite_env):
    created = json.loads(
        run("keys", "create", "--name", "shop", "--role", "store", "--json").output
    )
    settings = load_settings()

    async def status() -> int:
        container = build_container(settings)
        app = create_app(container)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            r = await client.get(
                "/v1/payments", headers={"Authorization": f"Bearer {created['key']}"}
            )
        await container.aclose()
        return r.status_code

    assert asyncio.run(status()) == 200
    result = run("keys", "revoke", created["id"])
    assert result.exit_code == 0
    assert asyncio.run(status()) == 401
    assert run("keys", "revoke", created["id"]).exit_code == 1
    listed = json.loads(run("keys", "list", "--json").output)
    assert listed[0]["revoked"] is True and "key" not in listed[0]


def test_an_approver_key_needs_a_level_and_roles_are_checked(sqlite_env):
    result = CliRunner().invoke(cli, ["keys", "create", "--name", "bob", "--role", "approver"])
    assert result.exit_code == 2
    assert "approval level" in result.output
    result = CliRunner().invoke(cli, ["keys", "create", "--name", "bob", "--role", "wizard"])
    assert result.exit_code == 2
    assert "roles must be among" in result.output


def test_a_bad_configuration_stops_the_command_naming_the_key(sqlite_env, tmp_path, monkeypatch):
    config = tmp_path / "bad.toml"
    config.write_text('bogus = 1\n[accounts.x]\nprovider = "stripe"\napi_key = "env:NOPE_UNSET"\n')
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(config))
    result = CliRunner().invoke(cli, ["migrate"])
    assert result.exit_code == 2
    assert "bogus: unknown key" in result.output
    assert "accounts.x.api_key" in result.output and "NOPE_UNSET is not set" in result.output


def test_environment_variables_win_over_the_file(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text("stale_after_hours = 5\n[worker]\npoll_interval_seconds = 3\n")
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(config))
    monkeypatch.setenv("PSE_REFUNDS_STALE_AFTER_HOURS", "7")
    settings = load_settings()
    assert settings.stale_after_hours == 7
    assert settings.worker.poll_interval_seconds == 3


def test_readiness_fails_until_the_schema_is_migrated(sqlite_env):
    settings = load_settings()

    async def ready() -> tuple[int, dict]:
        container = build_container(settings)
        app = create_app(container)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            r = await client.get("/readyz")
            live = await client.get("/healthz")
        await container.aclose()
        assert live.status_code == 200
        return r.status_code, r.json()

    status, body = asyncio.run(ready())
    assert status == 503 and body["code"] == "not_ready"
    assert run("migrate").exit_code == 0
    status, body = asyncio.run(ready())
    assert status == 200 and body["status"] == "ready"


def test_readiness_fails_when_the_database_is_unreachable(monkeypatch):
    monkeypatch.delenv("PSE_REFUNDS_CONFIG_FILE", raising=False)
    settings = load_settings(database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none")

    async def ready() -> int:
        container = build_container(settings)
        app = create_app(container)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            r = await client.get("/readyz")
        await container.aclose()
        return r.status_code

    assert asyncio.run(ready()) == 503


def test_reconcile_prints_the_counts_and_exits_zero(sqlite_env, tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text(
        f'database_url = "sqlite+aiosqlite:///{sqlite_env}"\n'
        '[accounts.komoju_jp]\nprovider = "sandbox"\napi_key = "k"\n'
        'base_url = "http://127.0.0.1:9"\n'
    )
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(config))
    monkeypatch.delenv("PSE_REFUNDS_DATABASE_URL")
    settlement = tmp_path / "settlement.csv"
    settlement.write_text(
        "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
        "settlement_amount,settlement_currency\n"
        "re_1,,refund,1000,JPY,succeeded,2026-11-27T08:00:00Z,,,\n"
        "re_2,,refund,2000,JPY,failed,2026-11-27T09:00:00Z,,,\n"
        "ch_1,,charge,5000,JPY,succeeded,2026-11-27T09:00:00Z,,,\n"
    )
    result = run("reconcile", "--account", "komoju_jp", str(settlement))
    assert result.exit_code == 0, result.output
    assert "(generic, 2 refund rows)" in result.output
    assert "missing_in_service   2" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text(settlement.read_text().replace("2000", "20.00"))
    result = CliRunner().invoke(cli, ["reconcile", "--account", "komoju_jp", str(bad)])
    assert result.exit_code == 2
    assert "line 3: amount '20.00' is not an integer of minor units" in result.output
