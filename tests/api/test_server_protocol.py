"""uvicorn as `serve` runs it: a request head must arrive in time, and one
process serves a bounded number of connections at once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from app.api import protocol
from app.config import ServerSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(settings: ServerSettings, app: Any) -> AsyncIterator[int]:
    protocol.configure(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        **protocol.uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task
        protocol.configure(ServerSettings())


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


async def read_all(reader: asyncio.StreamReader, seconds: float) -> bytes:
    return await asyncio.wait_for(reader.read(), seconds)


async def test_a_trickled_request_head_is_cut_off_with_408():
    async with serving(ServerSettings(header_timeout_seconds=0.3), hello) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
        await writer.drain()
        for _ in range(3):  # a header byte now and then, never the end of the head
            await asyncio.sleep(0.05)
            writer.write(b"X")
            await writer.drain()
        answer = await read_all(reader, 2)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_a_connection_that_sends_nothing_is_closed():
    async with serving(ServerSettings(header_timeout_seconds=0.3), hello) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await read_all(reader, 2)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_requests_in_time_are_served_and_kept_alive():
    async with serving(ServerSettings(header_timeout_seconds=0.3), hello) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"hello"), 2)
            assert head.startswith(b"HTTP/1.1 200")
            # Idle between requests for longer than the head timeout: that
            # is the keep-alive's business, not the head's.
            await asyncio.sleep(0.5)
        writer.close()


async def test_connections_beyond_the_cap_are_answered_503_at_once():
    release = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    # uvicorn counts the connection being answered too: a cap of 3 serves two
    # held ones and refuses the third.
    async with serving(ServerSettings(max_connections=3), slow) as port:
        held = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            held.append((reader, writer))
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        refused = await asyncio.wait_for(reader.readuntil(b"\r\n"), 2)
        writer.close()
        release.set()
        for reader, writer in held:
            assert (await asyncio.wait_for(reader.readuntil(b"hello"), 2)).startswith(
                b"HTTP/1.1 200"
            )
            writer.close()
    assert refused.startswith(b"HTTP/1.1 503")


@pytest.mark.parametrize("name", ["timeout_keep_alive", "limit_concurrency", "backlog", "http"])
def test_serve_passes_every_server_setting_to_uvicorn(name):
    options = protocol.uvicorn_options(
        ServerSettings(keep_alive_seconds=7, max_connections=33, backlog=99)
    )
    expected = {
        "timeout_keep_alive": 7,
        "limit_concurrency": 33,
        "backlog": 99,
        "http": protocol.HeaderTimeoutProtocol,
    }
    assert options[name] == expected[name]
