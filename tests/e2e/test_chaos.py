"""Chaos: the service on PostgreSQL against the standalone sandbox PSE with every
fault on, a client retrying with the same Idempotency-Key, and the service
SIGKILLed and restarted three times. Afterwards nothing is doubled or lost.

Everything runs on loopback: two subprocesses (service, sandbox) and the client.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.sandbox.config import new_webhook_secret
from tests.e2e import chaos_support as support

# Other tests import these from here.
from tests.e2e.chaos_support import SANDBOX_KEY, free_port, wait_until_up

__all__ = ["SANDBOX_KEY", "Processes", "free_port", "wait_until_up"]

pytestmark = pytest.mark.slow

PAYMENTS = 20
REFUNDS = 120
PARALLEL = 8
PAYMENT_AMOUNT = 10_000
KILLS = 3
SETTLE_DEADLINE_SECONDS = 90


class Processes:
    """The sandbox and the service as subprocesses, logs in files."""

    def __init__(self, workdir: Path, db_url: str) -> None:
        self.workdir = workdir
        self.sandbox_port = support.free_port()
        self.api_port = support.free_port()
        self.whsec = new_webhook_secret()
        self.config = support.write_config(
            workdir,
            database_url=db_url,
            sandbox_port=self.sandbox_port,
            whsec=self.whsec,
            submitting_grace_seconds=2,
            lease_seconds=15,
        )
        self.env = support.service_env(self.config)
        self.sandbox: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.starts = 0

    def cli(self, *args: str, **kwargs) -> subprocess.Popen:
        return support.spawn(self.workdir, self.env, f"{args[0]}-{self.starts}", *args, **kwargs)

    def create_key(self) -> str:
        return support.create_key(self.workdir, self.env)

    def start_sandbox(self) -> None:
        self.sandbox = self.cli(
            *support.sandbox_args(
                port=self.sandbox_port,
                webhook_url=f"http://127.0.0.1:{self.api_port}/v1/webhooks/sandbox",
                whsec=self.whsec,
                seed=7,
                faults=support.FAULTS,
            )
        )

    def start_api(self) -> None:
        self.starts += 1
        self.api = self.cli("serve", "--port", str(self.api_port))

    def kill_api(self) -> None:
        assert self.api is not None
        support.kill(self.api)

    def stop(self) -> None:
        support.stop((self.api, self.sandbox))

    def logs(self) -> str:
        return support.logs(self.workdir, 3000)


async def test_no_refund_is_doubled_or_lost_through_faults_and_kills(fresh_database, tmp_path):
    rng = random.Random(20261127)
    procs = Processes(tmp_path, fresh_database)
    key = procs.create_key()
    auth = {"Authorization": f"Bearer {key}"}
    stats: Counter[str] = Counter()
    procs.start_sandbox()
    procs.start_api()
    api_url = f"http://127.0.0.1:{procs.api_port}"
    sandbox_url = f"http://127.0.0.1:{procs.sandbox_port}"
    try:
        await support.wait_until_up(f"{sandbox_url}/_control/faults")
        await support.wait_until_up(f"{api_url}/readyz")
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=10) as client,
            httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox,
        ):

            async def call(_n: int, method: str, path: str, **kwargs) -> httpx.Response:
                return await support.call_until_answered(
                    lambda _attempt: client.request(method, path, **kwargs),
                    f"{method} {path}",
                    stats=stats,
                )

            store = support.Store(call, auth, stats)
            await store.seed_payments(
                sandbox, prefix="pay_chaos", count=PAYMENTS, amount=PAYMENT_AMOUNT
            )

            limit = asyncio.Semaphore(PARALLEL)
            answered = 0
            kill_points = sorted(rng.sample(range(15, REFUNDS - 15), KILLS))

            async def one(n: int) -> None:
                nonlocal answered
                async with limit:
                    await store.refund(n, rng, f"chaos-{n}")
                    answered += 1

            async def killer() -> None:
                for point in kill_points:
                    while answered < point:  # noqa: ASYNC110 - a counter, polled
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(rng.uniform(0, 0.3))
                    procs.kill_api()
                    stats["kills"] += 1
                    await asyncio.sleep(rng.uniform(0.2, 1.0))
                    procs.start_api()

            await asyncio.gather(killer(), *(one(n) for n in range(REFUNDS)))
            await support.wait_until_up(f"{api_url}/readyz")

            refunds, injected, settle_seconds = await support.settle(
                sandbox, client, auth, deadline_seconds=SETTLE_DEADLINE_SECONDS, logs=procs.logs
            )
            ours = {r["id"]: r for r in refunds}
            assert set(store.created) <= set(ours)
            reckoning = await support.reckon(
                store, client, sandbox, ours, prefix="pay_chaos", amount=PAYMENT_AMOUNT
            )

            statuses = Counter(r["status"] for r in ours.values())
            print(
                f"\nchaos: refunds requested={REFUNDS} created={len(ours)} "
                f"refused_over_refundable={stats['refused_over_refundable']} "
                f"statuses={dict(statuses)}\n"
                f"chaos: faults_injected={injected} kills={stats['kills']} "
                f"client_retries={ {k: v for k, v in stats.items() if 'retries' in k} }\n"
                f"chaos: settled_in={settle_seconds:.1f}s {reckoning}"
            )
            assert stats["kills"] == KILLS
            assert len(ours) >= 100, "the run must put at least 100 refunds through"
            assert sum(injected.values()) > 0
            reckoning.assert_clean()
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop()
