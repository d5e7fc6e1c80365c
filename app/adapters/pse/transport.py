"""The HTTP transport of the PSE adapters: httpx's client API on aiohttp's
connection pool and HTTP/1.1 parser.

The adapters speak httpx (`httpx.AsyncClient`), which respx mocks in their
tests. Under it, httpcore's pool, its pure-Python HTTP/1.1 parser (h11) and
anyio's streams cost more CPU than the rest of a PSE call: about 560 µs of
this process's CPU per call at 8 to 32 calls at a time, against about 320 µs
for the same client on aiohttp's pool (`bench/pse_client.py`, bench/README.md).
httpx-aiohttp, by an httpx maintainer, is the bridge; aiohttp does the
connections (keep-alive, limits, TLS with `tls_context`), and
`aio_transport` tells its errors apart.

Both, and the trust store, are loaded on the first PSE call: a command that
calls no PSE (most of the CLI) does not pay the tenth of a second they take.
"""

from __future__ import annotations

import functools
import ssl

import httpx

# As httpx's defaults, stated: the PSE client's limits (aiohttp keeps no
# separate count of idle connections: `max_keepalive_connections` is unused).
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings of every PSE connection in this process: httpx's
    defaults (certifi's roots, or `SSL_CERT_FILE`/`SSL_CERT_DIR` when set),
    built once. Reading the trust store takes tens of milliseconds, and a
    context is safe to share between connections, clients and threads."""
    return httpx.create_ssl_context()


class PseTransport(httpx.AsyncBaseTransport):
    """aiohttp's pool within `limits`, TLS verified with `tls_context`, made
    on the first request, in the event loop that sends it."""

    def __init__(self, limits: httpx.Limits = LIMITS) -> None:
        self.limits = limits
        self._inner: httpx.AsyncBaseTransport | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return tls_context()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._inner is None:
            from app.adapters.pse.aio_transport import AioTransport

            self._inner = AioTransport(verify=tls_context(), limits=self.limits)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


def pse_transport(limits: httpx.Limits = LIMITS) -> httpx.AsyncBaseTransport:
    """The transport of the PSE client (see `PseTransport`)."""
    return PseTransport(limits)
