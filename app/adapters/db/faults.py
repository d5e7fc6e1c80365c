"""Which driver errors mean that the database cannot be reached just now.

The one place that knows how asyncpg says so. The edges (the API and the
console) never import it: the composition root hands them `database_unavailable`
and `UNAVAILABLE_CANDIDATES` (app.bootstrap.Container), and each answers in its
own way (503 problem+json, or a page), with Retry-After.
"""

from __future__ import annotations

import asyncpg

from app.adapters.db.engine import PoolTimeout

# The server refusing or ending sessions: shutting down, starting up or in
# recovery (57P01, 57P02, 57P03), out of connection slots (53300).
_SERVER_REFUSING = (
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)
# How asyncpg's InterfaceError words a connection or pool that is gone (its
# other InterfaceErrors are misuse: bugs, answered 500). When the driver learns
# that the server ended a pooled connection's session it hands the connection
# back to the pool itself, and every later call through it is refused as
# "released back to the pool": a unit of work gives its connection back only
# at its end, so met within one, that is a session the server ended.
_GONE = (
    "connection is closed",
    "pool is closing",
    "pool is closed",
    "connection has been released back to the pool",
)
# What its protocol says when the server's "terminating connection" arrives
# just as a statement is sent (measured: one time in three right after
# pg_terminate_backend); the connection is closed by then.
_CUT_OFF = "cannot switch to state"
# The classes an edge's handler catches to ask `database_unavailable`; anything
# it declines goes on to the edge's last resort (500).
UNAVAILABLE_CANDIDATES: tuple[type[Exception], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    *_SERVER_REFUSING,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,  # TimeoutError among them
)


def _raised_by_the_driver(exc: BaseException) -> bool:
    """Whether asyncpg's code is on the way from where `exc` was raised."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__") or ""
        if module == "asyncpg" or module.startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says that the database cannot be reached now (503, try
    again) rather than that the request failed (500). The one place that
    decides, for the API's handler and its middleware's last resort, and for
    the console's pages:

    - asyncpg's connection errors (SQLSTATE class 08: the connection could not
      be made, failed, or no longer exists), but not a protocol violation;
    - the server refusing or ending sessions (shutdown, start-up, recovery,
      crash, no connection slot left);
    - asyncpg's InterfaceError about a closed connection or pool (a pooled
      connection the driver handed back when the server ended it), and its
      protocol's complaint when the server cut the session as a statement went;
    - OSError (refused, reset, the unix socket gone, no route to the host) and
      TimeoutError (connecting, waiting for a pooled connection, a statement
      past the command timeout) raised through the driver. The same errors
      from anything else (a file, a PSE call) are not the database's.
    """
    if isinstance(exc, asyncpg.exceptions.ProtocolViolationError):
        return False
    if isinstance(exc, PoolTimeout):  # waiting for a pooled connection
        return True
    if isinstance(exc, (asyncpg.exceptions.PostgresConnectionError, *_SERVER_REFUSING)):
        return True
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        text = str(exc)
        return any(words in text for words in _GONE)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return str(exc).startswith(_CUT_OFF)
    if isinstance(exc, OSError):
        return _raised_by_the_driver(exc)
    return False
