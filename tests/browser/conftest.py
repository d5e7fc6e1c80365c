"""The console in a real browser: the service served by uvicorn on a free
loopback port, driven by Playwright through the system's Chromium.

Chromium is Debian's (`apt-get install -y chromium`), found on PATH and
never downloaded. Without it the tests skip, saying so, unless
REQUIRE_BROWSER=1 (CI), where they fail instead.

The server runs in a thread with an event loop of its own; `ConsoleServer.run`
hands a coroutine to that loop (the container's pool belongs to it), so tests
set up data through the same services a person's clicks reach.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn

from app.api.app import create_app
from app.bootstrap import Container, build_container
from app.domain.records import ApiKey
from tests.conftest import scratch_database, settings_for
from tests.fakes import FakeClock, FakeGateway

T = TypeVar("T")

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# name -> (roles, approval level): the keys every browser test may sign in with.
BROWSER_KEYS: dict[str, tuple[list[str], int | None]] = {
    "store": (["store"], None),
    "approver1": (["approver"], 1),
    "approver2": (["approver"], 2),
    "ops": (["ops"], None),
    "admin": (["admin"], 3),
}


def _unavailable(message: str) -> None:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        _unavailable(
            "the browser tests need Debian's Chromium on PATH (apt-get install -y chromium)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the browser tests need Playwright for Python (make install-dev)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
async def console_database(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A database of the browser tests' own: the other tests empty theirs
    between tests, while this server keeps running."""
    async with scratch_database(pg_admin_dsn, "refunds_console") as url:
        yield url


class _ServerThread(threading.Thread):
    def __init__(self, server: uvicorn.Server, sock: socket.socket) -> None:
        super().__init__(name="console-server", daemon=True)
        self.server = server
        self.sock = sock
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:  # reported to the fixture waiting for the start
            self.failure = exc
        finally:
            loop.close()


@dataclass
class ConsoleServer:
    base_url: str
    container: Container
    clock: FakeClock
    gateway: FakeGateway
    keys: dict[str, str] = field(default_factory=dict)  # name -> secret
    key_ids: dict[str, str] = field(default_factory=dict)
    thread: _ServerThread | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run `coro` on the server's loop (where its pool lives) and wait for it."""
        assert self.thread is not None and self.thread.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.thread.loop).result(timeout)

    def create_key(
        self, name: str, roles: list[str], approval_level: int | None = None
    ) -> tuple[ApiKey, str]:
        return self.run(self.container.keys.create(name, roles, approval_level))

    def revoke(self, key_id: str) -> None:
        self.run(self.container.keys.revoke(key_id))


@pytest.fixture(scope="session")
def console_server(chromium_path: str, console_database: str) -> Iterator[ConsoleServer]:
    """The whole service (API and console) on 127.0.0.1, with keys of every role."""
    clock = FakeClock()
    gateway = FakeGateway()
    # One server for a module's tests, all signing in from 127.0.0.1: the
    # sign-in limit would soon stop them (tests/api/test_abuse.py proves it).
    settings = settings_for(
        console_database, rate_limits={"console_login_per_address": "10000/minute"}
    )
    container = build_container(settings, clock=clock, gateway_factory=lambda _a, _h: gateway)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(container),
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = _ServerThread(server, sock)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if thread.failure is not None or not thread.is_alive():
            raise RuntimeError(f"the console server did not start: {thread.failure!r}")
        if time.monotonic() > deadline:
            raise RuntimeError("the console server did not start within 30 s")
        time.sleep(0.05)
    served = ConsoleServer(f"http://127.0.0.1:{port}", container, clock, gateway, thread=thread)
    for name, (roles, level) in BROWSER_KEYS.items():
        key, secret = served.create_key(name, roles, level)
        served.keys[name] = secret
        served.key_ids[name] = key.id
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# Per module, and after the server: while Playwright's sync API is open its
# event loop counts as running in this thread, so no async fixture or test
# (pytest-asyncio's runner) may start until it is closed. Browser tests are
# plain functions; they reach the services through `ConsoleServer.run`.
@pytest.fixture(scope="module")
def chromium(chromium_path: str, console_server: ConsoleServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(chromium: Any, console_server: ConsoleServer) -> Iterator[Any]:
    """Pages in browser contexts of their own (own cookies), at a laptop's
    width unless told otherwise; every context is closed after the test."""
    contexts: list[Any] = []

    def open_page(width: int = 1280, height: int = 800, **options: Any) -> Any:
        context = chromium.new_context(
            base_url=console_server.base_url,
            viewport={"width": width, "height": height},
            **options,
        )
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Any) -> Any:
    return new_page()


def screenshot(page: Any, name: str) -> Path:
    """Keep a picture of what the page shows, for people to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, secret: str) -> Any:
    """Sign in through the form, as a person does; the answer's page."""
    page.goto("/console/login")
    page.get_by_label("API key").fill(secret)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    return page
