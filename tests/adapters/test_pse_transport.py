"""The PSE adapters' HTTP transport (app/adapters/pse/transport.py) against
loopback servers of the test's own: limits kept, connections reused, a
connection the server dropped replaced, every request answered, TLS
verified, and each way a call can fail told apart as httpx's errors."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from app.adapters.pse.transport import pse_transport, tls_context


class Server:
    """Answers `GET /n` with `n` after a short pause, keeping connections alive
    unless `close_after` requests were served on one; counts connections."""

    def __init__(self, close_after: int | None = None, pause: float = 0.005) -> None:
        self.close_after = close_after
        self.pause = pause
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.served = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        served_here = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                await asyncio.sleep(self.pause)
                served_here += 1
                self.served += 1
                closing = self.close_after is not None and served_here >= self.close_after
                body = path.lstrip(b"/")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (len(body), b"Connection: close\r\n" if closing else b"", body)
                )
                await writer.drain()
                if closing:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def get_all(client: httpx.AsyncClient, base: str, count: int) -> list[str]:
    answers = await asyncio.gather(*(client.get(f"{base}/{i}") for i in range(count)))
    return [a.text for a in answers]


async def test_many_concurrent_requests_are_all_answered_within_the_connection_limit():
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=5)
    server = Server()
    async with server as base, httpx.AsyncClient(transport=pse_transport(limits)) as client:
        answers = await get_all(client, base, 200)
        assert answers == [str(i) for i in range(200)]
        assert 1 < server.most_open <= 8
        before = server.connections
        assert await get_all(client, base, 4) == ["0", "1", "2", "3"]
        assert server.connections == before  # served on kept-alive connections


async def test_a_connection_the_server_closed_is_replaced_without_an_error():
    server = Server(close_after=1)
    async with server as base, httpx.AsyncClient(transport=pse_transport()) as client:
        for i in range(20):
            assert (await client.get(f"{base}/{i}")).text == str(i)
            await asyncio.sleep(0.01)  # the server's close reaches the idle socket
        assert server.connections == 20


async def test_one_connection_serves_one_request_at_a_time():
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    server = Server(pause=0.002)
    async with server as base, httpx.AsyncClient(transport=pse_transport(limits)) as client:
        assert await get_all(client, base, 30) == [str(i) for i in range(30)]
        assert server.connections == 1 and server.most_open == 1


async def test_an_idle_connection_past_its_keepalive_expiry_is_not_reused():
    limits = httpx.Limits(max_connections=4, keepalive_expiry=0.05)
    server = Server()
    async with server as base, httpx.AsyncClient(transport=pse_transport(limits)) as client:
        assert (await client.get(f"{base}/1")).text == "1"
        await asyncio.sleep(0.3)
        assert (await client.get(f"{base}/2")).text == "2"
        assert server.connections == 2


def test_the_transport_verifies_tls_with_the_process_trust_store():
    context = pse_transport().ssl_context
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    # Reading the trust store is done once per process, not per transport.
    assert context is tls_context() and pse_transport().ssl_context is context
    assert context.cert_store_stats()["x509_ca"] > 0


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no trust store holds, and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_a_server_whose_certificate_is_not_trusted_is_refused(
    self_signed: tuple[Path, Path],
):
    cert, key = self_signed
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    reached = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal reached
        reached += 1
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=served)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(transport=pse_transport()) as client:
            with pytest.raises(httpx.ConnectError) as refused:
                await client.get(f"https://127.0.0.1:{port}/")
        assert "Certificate" in str(refused.value) or "SSL" in str(refused.value)
        assert reached == 0  # no request was ever handed to it
    finally:
        server.close()
        await server.wait_closed()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _serving(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    call: Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]],
) -> httpx.Response:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(transport=pse_transport()) as client:
            return await call(client, f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def test_a_refused_connection_is_a_connect_error():
    async with httpx.AsyncClient(transport=pse_transport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{_closed_port()}/v1/refunds", json={})


async def test_no_answer_in_time_is_a_read_timeout():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    with pytest.raises(httpx.ReadTimeout):
        await _serving(silent, lambda c, base: c.post(f"{base}/v1/refunds", json={}, timeout=0.2))


async def test_a_server_that_hangs_up_after_the_request_is_a_protocol_error():
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    with pytest.raises(httpx.RemoteProtocolError):
        await _serving(hang_up, lambda c, base: c.post(f"{base}/v1/refunds", json={}))


async def test_an_answer_that_is_not_http_is_a_protocol_error():
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SMTP READY\r\n\r\n")
        await writer.drain()
        writer.close()

    with pytest.raises(httpx.RemoteProtocolError):
        await _serving(garbage, lambda c, base: c.post(f"{base}/v1/refunds", json={}))


async def test_a_body_cut_short_is_a_read_error_and_no_answer():
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"id":')
        await writer.drain()
        writer.close()

    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)) as failed:
        await _serving(cut, lambda c, base: c.post(f"{base}/v1/refunds", json={}))
    assert "127.0.0.1" not in str(failed.value)  # named, never quoting the URL


def test_aiohttp_is_loaded_by_the_first_pse_call_not_by_building_the_client():
    # In a process of its own: this one has imported aiohttp already.
    probe = (
        "import sys, asyncio, httpx\n"
        "from app.bootstrap import build_container\n"
        "from app.adapters.pse.transport import pse_transport\n"
        "transport = pse_transport()\n"
        "asyncio.run(transport.aclose())\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp loaded before any call'\n"
        "async def call():\n"
        "    async with httpx.AsyncClient(transport=pse_transport()) as client:\n"
        "        try:\n"
        "            await client.get('http://127.0.0.1:9/')\n"
        "        except httpx.ConnectError:\n"
        "            pass\n"
        "asyncio.run(call())\n"
        "assert 'aiohttp' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
