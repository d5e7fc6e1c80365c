"""The PSE client's transport proper: httpx-aiohttp's, with aiohttp's errors
told apart as httpx's. Imported by `app.adapters.pse.transport` on the first
PSE call (aiohttp takes about a tenth of a second to import, which commands
that call no PSE need not pay).

httpx-aiohttp reports a dropped connection and a read timeout as
`httpx.ConnectTimeout`, as if the request had never left. Here each aiohttp
error becomes the httpx error that says what happened (`_precise`), so the
logs and the audit trail of a PSE call tell a timeout from a refused
connection from a server that hung up. The adapters' retries treat all of
them alike (no answer: retried with the same idempotency key, then
`unknown`).
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


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


class AioTransport(AiohttpTransport):
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
