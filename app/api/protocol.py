"""How `serve` runs uvicorn: connection caps and timeouts.

uvicorn closes idle kept-alive connections (`timeout_keep_alive`) and caps
concurrent connections (`limit_concurrency`, answering 503 beyond), but waits
forever for a request's line and headers: a client trickling them a byte at a
time holds a connection as long as it likes. `HeaderTimeoutProtocol` is
uvicorn's httptools protocol with that wait bounded: the head of each request
must arrive within `header_timeout` seconds of the connection opening, or of
the request's first byte (checked a few times per timeout, so up to a quarter
of it later); otherwise the connection answers 408 and closes.
(Bodies are bounded by the application: `RequestContextMiddleware`.)
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import ServerSettings

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 39\r\n"
    b"connection: close\r\n\r\n"
    b"the request head did not arrive in time"
)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """No timer per request: each connection notes when the head it waits
    for began (its opening, or a request's first byte), and one sweeper per
    event loop closes those waiting longer than `header_timeout`, checking a
    few times per timeout. A request costs two attribute writes."""

    # Set by `configure` in each process before it serves.
    header_timeout: float = 10.0
    _watched: ClassVar[dict[asyncio.AbstractEventLoop, set[HeaderTimeoutProtocol]]] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since: float | None = self.loop.time()
        watched = self._watched.get(self.loop)
        if watched is None:
            watched = self._watched[self.loop] = set()
            self.loop.create_task(_sweep(self.loop, watched))
        watched.add(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._head_since = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_since = None
        watched = self._watched.get(self.loop)
        if watched is not None:
            watched.discard(self)
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_since = None
        if not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()


async def _sweep(loop: asyncio.AbstractEventLoop, watched: set[HeaderTimeoutProtocol]) -> None:
    """Close the connections of `loop` whose request head is late; ends with
    the last connection (the next one starts it again)."""
    try:
        while watched:
            timeout = HeaderTimeoutProtocol.header_timeout
            await asyncio.sleep(min(1.0, timeout / 4))
            now = loop.time()
            for protocol in list(watched):
                since = protocol._head_since
                if since is not None and now - since > timeout:
                    protocol._head_timed_out()
    finally:
        if HeaderTimeoutProtocol._watched.get(loop) is watched:
            del HeaderTimeoutProtocol._watched[loop]


def configure(settings: ServerSettings) -> None:
    """Called in each serving process, before it accepts connections."""
    HeaderTimeoutProtocol.header_timeout = settings.header_timeout_seconds


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """The caps and timeouts of `[server]`, as uvicorn's options."""
    return {
        "http": HeaderTimeoutProtocol,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_connections,
        "backlog": settings.backlog,
    }
