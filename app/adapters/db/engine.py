"""The database: a pool of asyncpg connections, and the schema's migrations.

Every statement of the service runs on asyncpg, as a prepared statement
(bench/refunds.py measured a SQLAlchemy Core statement at about three times
the CPU of the same prepared statement). SQLAlchemy remains for what Alembic
needs: the schema in `tables.py` and the engine `migrate` runs it on.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_PACKAGE = "app._migrations"
_SCHEMES = ("postgresql+asyncpg", "postgresql", "postgres")


def _split_url(url: str) -> str:
    """What follows the scheme of a PostgreSQL URL."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in _SCHEMES:
        raise ValueError(
            f"database_url must be a postgresql:// or postgresql+asyncpg:// URL, not {url!r}"
        )
    return rest


def asyncpg_dsn(url: str) -> str:
    """The DSN asyncpg takes for `url`: `postgresql+asyncpg://…` or `postgresql://…`,
    a unix socket given as `?host=/socket/dir`."""
    return f"postgresql://{_split_url(url)}"


def sqlalchemy_url(url: str) -> str:
    """The same database as a SQLAlchemy URL on the asyncpg driver (for Alembic)."""
    return f"postgresql+asyncpg://{_split_url(url)}"


async def _prepare(conn: asyncpg.Connection) -> None:
    # JSON columns in and out as Python values; the codecs are the connection's,
    # so every statement on it, prepared or not, uses them.
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """asyncpg's default reset on release is a round trip (RESET ALL, UNLISTEN,
    advisory unlocks) per unit of work. Nothing here sets session state: a
    unit of work ends its transaction before release (asyncpg still rolls back
    one left open), and its settings are SET LOCAL."""


class PoolTimeout(TimeoutError):
    """No pooled connection came in time: every one busy, or the server not answering."""


class ConnectionPool:
    """The service's asyncpg pool, opened on first use.

    The composition root is built before any event loop runs (by the CLI, by
    uvicorn's factory), and an asyncpg pool belongs to the loop it opens on.
    """

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 20, acquire_timeout: float = 10.0
    ) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        # A request waits this long at most for a connection (every one busy,
        # or the server not answering) before it fails, as 503 `unavailable`.
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None

    async def _opened(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    asyncpg_dsn(self.url),
                    min_size=self._min_size,
                    max_size=self._max_size,
                    init=_prepare,
                    reset=_keep_session,
                    # No statement may hang a request or the worker for ever.
                    command_timeout=60,
                    timeout=10,
                    # Room for every statement of the service (list filters
                    # make a few dozen variants) without evicting the hot ones.
                    statement_cache_size=512,
                    server_settings={"application_name": "pse-refunds"},
                )
        return self._pool

    async def connection(self) -> asyncpg.Connection:
        """A connection of the pool; hand it back with `release`."""
        pool = await self._opened()
        # asyncio.timeout, not acquire(timeout=): asyncpg would wrap the
        # acquisition in wait_for, a task of its own on every unit of work.
        try:
            async with asyncio.timeout(self._acquire_timeout):
                connection: asyncpg.Connection = await pool.acquire()
        except TimeoutError:
            raise PoolTimeout(
                f"no database connection within {self._acquire_timeout:g} s"
            ) from None
        return connection

    async def release(self, connection: asyncpg.Connection) -> None:
        assert self._pool is not None
        await self._pool.release(connection)

    @staticmethod
    def discard(connection: asyncpg.Connection) -> None:
        """End `connection` at once: it is never pooled again. When asyncpg
        learns that the server ended the session it hands the connection back
        to the pool itself, and every later call on it raises; for such a one
        nothing is left to do, and the error that ended it stays the one the
        caller sees."""
        try:
            connection.terminate()
        except asyncpg.InterfaceError:
            pass  # handed back already: the pool knows it is gone

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        connection = await self.connection()
        try:
            yield connection
        finally:
            await self.release(connection)

    async def expire_connections(self) -> None:
        """Replace every pooled connection: each idle one at its next checkout,
        each one in use when it is released."""
        if self._pool is not None:
            await self._pool.expire_connections()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def create_pool(url: str, *, max_size: int = 20) -> ConnectionPool:
    """A pool for `url` (`postgresql+asyncpg://…` or `postgresql://…`); it
    connects at its first use."""
    return ConnectionPool(url, max_size=max_size)


async def current_revision(pool: ConnectionPool) -> str | None:
    """The schema's Alembic revision, None before the first migration."""
    async with pool.acquire() as conn:
        try:
            revision: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
        except asyncpg.UndefinedTableError:
            return None
        return revision


# -- migrations (Alembic) ---------------------------------------------------


@functools.cache
def migrations_dir() -> Path:
    """The alembic scripts, found through the package: the checkout's
    migrations/ in an editable install, app/_migrations in an installed wheel."""
    try:
        location = resources.files(MIGRATIONS_PACKAGE)
    except ModuleNotFoundError:
        # A bare checkout on sys.path has app/ but not the mapping to migrations/.
        raise RuntimeError(
            f"{MIGRATIONS_PACKAGE} is not importable: install the project "
            "(`make install`, or `pip install -e .`)"
        ) from None
    if not isinstance(location, Path):
        # alembic reads its scripts as plain files, which a zipped install has not.
        raise RuntimeError(f"{MIGRATIONS_PACKAGE} is not a directory on disk: {location}")
    return location


# Alembic (and SQLAlchemy beneath it) is imported where it is used: it is
# half a second of every process's start, and only migrations need it.
def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    # Built here rather than read from alembic.ini, which only a checkout has.
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


# The schema revision this code works with: the newest migration's. A test
# holds it to Alembic's head, so a new migration fails the suite until it is
# named here; the readiness check and every CLI command compare the database
# with it without loading the migration scripts (Alembic and SQLAlchemy,
# a third of a second).
SCHEMA_REVISION = "0010"


def migrate(url: str) -> None:
    """Upgrade the schema to head (blocking; call outside the event loop or in a thread)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
