"""Engines and migrations for PostgreSQL (asyncpg) and the embedded SQLite (aiosqlite)."""

from __future__ import annotations

import asyncio
import functools
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS_PACKAGE = "app._migrations"


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


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    if url.startswith("sqlite"):
        # SQLite has one writer. A single pooled connection serialises the
        # service's transactions in-process, which is what the payment lock
        # means on PostgreSQL; busy_timeout covers a second process (the CLI).
        engine = create_async_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            connect_args={"timeout": 30},
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_timeout=30,
        # No statement may hang a request or the worker for ever.
        connect_args={"command_timeout": 60, "timeout": 10},
    )


def alembic_config(url: str) -> Config:
    # Built here rather than read from alembic.ini, which only a checkout has.
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def migrate(url: str) -> None:
    """Upgrade the schema to head (blocking; call outside the event loop or in a thread)."""
    command.upgrade(alembic_config(url), "head")


async def migrate_async(url: str) -> None:
    await asyncio.to_thread(migrate, url)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:

        def _rev(sync_connection: Any) -> str | None:
            return MigrationContext.configure(sync_connection).get_current_revision()

        return await connection.run_sync(_rev)


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
