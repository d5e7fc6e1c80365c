"""CPU per PSE call of the service's HTTP client, against httpx's own transport.

    .venv/bin/python bench/pse_client.py [--calls 1000] [--concurrency 1 8 32] [--rounds 2]

The service calls its PSEs through httpx on `app.adapters.pse.transport`
(aiohttp's pool and parser under httpx's API). This script calls the PSE
double (bench/pse_double.py, started here) with the sandbox adapter's refund
request, `--calls` times at each `--concurrency`, in this one process on
uvloop, and prints the CPU microseconds this process spent per call:

- `httpx default`: `httpx.AsyncClient()`, httpcore's own pool (the yardstick);
- `aiohttp alone`: the same request with an `aiohttp.ClientSession`, no
  httpx: the floor under the service's transport;
- `service transport`: httpx's client on `pse_transport()`;
- `service gateway`: the sandbox adapter (`SandboxGateway.create_refund`:
  retries, the audit transport with a no-op audit sink) on that transport.

The variants run interleaved, `--rounds` times; the table gives the median
round and the ratio to the yardstick at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import structlog  # noqa: E402
import uvloop  # noqa: E402

from app.adapters.pse.audit_transport import AuditingTransport  # noqa: E402
from app.adapters.pse.base import PseAccount  # noqa: E402
from app.adapters.pse.sandbox import SandboxGateway  # noqa: E402
from app.adapters.pse.transport import pse_transport  # noqa: E402
from app.domain.money import Money  # noqa: E402
from app.domain.pse import RefundSubmission  # noqa: E402
from bench.refunds import LOOPBACK, free_port  # noqa: E402

KEY = "sk_test_bench"


class _NoAudit:
    def record(self, *_args: object, **_ids: object) -> None:
        return None


def _submission(i: int) -> RefundSubmission:
    return RefundSubmission(
        reference=f"rf_bench_{i}",
        idempotency_key=f"rfnd-{i}-{time.time_ns()}",
        pse_payment_id="pi_bench_000001",
        amount=Money(1000, "JPY"),
        reason="requested_by_customer",
        payment_method="card",
        metadata={},
        pse_refund_id=None,
    )


def _body(submission: RefundSubmission) -> dict[str, object]:
    return {
        "payment_id": submission.pse_payment_id,
        "amount": 1000,
        "currency": "JPY",
        "reference": submission.reference,
        "reason": submission.reason,
        "metadata": {},
    }


def _headers(submission: RefundSubmission) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Idempotency-Key": submission.idempotency_key}


async def cpu_per_call(call: Callable[[int], Awaitable[object]], calls: int, width: int) -> float:
    """CPU µs of this process per call, `width` calls at a time (after a warm-up)."""
    gate = asyncio.Semaphore(width)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    await asyncio.gather(*(one(i) for i in range(min(200, calls))))
    started = time.process_time()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return (time.process_time() - started) / calls * 1e6


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    double = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
        [sys.executable, str(ROOT / "bench" / "pse_double.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://{LOOPBACK}:{port}"
    try:
        async with httpx.AsyncClient() as probe:
            for _ in range(100):
                try:
                    await probe.get(f"{base}/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        account = PseAccount(name="sandbox", provider="sandbox", api_key=KEY, base_url=base)
        default = httpx.AsyncClient()
        ours = httpx.AsyncClient(transport=pse_transport())
        audited = httpx.AsyncClient(transport=AuditingTransport(pse_transport(), _NoAudit()))
        gateway = SandboxGateway(account, audited)

        def plain(client: httpx.AsyncClient) -> Callable[[int], Awaitable[object]]:
            async def call(i: int) -> object:
                submission = _submission(i)
                response = await client.post(
                    f"{base}/v1/refunds", json=_body(submission), headers=_headers(submission)
                )
                return response.json()

            return call

        session = aiohttp.ClientSession()

        async def alone(i: int) -> object:
            submission = _submission(i)
            async with session.post(
                f"{base}/v1/refunds",
                json=_body(submission),
                headers=_headers(submission),
            ) as response:
                return await response.json()

        variants = {
            "httpx default": plain(default),
            "aiohttp alone": alone,
            "service transport": plain(ours),
            "service gateway": lambda i: gateway.create_refund(_submission(i)),
        }
        figures: dict[tuple[str, int], list[float]] = {}
        for _round in range(args.rounds):
            for width in args.concurrency:
                for label, call in variants.items():
                    figures.setdefault((label, width), []).append(
                        await cpu_per_call(call, args.calls, width)
                    )
        print(
            f"CPU µs of this process per PSE call ({args.calls:,} calls per figure, "
            f"median of {args.rounds} rounds; PSE double on loopback)"
        )
        print(f"  {'concurrency':>11}  " + "  ".join(f"{label:>26}" for label in variants))
        for width in args.concurrency:
            yard = statistics.median(figures[("httpx default", width)])
            cells = []
            for label in variants:
                value = statistics.median(figures[(label, width)])
                cells.append(f"{value:8.0f} µs ({value / yard:4.2f} x)".rjust(26))
            print(f"  {width:>11}  " + "  ".join(cells))
        for client in (default, ours, audited):
            await client.aclose()
        await session.close()
    finally:
        double.terminate()
        double.wait(10)


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
