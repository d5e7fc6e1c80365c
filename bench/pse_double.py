"""A PSE double for benchmarks: answers the sandbox provider's refund calls at once.

`POST /v1/refunds` answers a `pending` refund echoing the amount, currency
and reference it was sent; a repeated Idempotency-Key gets the first answer
again. Anything else is a 404. It speaks just enough HTTP/1.1 (keep-alive,
Content-Length bodies) for the service's client, on loopback only, and costs
a small fraction of the CPU of the full sandbox, which stays the PSE of the
demo and the tests.

    python bench/pse_double.py --port 8900
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

LOOPBACK = "127.0.0.1"
_NOT_FOUND = b'{"error":{"code":"not_found","message":"no such resource"}}'


def _response(status: int, reason: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class PseDouble(asyncio.Protocol):
    ids = itertools.count(1)
    answers: dict[str, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path = head[0].split(" ")[:2]
            self.transport.write(self.answer(method, path, headers, body))

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if method == "GET" and path == "/healthz":
            return _response(200, "OK", b"{}")
        if method != "POST" or path != "/v1/refunds":
            return _response(404, "Not Found", _NOT_FOUND)
        key = headers.get("idempotency-key", "")
        if key in self.answers:
            return self.answers[key]
        sent = json.loads(body)
        refund = {
            "id": f"sbre_double_{next(self.ids)}",
            "object": "refund",
            "status": "pending",
            "amount": sent["amount"],
            "currency": sent["currency"],
            "payment_id": sent.get("payment_id"),
            "reference": sent.get("reference"),
        }
        answer = _response(200, "OK", json.dumps(refund).encode())
        if key:
            self.answers[key] = answer
        return answer


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(PseDouble, LOOPBACK, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
