"""The PSE adapters' HTTP transport (app/adapters/pse/transport.py) against a
loopback HTTP/1.1 server of the test's own: limits kept, connections reused,
a connection the server dropped replaced, every request answered."""

from __future__ import annotations

import asyncio
import contextlib

import httpcore
import httpx
from httpcore._async.connection_pool import AsyncPoolRequest

from app.adapters.pse.transport import LinearPool, pse_transport


class Server:
    """Answers `GET /n` with `n` after a short pause, keeping connections alive
    unless `close_after` requests were served on one; counts connections."""

    def __init__(self, close_after: int | None = None, pause: float = 0.005) -> None:
        self.close_after = close_after
        self.pause = pause
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.served = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        served_here = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                await asyncio.sleep(self.pause)
                served_here += 1
                self.served += 1
                closing = self.close_after is not None and served_here >= self.close_after
                body = path.lstrip(b"/")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (len(body), b"Connection: close\r\n" if closing else b"", body)
                )
                await writer.drain()
                if closing:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def get_all(client: httpx.AsyncClient, base: str, count: int) -> list[str]:
    answers = await asyncio.gather(*(client.get(f"{base}/{i}") for i in range(count)))
    return [a.text for a in answers]


async def test_many_concurrent_requests_are_all_answered_within_the_connection_limit():
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=5)
    server = Server()
    async with server as base, httpx.AsyncClient(transport=pse_transport(limits)) as client:
        answers = await get_all(client, base, 200)
        pool = _pool(client)
        assert answers == [str(i) for i in range(200)]
        assert server.most_open <= 8
        # Idle again: no more kept alive than allowed (and they are reused).
        assert sum(c.is_idle() for c in pool.connections) <= 4
        before = server.connections
        assert await get_all(client, base, 4) == ["0", "1", "2", "3"]
        assert server.connections == before  # served on kept-alive connections


async def test_a_connection_the_server_closed_is_replaced_without_an_error():
    server = Server(close_after=1)
    async with server as base, httpx.AsyncClient(transport=pse_transport()) as client:
        for i in range(20):
            assert (await client.get(f"{base}/{i}")).text == str(i)
            await asyncio.sleep(0.01)  # the server's close reaches the idle socket
        assert server.connections == 20


async def test_one_connection_is_never_handed_to_two_requests():
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    server = Server(pause=0.002)
    async with server as base, httpx.AsyncClient(transport=pse_transport(limits)) as client:
        assert await get_all(client, base, 30) == [str(i) for i in range(30)]
        assert server.connections == 1 and server.most_open == 1


def test_the_transport_runs_on_the_linear_pool_with_tls_verified():
    transport = pse_transport()
    pool = transport._pool
    assert isinstance(pool, LinearPool)
    assert pool._ssl_context.verify_mode.name == "CERT_REQUIRED"
    assert pool._ssl_context.check_hostname
    # Reading the trust store is done once per process, not per transport.
    assert pse_transport()._pool._ssl_context is pool._ssl_context
    assert pool._ssl_context.cert_store_stats()["x509_ca"] > 0


def _pool(client: httpx.AsyncClient) -> LinearPool:
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, LinearPool)
    return pool


class FakeConnection:
    def __init__(self, idle: bool = True, expired: bool = False) -> None:
        self.idle, self.expired = idle, expired

    def is_closed(self) -> bool:
        return False

    def has_expired(self) -> bool:
        return self.expired

    def is_idle(self) -> bool:
        return self.idle

    def is_available(self) -> bool:
        return self.idle

    def can_handle_request(self, origin: object) -> bool:
        return True


def queued(count: int) -> list[AsyncPoolRequest]:
    return [AsyncPoolRequest(httpcore.Request("GET", "http://127.0.0.1:9/")) for _ in range(count)]


async def test_an_idle_connection_goes_to_one_queued_request_and_the_next_waits():
    pool = LinearPool(max_connections=1, max_keepalive_connections=1)
    idle = FakeConnection()
    pool._connections = [idle]
    pool._requests = queued(2)
    assert pool._assign_requests_to_connections() == []
    first, second = pool._requests
    assert first.connection is idle
    assert second.is_queued()  # httpcore's own pool hands it the same connection
    # Another pass (a response released elsewhere) still does not double-book it.
    pool._assign_requests_to_connections()
    assert second.is_queued() and pool._connections == [idle]


async def test_expired_and_surplus_idle_connections_close_and_a_full_pool_replaces_an_idle_one():
    pool = LinearPool(max_connections=3, max_keepalive_connections=1)
    expired, busy, idle_a, idle_b = (
        FakeConnection(expired=True),
        FakeConnection(idle=False),
        FakeConnection(),
        FakeConnection(),
    )
    pool._connections = [expired, busy, idle_a, idle_b]
    assert pool._assign_requests_to_connections() == [expired, idle_b]
    assert pool._connections == [busy, idle_a]
