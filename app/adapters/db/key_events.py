"""Key revocations made by any process, heard by this one.

`ApiKeyRepository.revoke` announces each revocation with `pg_notify` on
`api_keys.CHANNEL`, in its own transaction: PostgreSQL delivers it when (and
only if) the revocation commits, to every session LISTENing at that moment.

A process that serves requests keeps one connection of its own (outside the
pool, which resets and recycles its connections) LISTENing there. What it
hears goes to `on_revoked(key_id)`; whether it listens goes to
`on_listening(bool)`: True only once LISTEN is in place (every revocation
committed from then on will reach it), False the moment its connection is
found broken or closed. The key cache is trusted only in between, so no
revocation can go unheard: while not listening, keys are read from the
database on every request. A broken connection is replaced, with backoff.

A connection can break silently (a network partition sends nothing): it is
checked every `check_every` seconds, and the cache's own expiry bounds what
such a silence could cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import structlog

from app.adapters.db.api_keys import CHANNEL
from app.adapters.db.engine import asyncpg_dsn

log = structlog.get_logger("app.keys")

APPLICATION_NAME = "pse-refunds key revocations"


class RevocationListener:
    def __init__(
        self,
        url: str,
        on_revoked: Callable[[str], None],
        on_listening: Callable[[bool], None],
        *,
        check_every: float = 5.0,
        retry_seconds: Sequence[float] = (0.2, 1.0, 2.0, 5.0),
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._on_revoked = on_revoked
        self._on_listening = on_listening
        self._check_every = check_every
        self._retry = tuple(retry_seconds) or (1.0,)
        self._connect_timeout = connect_timeout
        self._listening = False
        # Revocations heard since the start (tests and logs).
        self.heard = 0

    @property
    def listening(self) -> bool:
        return self._listening

    def _set(self, listening: bool) -> None:
        if listening != self._listening:
            self._listening = listening
            log.info("keys.revocations_listening" if listening else "keys.revocations_deaf")
        # Said every time, not only on a change: each reconnection starts afresh.
        self._on_listening(listening)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.heard += 1
        self._on_revoked(payload)

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set, reconnecting whenever the connection breaks."""
        failures = 0
        try:
            while not stop.is_set():
                listened = False
                try:
                    listened = await self._listen(stop)
                except Exception as exc:
                    log.warning("keys.revocations_connection_failed", error=repr(exc)[:300])
                finally:
                    self._set(False)
                if stop.is_set():
                    return
                failures = 0 if listened else failures + 1
                delay = self._retry[min(failures, len(self._retry) - 1)]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            self._set(False)

    async def _listen(self, stop: asyncio.Event) -> bool:
        """One connection's life; True if it got to listen. Returns when it
        breaks or `stop` is set, raises when it cannot connect or listen."""
        conn: asyncpg.Connection = await asyncpg.connect(
            asyncpg_dsn(self.url),
            timeout=self._connect_timeout,
            server_settings={"application_name": APPLICATION_NAME},
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        listened = False
        try:
            await conn.add_listener(CHANNEL, self._notified)
            listened = True
            self._set(True)
            while not stop.is_set() and not lost.is_set():
                waiters = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(lost.wait()),
                ]
                try:
                    await asyncio.wait(
                        waiters, timeout=self._check_every, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if stop.is_set() or lost.is_set():
                    break
                # Raises (and so ends this connection) when the server is gone.
                await conn.fetchval("SELECT 1", timeout=self._check_every)
            if lost.is_set() and not stop.is_set():
                log.warning("keys.revocations_connection_lost")
            return listened
        finally:
            self._set(False)
            try:
                await asyncio.wait_for(conn.close(), timeout=2)
            except Exception:
                conn.terminate()
