"""A revoked key stops working in every process at once.

Two containers on one database stand for two processes (`serve --workers N`,
or several hosts): each has its own pool, its own key cache and, when
serving, its own listener of revocations. What is revoked through one is
refused by the other on its very next request, once the notification has
arrived (waited for with a short bounded poll, never a sleep); and while a
listener is not connected, its cache is not trusted at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from app.adapters.db.key_events import APPLICATION_NAME, RevocationListener
from app.api.app import create_app
from app.bootstrap import Container, build_container
from tests.conftest import settings_for

pytestmark = pytest.mark.postgres


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `condition` holds within `seconds` (polled every 10 ms)."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


@pytest.fixture
async def processes(db, postgres_url, clock, gateway) -> AsyncIterator[list[Container]]:
    """Two containers on the test database, each with a pool of its own."""
    built = [
        build_container(
            settings_for(postgres_url), clock=clock, gateway_factory=lambda _a, _h: gateway
        )
        for _ in range(2)
    ]
    yield built
    for container in built:
        await container.aclose()


@pytest.fixture
async def following() -> AsyncIterator[Callable[[Container], asyncio.Event]]:
    """Start a container's listener of revocations (as its app's lifespan
    does); every one started is stopped at the end."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(container: Container) -> asyncio.Event:
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(container.follow_revocations(stop))))
        return stop

    yield start
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 10)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_a_key_revoked_by_one_process_is_refused_by_another_at_its_next_request(
    processes, following
):
    one, other = processes
    following(other)
    assert await until(lambda: other.keys.trusts_cache)
    key, secret = await one.keys.create("shop", ["store"])
    app = create_app(other)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/v1/payments", headers=bearer(secret))).status_code == 200
        # From now on the other process would answer from its cache...
        assert other.keys.cached(key.id)
        assert other.revocations is not None
        heard = other.revocations.heard
        await one.keys.revoke(key.id)
        # ...but it hears of the revocation as it commits.
        assert await until(lambda: other.revocations.heard > heard)
        refused = await client.get("/v1/payments", headers=bearer(secret))
    assert refused.status_code == 401
    assert not other.keys.cached(key.id)
    assert await other.keys.authenticate(secret) is None


async def test_while_no_listener_is_connected_every_request_reads_its_key_from_the_database(
    processes,
):
    one, other = processes  # `other` listens to nothing: just started, say
    key, secret = await one.keys.create("shop", ["store"])
    assert await other.keys.authenticate(secret) == key
    assert not other.keys.trusts_cache and not other.keys.cached(key.id)
    await one.keys.revoke(key.id)  # heard by nobody
    assert await other.keys.authenticate(secret) is None


async def test_a_broken_listener_connection_stops_the_cache_until_it_listens_again(
    processes, following, pg_pool
):
    one, other = processes
    # Slow to reconnect, so that the test sees the time in between.
    assert other.revocations is not None
    other.revocations = RevocationListener(
        other.revocations.url,
        other.keys.revoked,
        other.keys.follow_revocations,
        retry_seconds=(1.0,),
    )
    following(other)
    assert await until(lambda: other.keys.trusts_cache)
    key, secret = await one.keys.create("shop", ["store"])
    assert await other.keys.authenticate(secret) == key and other.keys.cached(key.id)
    async with pg_pool.acquire() as conn:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
    assert killed == 1
    assert await until(lambda: not other.keys.trusts_cache)
    assert not other.keys.cached(key.id)
    # Revoked while nobody listens: the next request reads the database.
    await one.keys.revoke(key.id)
    assert await other.keys.authenticate(secret) is None
    # The listener comes back, and with it the cache and the notifications.
    assert await until(lambda: other.keys.trusts_cache)
    second, second_secret = await one.keys.create("shop-2", ["store"])
    assert await other.keys.authenticate(second_secret) == second
    assert other.keys.cached(second.id)
    await one.keys.revoke(second.id)
    assert await until(lambda: not other.keys.cached(second.id))
    assert await other.keys.authenticate(second_secret) is None


async def test_a_key_read_while_a_revocation_is_heard_is_not_cached(processes, following):
    """A revocation heard while a key was being read from the database may be
    that key's: what was read is not kept."""
    one, other = processes
    following(other)
    assert await until(lambda: other.keys.trusts_cache)
    key, secret = await one.keys.create("shop", ["store"])
    real_uow = other.deps.uow

    def uow_hearing_a_revocation():
        other.keys.revoked("key_somebody")  # heard during the read
        return real_uow()

    other.keys.deps.uow = uow_hearing_a_revocation
    try:
        assert await other.keys.authenticate(secret) == key
    finally:
        other.keys.deps.uow = real_uow
    assert not other.keys.cached(key.id)
    assert await other.keys.authenticate(secret) == key
    assert other.keys.cached(key.id)


async def test_the_apps_lifespan_listens_for_revocations_while_it_serves(processes):
    _one, other = processes
    app = create_app(other)
    assert not other.keys.trusts_cache
    async with app.router.lifespan_context(app):
        assert await until(lambda: other.keys.trusts_cache)
    assert not other.keys.trusts_cache
