"""The HTTP transport of the PSE adapters: httpx's, on a connection pool
whose bookkeeping does not grow with the square of its connections.

httpcore 1.0's pool (behind `httpx.AsyncHTTPTransport`) walks its
connections on every request it queues and every response it releases, and
for each idle connection it counts every connection again, and asks the
socket, through anyio's attribute table, whether the server closed it. With
the 20 to 30 connections that concurrent refunds keep open to one PSE, that
bookkeeping cost more CPU than the requests themselves (measured in
bench/README.md). Upstream knows it (encode/httpcore#1035, not released).

Here the pool assigns requests in one pass over its connections: it drops
the closed ones, closes the expired ones and the idle ones beyond
`max_keepalive_connections`, then hands each queued request the first free
connection that can take it, a new one while below `max_connections`, or
replaces an idle connection to another origin: httpcore's choices, in linear
time, and never one connection to two requests. Its streams keep their socket at hand, so the
"did the server close this idle connection" check is one poll, as httpcore
means it to be. Everything else (HTTP/1.1, TLS, timeouts, errors) is
httpcore's and httpx's own. httpcore is pinned by the lock file; the tests
of this module run against the pinned version.
"""

from __future__ import annotations

import functools
import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

# As httpx's defaults, stated: the PSE client's limits.
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


def _readable(sock: socket.socket | None) -> bool:
    """Whether a socket has something to read (or was closed by its peer): an
    idle HTTP/1.1 connection that is readable has been dropped by the server."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    """anyio's stream, with its socket looked up once instead of per check."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class LinearPool(httpcore.AsyncConnectionPool):
    """httpcore's pool (HTTP/1.1: a connection serves one request at a time)
    with its request assignment done in one pass.

    A connection handed to a request that has not started on it yet still
    looks idle; httpcore would hand it to the next queued request as well
    (the loser retries, and every retry is another pass) or even close it.
    Here such a connection is spoken for: not handed out again, not closed.
    """

    def _assign_requests_to_connections(self) -> list[Any]:
        spoken_for = {id(r.connection) for r in self._requests if r.connection is not None}
        closing: list[Any] = []
        kept: list[Any] = []
        idle = 0
        for connection in self._connections:
            if connection.is_closed():
                continue
            if id(connection) not in spoken_for:
                if connection.has_expired():
                    closing.append(connection)
                    continue
                if connection.is_idle():
                    if idle >= self._max_keepalive_connections:
                        closing.append(connection)  # beyond the keep-alive allowance
                        continue
                    idle += 1
            kept.append(connection)
        self._connections = kept

        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            connection = next(
                (
                    c
                    for c in kept
                    if id(c) not in spoken_for and c.can_handle_request(origin) and c.is_available()
                ),
                None,
            )
            if connection is None and len(kept) >= self._max_connections:
                # Full: make room by closing an idle connection (to another origin).
                spare = next((c for c in kept if id(c) not in spoken_for and c.is_idle()), None)
                if spare is None:
                    continue  # waits for a connection to be released
                kept.remove(spare)
                closing.append(spare)
            if connection is None:
                connection = self.create_connection(origin)
                kept.append(connection)
            spoken_for.add(id(connection))
            pool_request.assign_to_connection(connection)
        return closing


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings of every PSE connection in this process: httpx's
    defaults (certifi's roots, or `SSL_CERT_FILE`/`SSL_CERT_DIR` when set),
    built once. Reading the trust store takes tens of milliseconds, and a
    context is safe to share between connections, clients and threads."""
    return httpx.create_ssl_context()


def pse_transport(limits: httpx.Limits = LIMITS) -> httpx.AsyncHTTPTransport:
    """httpx's transport (TLS verified with `tls_context`), on `LinearPool`."""
    context = tls_context()
    transport = httpx.AsyncHTTPTransport(verify=context, limits=limits)
    transport._pool = LinearPool(
        ssl_context=context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(),
    )
    return transport
