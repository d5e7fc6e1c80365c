"""The HTTP transport of the PSE adapters: httpx's client API on aiohttp's
connection pool and HTTP/1.1 parser.

The adapters speak httpx (`httpx.AsyncClient`), which respx mocks in their
tests. Under it, httpcore's pool, its pure-Python HTTP/1.1 parser (h11) and
anyio's streams cost more CPU than the rest of a PSE call: about 560 µs of
this process's CPU per call at 8 to 32 calls at a time, against about 320 µs
for the same client on aiohttp's pool (`bench/pse_client.py`, bench/README.md).
httpx-aiohttp, by an httpx maintainer, is the bridge; aiohttp does the
connections (keep-alive, limits, TLS with `tls_context`).

What this module adds is the errors. httpx-aiohttp reports a dropped
connection and a read timeout as `httpx.ConnectTimeout`, as if the request
had never left. Here each aiohttp error becomes the httpx error that says
what happened (`_precise`), so the logs and the audit trail of a PSE call
tell a timeout from a refused connection from a server that hung up. The
adapters' retries treat all of them alike (no answer: retried with the same
idempotency key, then `unknown`).
"""

from __future__ import annotations

import asyncio
import functools
import ssl

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

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


def _precise(error: BaseException | None) -> type[httpx.TransportError] | None:
    """The httpx error for what aiohttp raised (None: leave it as mapped)."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout  # no connection within the pool/connect timeout
    if isinstance(error, aiohttp.SocketTimeoutError):
        return httpx.ReadTimeout  # connected and sent; no answer in time
    if isinstance(error, aiohttp.ClientConnectorError):
        return httpx.ConnectError  # refused, unreachable, TLS handshake or certificate
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError  # the server closed without a whole answer
    if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return httpx.ReadError
    if isinstance(error, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError  # an answer that is not HTTP/1.1
    if isinstance(error, asyncio.TimeoutError):
        return httpx.ReadTimeout
    return None


class PseTransport(AiohttpTransport):
    """httpx-aiohttp's transport, with aiohttp's errors told apart."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except _FAILURES as exc:
            raise _mapped(exc, request) from _cause(exc)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Body(response.stream, request)
        return response


class _Body(httpx.AsyncByteStream):
    """A response body whose read errors are told apart as the request's are."""

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self):  # type: ignore[override]
        try:
            async for chunk in self._inner:
                yield chunk
        except _FAILURES as exc:
            raise _mapped(exc, self._request) from _cause(exc)

    async def aclose(self) -> None:
        await self._inner.aclose()


# What a call can fail with: httpx's errors as httpx-aiohttp maps them, and
# the aiohttp errors it leaves unmapped (an answer that is not HTTP, say).
_FAILURES = (httpx.TransportError, aiohttp.ClientError, asyncio.TimeoutError)


def _cause(exc: BaseException) -> BaseException:
    """aiohttp's own error behind `exc` (httpx-aiohttp chains it)."""
    return exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ else exc


def _mapped(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    cause = _cause(exc)
    kind = _precise(cause) or (type(exc) if isinstance(exc, httpx.TransportError) else None)
    # Named, never quoted: aiohttp's messages may carry the request's URL.
    reason = getattr(cause, "strerror", None)
    message = f"{type(cause).__name__}: {reason}" if reason else type(cause).__name__
    return (kind or httpx.TransportError)(message, request=request)


def pse_transport(limits: httpx.Limits = LIMITS) -> httpx.AsyncBaseTransport:
    """The transport of the PSE client: aiohttp's pool within `limits`, TLS
    verified with `tls_context`. Its session opens on the first request, in
    the event loop that sends it."""
    return PseTransport(verify=tls_context(), limits=limits)
