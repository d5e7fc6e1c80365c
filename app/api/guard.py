"""The gate in front of the routes: who is calling, and how often.

An ASGI middleware placed inside `RequestContextMiddleware` (which gives every
answer its request id and access log line). Before any route runs, and so
before any body is read:

- every `/v1/*` request but the PSE webhooks must carry a valid API key; one
  without is answered 401 at once, its body never read nor stored;
- requests are limited per client address, per API key, per PSE account for
  webhooks, failed authentications per address, and console sign-ins per
  address; a spent limit answers 429 `rate_limited` with `Retry-After`.

Limits are counted in memory, by each process (`limits`, sliding window
counters): a database round trip per request would cost more than most
requests, and would fail exactly when the database is under stress. They are
back-pressure, not quotas: with N processes behind a load balancer, a client
may reach N times a limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import RateLimitSettings
from app.domain.records import ApiKey

Authenticate = Callable[[str], Awaitable[ApiKey | None]]
# (scope, send, status, code, title, detail, extra headers): answers a refusal
# as problem+json, or as a page under the console.
Refuse = Callable[..., Awaitable[None]]

# Probes and scrapes are never limited: a load balancer must always learn
# whether the process lives.
_UNLIMITED = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True)
class Refusal:
    code: str
    reason: str  # for metrics and the audit summary
    retry_after: int | None = None


class RateLimits:
    """The configured limits, counted in this process's memory."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self.enabled = settings.enabled
        self._storage = MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self.per_key = parse_many(settings.per_key)
        self.per_address = parse_many(settings.per_address)
        self.failed_auth = parse_many(settings.failed_auth_per_address)
        self.console_login = parse_many(settings.console_login_per_address)
        self.webhooks = parse_many(settings.webhooks_per_account)

    async def spend(self, items: list[RateLimitItem], *identity: str) -> int | None:
        """Counts one request against each limit; the seconds to wait when one is spent."""
        if not self.enabled:
            return None
        for item in items:
            if not await self._limiter.hit(item, *identity):
                return await self._retry_after(item, *identity)
        return None

    async def spent(self, items: list[RateLimitItem], *identity: str) -> int | None:
        """Like `spend`, without counting: is any of the limits spent already?"""
        if not self.enabled:
            return None
        for item in items:
            if not await self._limiter.test(item, *identity):
                return await self._retry_after(item, *identity)
        return None

    async def _retry_after(self, item: RateLimitItem, *identity: str) -> int:
        stats = await self._limiter.get_window_stats(item, *identity)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def reset(self) -> None:
        await self._storage.reset()


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def client_address(scope: Scope) -> str:
    """The peer, as uvicorn gives it: behind a proxy listed in
    `--forwarded-allow-ips`, the address the proxy forwarded."""
    client = scope.get("client")
    return client[0] if client else "unknown"


class RequestGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: RateLimits,
        authenticate: Authenticate,
        refuse: Refuse,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.authenticate = authenticate
        self.refuse = refuse
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = await self._check(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["refusal"] = refusal.reason
        if self.on_refused is not None:
            self.on_refused(refusal.reason)
        if refusal.code == "rate_limited":
            await self.refuse(
                scope,
                send,
                429,
                "rate_limited",
                "Too many requests",
                f"slow down: retry after {refusal.retry_after} s",
                [(b"retry-after", str(refusal.retry_after).encode())],
            )
        else:
            await self.refuse(
                scope,
                send,
                401,
                "unauthorized",
                "Unauthorized",
                "a valid API key is required"
                if refusal.reason == "missing_key"
                else "the API key is unknown or revoked",
                [(b"www-authenticate", b"Bearer")],
            )

    async def _check(self, scope: Scope) -> Refusal | None:
        path: str = scope["path"]
        if path in _UNLIMITED:
            return None
        limits = self.limits
        address = client_address(scope)
        wait = await limits.spend(limits.per_address, "address", address)
        if wait is not None:
            return Refusal("rate_limited", "rate_limited_address", wait)
        if path.startswith("/v1/webhooks/"):
            account = path.split("/", 4)[3]
            wait = await limits.spend(limits.webhooks, "webhooks", account)
            return None if wait is None else Refusal("rate_limited", "rate_limited_webhooks", wait)
        if path == "/console/login" and scope["method"] == "POST":
            wait = await limits.spend(limits.console_login, "console_login", address)
            return None if wait is None else Refusal("rate_limited", "rate_limited_login", wait)
        if not path.startswith("/v1/"):
            return None
        wait = await limits.spent(limits.failed_auth, "failed_auth", address)
        if wait is not None:
            return Refusal("rate_limited", "rate_limited_failed_auth", wait)
        token = bearer_token(scope)
        key = await self.authenticate(token) if token else None
        if key is None:
            await limits.spend(limits.failed_auth, "failed_auth", address)
            return Refusal("unauthorized", "missing_key" if token is None else "unknown_key")
        state: dict[str, Any] = scope.setdefault("state", {})
        state["api_key"] = key
        state["api_key_id"] = key.id
        wait = await limits.spend(limits.per_key, "key", key.id)
        if wait is not None:
            return Refusal("rate_limited", "rate_limited_key", wait)
        return None
