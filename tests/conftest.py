"""Test fixtures: a PostgreSQL database of our own per test session, an app
wired with fakes, and API keys of every role.

PostgreSQL tests skip when no server answers, unless REQUIRE_POSTGRES=1
(CI), where they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.db.engine import create_engine, migrate
from app.adapters.db.tables import metadata
from app.api.app import create_app
from app.bootstrap import Container, build_container
from app.config import Settings, load_settings
from tests.fakes import FakeClock, FakeGateway

ADMIN_DSN = os.environ.get("PSE_REFUNDS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _require_postgres() -> bool:
    return os.environ.get("REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    name = f"refunds_test_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc}"
        if _require_postgres():
            pytest.fail(message)
        pytest.skip(message)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    await asyncio.to_thread(migrate, url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url, pool_size=20)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db(pg_engine: AsyncEngine) -> AsyncEngine:
    """A clean database for each test."""
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables if t.name != "audit_head")
    async with pg_engine.begin() as conn:
        # The audit trail refuses TRUNCATE unless told it is a purge.
        await conn.execute(text("SET LOCAL pse_refunds.audit_purge = 'on'"))
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        await conn.execute(
            text(
                "UPDATE audit_head SET seq = 0, hash = :g, anchor_seq = 0, anchor_hash = :g,"
                " purged_at = NULL"
            ),
            {"g": "0" * 64},
        )
    return pg_engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


def settings_for(postgres_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": postgres_url,
        "accounts": {
            "fake_jp": {"provider": "sandbox", "api_key": "sk_fake", "base_url": "http://pse.test"},
            "other": {"provider": "sandbox", "api_key": "sk_fake", "base_url": "http://pse.test"},
        },
        "policy": {
            "approval_tiers": [
                {"currency": "JPY", "above": 10000, "approvals": 1, "min_level": 1},
                {"currency": "JPY", "above": 100000, "approvals": 2, "min_level": 2},
            ]
        },
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class Api:
    client: httpx.AsyncClient
    container: Container
    keys: dict[str, str]
    clock: FakeClock
    gateway: FakeGateway

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    async def settle(self) -> None:
        """Wait for background submissions started by the last requests."""
        await self.container.submitter.drain()


KEY_SPECS: dict[str, tuple[list[str], int | None]] = {
    "store": (["store"], None),
    "store2": (["store"], None),
    "approver1": (["approver"], 1),
    "approver1b": (["approver"], 1),
    "approver2": (["approver"], 2),
    "approver3": (["approver"], 3),
    "ops": (["ops"], None),
    "admin": (["admin"], 3),
    "store_approver": (["store", "approver"], 3),
}


@pytest.fixture
async def make_api(
    db: AsyncEngine, postgres_url: str, clock: FakeClock, gateway: FakeGateway
) -> AsyncIterator[Callable[..., Any]]:
    """Build an API over the test database; keyword overrides go to the settings."""
    opened: list[Api] = []

    async def build(**overrides: Any) -> Api:
        settings = settings_for(postgres_url, **overrides)
        container = build_container(
            settings, clock=clock, gateway_factory=lambda _a, _h: gateway, engine=db
        )
        app = create_app(container)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        keys = {}
        for name, (roles, level) in KEY_SPECS.items():
            _key, secret = await container.keys.create(name, roles, level)
            keys[name] = secret
        built = Api(client, container, keys, clock, gateway)
        opened.append(built)
        return built

    yield build
    # The engine belongs to the session; close only what each app opened.
    for built in opened:
        await built.container.submitter.aclose()
        await built.client.aclose()
        await built.container.http.aclose()


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> Api:
    return await make_api()
