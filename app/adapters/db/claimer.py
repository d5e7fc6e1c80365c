"""A worker process's claims, tied to its life.

Each process that claims work (a refund's self-check, an event's delivery)
holds a session advisory lock on a random 64-bit key, on a connection of its
own kept for as long as the process lives, and writes that key into the
`claimed_by` of every row it claims, with the lease. PostgreSQL releases a
session's advisory locks when the session ends, however it ends: the process
SIGKILLed, its machine lost, its backend terminated. A claim whose key no
session holds any more is therefore free at once, for any worker's next pass,
without waiting for its lease; the lease stays the backstop for a claimer that
lives but is stuck. A process whose connection drops takes a new key on a new
connection: what it claimed under the old key is free for everyone, itself
included.

The claim statements find the live keys in `pg_locks` (`LIVE_CLAIMERS`), once
per statement: a bigint advisory key shows there as classid (its high 32 bits)
and objid (its low 32 bits), with objsubid 1.

Its session shows in pg_stat_activity as `pse-refunds-claimer pid=<the
process id>`. The lock needs a real session: behind a pooler in transaction mode (PgBouncer)
the key would not follow the process, so point the service at PostgreSQL
itself, or at a pooler in session mode.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg
import structlog

from app.adapters.db.engine import asyncpg_dsn

log = structlog.get_logger("app.worker")

# The keys of the claimers alive now: every bigint advisory lock granted in
# this database, its key rebuilt from its halves (the shift wraps, so the
# sign comes back too).
LIVE_CLAIMERS = (
    "SELECT (l.classid::bigint << 32) | l.objid::bigint AS key FROM pg_locks l "
    "WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_TAKE = "SELECT pg_try_advisory_lock($1)"
# How the lock's session shows in pg_stat_activity: whose it is, by process id.
APPLICATION_NAME = "pse-refunds-claimer"
_ALIVE = "SELECT 1"


def _random_key() -> int:
    """A random signed 64-bit key (2^64 of them: two processes never draw the
    same one; should they, the second's try fails and it draws again)."""
    return secrets.randbits(64) - 2**63


class AdvisoryLockClaimer:
    """This process's claimer key, held as a session advisory lock on a
    connection of its own, opened at the first claim."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10.0,
        check_timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._check_timeout = check_timeout
        self._conn: asyncpg.Connection | None = None
        self._key: int | None = None
        self._guard: asyncio.Lock | None = None

    @property
    def held_key(self) -> int | None:
        """The key held now, as far as this process knows (no round trip)."""
        return self._key if self._conn is not None and not self._conn.is_closed() else None

    @property
    def backend_pid(self) -> int | None:
        """The server process of the lock's session (for operators and tests)."""
        return self._conn.get_server_pid() if self.held_key is not None else None

    async def key(self) -> int:
        """The key claims carry now. Its session is checked alive (one round
        trip); a session found gone is replaced by a new one with a new key,
        so that nothing claimed from now on is mistaken for the dead one's.
        Raises what connecting raises while the database is unreachable."""
        if self._guard is None:
            self._guard = asyncio.Lock()
        async with self._guard:
            if self._conn is not None and self._key is not None:
                try:
                    await self._conn.fetchval(_ALIVE, timeout=self._check_timeout)
                except Exception as exc:
                    # Whatever it is (the session cut, the protocol cut off as
                    # the statement went, a timeout), this session's lock can
                    # no longer be counted on: a new session, a new key.
                    log.warning(
                        "worker.claimer_lost", claimer=self._key, error_type=type(exc).__name__
                    )
                    self._drop()
                else:
                    return self._key
            return await self._take()

    async def _take(self) -> int:
        conn = await asyncpg.connect(
            asyncpg_dsn(self._url),
            timeout=self._connect_timeout,
            server_settings={"application_name": f"{APPLICATION_NAME} pid={os.getpid()}"},
        )
        try:
            for _ in range(8):
                key = _random_key()
                if await conn.fetchval(_TAKE, key, timeout=self._check_timeout):
                    break
            else:  # pragma: no cover - eight collisions in 2^64
                raise RuntimeError("no free claimer key")
        except BaseException:
            conn.terminate()
            raise
        self._conn, self._key = conn, key
        log.info("worker.claimer", claimer=key, backend_pid=conn.get_server_pid())
        return key

    def _drop(self) -> None:
        conn, self._conn, self._key = self._conn, None, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Let go of the key (ending the session releases the lock)."""
        conn, self._conn, self._key = self._conn, None, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), self._check_timeout)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                conn.terminate()
