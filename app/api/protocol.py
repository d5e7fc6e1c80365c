"""How `serve` runs uvicorn: connection caps and timeouts.

uvicorn closes idle kept-alive connections (`timeout_keep_alive`) and caps
concurrent connections (`limit_concurrency`, answering 503 beyond), but waits
forever for a request's line and headers: a client trickling them a byte at a
time holds a connection as long as it likes. `HeaderTimeoutProtocol` is
uvicorn's httptools protocol with that wait bounded: the head of each request
must arrive within `header_timeout` seconds of the connection opening, or of
the request's first byte; otherwise the connection answers 408 and closes.
(Bodies are bounded by the application: `RequestContextMiddleware`.)
"""

from __future__ import annotations

import asyncio
from typing import Any

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
    # Set by `configure` in each process before it serves.
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()


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
