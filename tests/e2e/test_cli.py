"""The command line: keys, migrations, configuration errors and the refusal to
run on an unmigrated database, on PostgreSQL databases of their own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import asyncpg
import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from app.api.app import create_app
from app.bootstrap import build_container
from app.cli import cli
from app.config import load_settings


@pytest.fixture
def no_configuration(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("PSE_REFUNDS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def pg_env(fresh_database, no_configuration, monkeypatch):
    monkeypatch.setenv("PSE_REFUNDS_DATABASE_URL", fresh_database)
    return fresh_database


@pytest.fixture
def unmigrated_env(empty_database, no_configuration, monkeypatch):
    monkeypatch.setenv("PSE_REFUNDS_DATABASE_URL", empty_database)
    return empty_database


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _tables(connection: asyncpg.Connection) -> list[str]:
    found = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return [row[0] for row in found]


def tables_of(url: str) -> set[str]:
    async def tables() -> set[str]:
        connection = await asyncpg.connect(dsn(url))
        try:
            return set(await _tables(connection))
        finally:
            await connection.close()

    return asyncio.run(tables())


def everything_stored(url: str) -> str:
    """Every row of every table, as text."""

    async def dump() -> str:
        connection = await asyncpg.connect(dsn(url))
        try:
            rows = []
            for table in await _tables(connection):
                rows += await connection.fetch(f'SELECT t::text FROM "{table}" t')
            return "\n".join(row[0] for row in rows)
        finally:
            await connection.close()

    return asyncio.run(dump())


def test_keys_create_prints_the_secret_once_and_stores_only_its_hash(pg_env):
    result = run(
        "keys", "create", "--name", "alice", "--role", "approver", "--approval-level", "2", "--json"
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert set(created) == {"id", "name", "key", "roles", "approval_level", "accounts"}
    assert created["roles"] == ["approver"] and created["approval_level"] == 2
    assert created["accounts"] is None  # unscoped: every account
    assert created["key"].startswith("prk_")
    stored = everything_stored(pg_env)
    assert created["key"] not in stored
    assert created["id"] in stored


def test_a_created_key_authenticates_and_a_revoked_one_does_not(pg_env):
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


def test_keys_list_shows_a_header_and_the_approval_level(pg_env):
    for args in (
        ["--name", "shop", "--role", "store"],
        ["--name", "alice", "--role", "approver", "--approval-level", "2"],
    ):
        assert run("keys", "create", *args).exit_code == 0
    result = run("keys", "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == ["ID", "PREFIX", "ROLES", "LEVEL", "STATE", "ACCOUNTS", "NAME"]
    by_name = {row.split()[-1]: row.split() for row in rows}
    assert by_name["shop"][2:6] == ["store", "-", "active", "all"]
    assert by_name["alice"][2:6] == ["approver", "2", "active", "all"]
    # The columns line up under the header.
    level = header.index("LEVEL")
    assert {row[level] for row in rows} == {"-", "2"}


def test_a_key_scoped_to_pse_accounts_is_created_shown_and_named_accounts_checked(
    pg_env, no_configuration, monkeypatch
):
    config = no_configuration / "accounts.toml"
    config.write_text(
        "".join(
            f'[accounts.{name}]\nprovider = "sandbox"\napi_key = "k"\n'
            'base_url = "http://127.0.0.1:9"\n'
            for name in ("komoju_jp", "stripe_jp", "omise_th")
        )
    )
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(config))
    result = run(
        "keys", "create", "--name", "shop-a", "--role", "store",
        "--account", "stripe_jp", "--account", "komoju_jp", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    created = json.loads(result.output)
    assert created["accounts"] == ["komoju_jp", "stripe_jp"]
    text = run("keys", "create", "--name", "shop-b", "--role", "store", "--account", "omise_th")
    assert text.exit_code == 0 and "accounts: omise_th" in text.output
    listed = json.loads(run("keys", "list", "--json").output)
    assert [(k["name"], k["accounts"]) for k in listed] == [
        ("shop-a", ["komoju_jp", "stripe_jp"]),
        ("shop-b", ["omise_th"]),
    ]
    header, *rows = run("keys", "list").output.splitlines()
    accounts = header.index("ACCOUNTS")
    assert {row.split()[-1]: row[accounts:].split()[0] for row in rows} == {
        "shop-a": "komoju_jp,stripe_jp",
        "shop-b": "omise_th",
    }
    # An account that is not configured is refused, naming it; nothing is made.
    refused = CliRunner().invoke(
        cli,
        ["keys", "create", "--name", "shop-c", "--role", "store",
         "--account", "komoju_jp", "--account", "komoju_jq"],
    )  # fmt: skip
    assert refused.exit_code == 2
    assert "no PSE account named 'komoju_jq' is configured" in refused.output
    assert "komoju_jp, omise_th, stripe_jp" in refused.output  # the ones that are
    assert [k["name"] for k in json.loads(run("keys", "list", "--json").output)] == [
        "shop-a",
        "shop-b",
    ]


def test_an_approver_key_needs_a_level_and_roles_are_checked(pg_env):
    result = CliRunner().invoke(cli, ["keys", "create", "--name", "bob", "--role", "approver"])
    assert result.exit_code == 2
    assert "approval level" in result.output
    result = CliRunner().invoke(cli, ["keys", "create", "--name", "bob", "--role", "wizard"])
    assert result.exit_code == 2
    assert "roles must be among" in result.output


def test_a_bad_configuration_stops_the_command_naming_the_key(no_configuration, monkeypatch):
    config = no_configuration / "bad.toml"
    config.write_text('bogus = 1\n[accounts.x]\nprovider = "stripe"\napi_key = "env:NOPE_UNSET"\n')
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(config))
    result = CliRunner().invoke(cli, ["migrate"])
    assert result.exit_code == 2
    assert "bogus: unknown key" in result.output
    assert "accounts.x.api_key" in result.output and "NOPE_UNSET is not set" in result.output


def test_a_database_url_that_is_not_postgresql_is_refused_naming_the_key(
    no_configuration, monkeypatch
):
    monkeypatch.setenv("PSE_REFUNDS_DATABASE_URL", "sqlite+aiosqlite:///./pse-refunds.db")
    result = CliRunner().invoke(cli, ["migrate"])
    assert result.exit_code == 2
    assert result.stderr.startswith("pse-refunds: invalid configuration:")
    assert "database_url: Value error, must be a PostgreSQL URL" in result.stderr


@pytest.mark.parametrize(
    "command",
    [["migrate"], ["serve"], ["worker"], ["keys", "list"], ["audit", "verify"]],
    ids=" ".join,
)
@pytest.mark.parametrize("named_by", ["--config", "PSE_REFUNDS_CONFIG_FILE"])
def test_a_missing_config_file_ends_in_a_tidy_message_naming_it(
    command, named_by, no_configuration, monkeypatch
):
    missing = no_configuration / "nowhere.toml"
    args = [*command, "--config", str(missing)] if named_by == "--config" else command
    if named_by != "--config":
        monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(missing))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"pse-refunds: invalid configuration: {missing}: no such file (named by {named_by})\n"
    )
    assert not (no_configuration / ".pse-refunds").exists()  # nothing was started


@pytest.mark.parametrize("named_by", ["--config", "PSE_REFUNDS_CONFIG_FILE"])
def test_a_config_file_that_is_not_toml_ends_in_a_tidy_message_naming_it(
    named_by, no_configuration, monkeypatch
):
    broken = no_configuration / "broken.toml"
    broken.write_text('stale_after_hours = 5\n[worker\nenabled = "yes"\n')
    if named_by == "--config":
        args = ["serve", "--config", str(broken)]
    else:
        monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(broken))
        args = ["serve"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"pse-refunds: invalid configuration: {broken.resolve()}: not TOML:")
    assert "line 2" in line


def test_the_config_option_names_the_file_to_use(fresh_database, no_configuration):
    config = no_configuration / "elsewhere.toml"
    config.write_text(f'database_url = "{fresh_database}"\n')
    result = run("keys", "create", "--name", "shop", "--role", "store", "--config", str(config))
    assert result.exit_code == 0, result.output
    listed = json.loads(run("keys", "list", "--json", "--config", str(config)).output)
    assert [key["name"] for key in listed] == ["shop"]
    assert "PSE_REFUNDS_CONFIG_FILE" not in os.environ  # only for the command's duration


def test_environment_variables_win_over_the_file(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text("stale_after_hours = 5\n[worker]\npoll_interval_seconds = 3\n")
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(config))
    monkeypatch.setenv("PSE_REFUNDS_STALE_AFTER_HOURS", "7")
    settings = load_settings()
    assert settings.stale_after_hours == 7
    assert settings.worker.poll_interval_seconds == 3


def test_readiness_fails_until_the_schema_is_migrated(unmigrated_env):
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
    result = run("migrate")
    assert result.exit_code == 0 and result.output == "schema at head\n"
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


@pytest.mark.parametrize(
    "command", [["serve"], ["serve", "--workers", "2"], ["worker"]], ids=" ".join
)
def test_serving_or_the_worker_refuse_an_unmigrated_database_in_one_line(
    command, unmigrated_env, monkeypatch
):
    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: started.append(a))
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("pse-refunds: cannot use the database postgresql+asyncpg://")
    assert line.endswith("run `pse-refunds migrate`")
    assert started == []
    # The operator's database is the operator's to migrate.
    assert tables_of(unmigrated_env) == set()


def test_the_worker_process_refuses_an_unmigrated_database_without_a_traceback(
    unmigrated_env, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
    env.update(PSE_REFUNDS_DATABASE_URL=unmigrated_env, PYTHONPATH=os.getcwd())
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "the schema is at nothing" in line and line.endswith("run `pse-refunds migrate`")


def test_the_version_is_printed():
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.startswith("pse-refunds ")
    assert result.output.split()[1][0].isdigit()


def test_help_texts_keep_the_toml_tables_they_quote():
    wide = {"COLUMNS": "200"}
    top = CliRunner().invoke(cli, ["--help"], env=wide)
    assert "unless [worker] enabled = false" in top.output
    serve = CliRunner().invoke(cli, ["serve", "--help"], env=wide)
    assert "unless [worker] enabled = false" in serve.output
    assert "--config" in serve.output


def test_reconcile_prints_the_counts_and_exits_zero(fresh_database, no_configuration, monkeypatch):
    config = no_configuration / "c.toml"
    config.write_text(
        f'database_url = "{fresh_database}"\n'
        '[accounts.komoju_jp]\nprovider = "sandbox"\napi_key = "k"\n'
        'base_url = "http://127.0.0.1:9"\n'
    )
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(config))
    settlement = no_configuration / "settlement.csv"
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
    assert re.search(r"^\s*missing_in_service +2$", result.output, re.M), result.output
    bad = no_configuration / "bad.csv"
    bad.write_text(settlement.read_text().replace("2000", "20.00"))
    result = CliRunner().invoke(cli, ["reconcile", "--account", "komoju_jp", str(bad)])
    assert result.exit_code == 2
    assert "line 3: amount '20.00' is not an integer of minor units" in result.output


WEAK = "whsec_" + "c2hvcnQtc2VjcmV0"  # 12 bytes: under Standard Webhooks' 24


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("setting", "key"),
    [
        (
            f'[store_webhook]\nurl = "https://store.example/h"\nsecret = "{WEAK}"\n',
            "store_webhook.secret: Value error, the secret is too short",
        ),
        (
            '[accounts.st]\nprovider = "stripe"\napi_key = "k"\n'
            'base_url = "http://api.stripe.example"\n',
            "accounts.st.base_url: Value error, base_url is http://",
        ),
        (
            f'[store_webhook]\nurl = "http://store.example/h"\nsecret = "{WEAK}AAAAAAAAAAAAAAAA"\n',
            "store_webhook.url: Value error, url is http://",
        ),
        ('metrics_token = "tiny-tok"\n', "metrics_token: Value error, is too short"),
    ],
    ids=["store secret", "http base_url", "http store url", "metrics token"],
)
def test_a_weak_setting_stops_serve_and_worker_naming_the_key_never_the_secret(
    command, setting, key, no_configuration, monkeypatch
):
    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    config = no_configuration / "weak.toml"
    config.write_text(setting)
    result = CliRunner().invoke(cli, [command, "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("pse-refunds: invalid configuration:")
    assert key in result.stderr
    for secret in ("c2hvcnQtc2VjcmV0", "tiny-tok", "api.stripe.example", "store.example"):
        assert secret not in result.stderr
    assert started == [] and not (no_configuration / ".pse-refunds").exists()


def test_serve_refuses_a_metrics_port_that_is_its_own_port(no_configuration, monkeypatch):
    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    config = no_configuration / "c.toml"
    config.write_text("metrics_port = 8125\n")
    result = CliRunner().invoke(cli, ["serve", "--port", "8125", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "metrics_port: 8125 is the port serve listens on" in result.stderr
    assert started == [] and not (no_configuration / ".pse-refunds").exists()
