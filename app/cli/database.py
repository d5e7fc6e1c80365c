"""The database a command works on: the configured one, or the embedded
PostgreSQL held for the command's duration; and the refusal to work on a
database whose schema is not at head."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from app.cli.options import fail
from app.cli.settings import command_settings, config_file
from app.config import ConfigError, Settings

if TYPE_CHECKING:
    from pathlib import Path

    from app.bootstrap import Container

T = TypeVar("T")


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """`settings` with the database to use. A configured `database_url` is used
    as it is (its schema is the operator's: `pse-refunds migrate`). Unset, the
    embedded PostgreSQL of `embedded_data_dir` is started, or joined where
    another process runs it, migrated to head, and let go at the end of the
    block: the server stops with the last process holding it."""
    if not settings.uses_embedded_database:
        yield settings
        return
    from app.adapters.db.embedded import EmbeddedPostgresError, start_embedded
    from app.adapters.db.engine import migrate

    try:
        held = start_embedded(settings.embedded_data_dir)
    except EmbeddedPostgresError as exc:
        fail(str(exc), 1)
    try:
        with held.exclusively():
            migrate(held.url)
        yield settings.model_copy(update={"database_url": held.url})
    finally:
        held.stop()


def shown_database(settings: Settings) -> str:
    """The database URL without its password, for messages."""
    url = settings.database_url or ""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


def build(settings: Settings, **kwargs: Any) -> Container:
    from app.bootstrap import build_container

    try:
        return build_container(settings, **kwargs)
    except ConfigError as exc:  # an adapter refusing its account's settings
        fail(str(exc))


async def require_schema(container: Container) -> None:
    """Refuse, in one line, a database that is unreachable or not at head:
    nothing would work on it, and the worker would fail on every pass."""
    ready, detail = await container.readiness()
    if not ready:
        fail(f"cannot use the database {shown_database(container.settings)}: {detail}", 1)


def with_container(config: Path | None, work: Callable[[Container], Awaitable[T]]) -> T:
    """Run `work(container)` on the command's database, then close it."""
    with config_file(config), database(command_settings()) as settings:

        async def run() -> T:
            container = build(settings)
            try:
                await require_schema(container)
                return await work(container)
            finally:
                await container.aclose()

        return asyncio.run(run())
