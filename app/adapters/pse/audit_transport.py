"""Every HTTP exchange with a PSE, into the audit trail.

Wraps the transport the PSE adapters' client uses, so each attempt (retries
included) is recorded with its request, its answer or its failure (timeouts
included) and its duration, whatever the adapter. Bodies are redacted by the
audit service before they are stored.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from app.domain.ports import AuditSink

_BODY_BYTES = 64 * 1024
_SKIPPED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _text(content: bytes) -> str:
    if len(content) > _BODY_BYTES:
        return content[:_BODY_BYTES].decode("utf-8", errors="replace") + "…[truncated]"
    return content.decode("utf-8", errors="replace")


class AuditingTransport(httpx.AsyncBaseTransport):
    def __init__(
        self, inner: httpx.AsyncBaseTransport, audit: AuditSink, metrics: Any = None
    ) -> None:
        self._inner = inner
        self._audit = audit
        self._metrics = metrics

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        call: dict[str, Any] = {
            "method": request.method,
            "url": str(request.url.copy_with(query=None)),
            "query": request.url.query.decode("ascii", errors="replace") or None,
            "headers": {
                k.lower(): v
                for k, v in request.headers.items()
                if k.lower() not in _SKIPPED_HEADERS
            },
            "request_body": _text(request.content) if request.content else None,
        }
        try:
            response = await self._inner.handle_async_request(request)
            body = await response.aread()
        except httpx.TimeoutException as exc:
            self._note(request, call, started, "timeout", error=type(exc).__name__)
            raise
        except httpx.HTTPError as exc:
            self._note(request, call, started, "connection_error", error=type(exc).__name__)
            raise
        status = response.status_code
        outcome = (
            "ok" if status < 400 else "429" if status == 429 else "5xx" if status >= 500 else "4xx"
        )
        self._note(request, call, started, outcome, status_code=status, response_body=_text(body))
        # The body is decoded already: the new response must not decode it again.
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            status_code=status,
            headers=headers,
            content=body,
            request=request,
            extensions=response.extensions,
        )

    def _note(
        self,
        request: httpx.Request,
        call: dict[str, Any],
        started: float,
        outcome: str,
        **extra: Any,
    ) -> None:
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            host = request.url.host
            self._metrics.pse_calls.labels(host, outcome).inc()
            self._metrics.pse_call_seconds.labels(host, outcome).observe(seconds)
        self._audit.record(
            "pse.call",
            {**call, "outcome": outcome, "duration_ms": round(seconds * 1000, 1), **extra},
        )

    async def aclose(self) -> None:
        await self._inner.aclose()
