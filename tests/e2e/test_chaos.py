"""Chaos: the service on PostgreSQL against the standalone sandbox PSE with every
fault on, a client retrying with the same Idempotency-Key, and the service
SIGKILLed and restarted three times. Afterwards nothing is doubled or lost.

Everything runs on loopback: two subprocesses (service, sandbox) and the client.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.sandbox.config import new_webhook_secret

pytestmark = pytest.mark.slow

PAYMENTS = 20
REFUNDS = 120
PARALLEL = 8
PAYMENT_AMOUNT = 10_000
KILLS = 3
SETTLE_DEADLINE_SECONDS = 90
SANDBOX_KEY = "sk_chaos_sandbox"
FAULTS = {
    "latency_ms": 20,
    "timeout_after_commit_rate": 0.1,
    "hang_seconds": 1.5,
    "error_after_commit_rate": 0.1,
    "error_before_commit_rate": 0.1,
    "webhook_drop_rate": 0.25,
    "webhook_duplicate_rate": 0.25,
    "webhook_delay_seconds": 0.3,
    "webhook_reorder": True,
    "failure_rate": 0.1,
}
FINAL = {"succeeded", "failed", "rejected", "canceled", "offline_paid"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """The sandbox and the service as subprocesses, logs in files."""

    def __init__(self, workdir: Path, db_url: str) -> None:
        self.workdir = workdir
        self.sandbox_port = free_port()
        self.api_port = free_port()
        self.whsec = new_webhook_secret()
        self.config = workdir / "pse-refunds.toml"
        self.config.write_text(
            f"""
database_url = "{db_url}"
log_format = "json"
log_level = "warning"
idempotency_in_flight_seconds = 5

[accounts.sandbox]
provider = "sandbox"
api_key = "{SANDBOX_KEY}"
webhook_secrets = ["{self.whsec}"]
base_url = "http://127.0.0.1:{self.sandbox_port}"
timeout_seconds = 1
max_attempts = 3
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.2

[worker]
poll_interval_seconds = 0.2
resolve_backoff_seconds = [0.5, 1, 1, 2, 2, 3, 3, 5, 5, 8, 8, 13, 13]
approved_grace_seconds = 1
submitting_grace_seconds = 2
pending_check_after_seconds = 2
lease_seconds = 15
"""
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
        self.env = {**env, "PSE_REFUNDS_CONFIG_FILE": str(self.config), "PYTHONPATH": os.getcwd()}
        self.sandbox: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.starts = 0

    def cli(self, *args: str, **kwargs) -> subprocess.Popen:
        log = open(self.workdir / f"{args[0]}-{self.starts}.log", "w")
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            **kwargs,
        )

    def create_key(self) -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "keys",
                "create",
                "--name",
                "chaos",
                "--role",
                "store",
                "--role",
                "ops",
                "--json",
            ],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)["key"]

    def start_sandbox(self) -> None:
        self.sandbox = self.cli(
            "sandbox",
            "--port",
            str(self.sandbox_port),
            "--api-key",
            SANDBOX_KEY,
            "--webhook-url",
            f"http://127.0.0.1:{self.api_port}/v1/webhooks/sandbox",
            "--webhook-secret",
            self.whsec,
            "--settle-delay",
            "0.2",
            "--seed",
            "7",
            "--faults",
            json.dumps(FAULTS),
        )

    def start_api(self) -> None:
        self.starts += 1
        self.api = self.cli("serve", "--port", str(self.api_port))

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.send_signal(signal.SIGKILL)
        self.api.wait()

    def stop(self) -> None:
        for proc in (self.api, self.sandbox):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n" + p.read_text()[-3000:] for p in sorted(self.workdir.glob("*.log"))
        )


async def wait_until_up(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


async def call_until_answered(client, method, url, *, headers, json_body, stats) -> httpx.Response:
    """What a careful store backend does: on any error, retry with the same key."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = await client.request(method, url, headers=headers, json=json_body)
        except httpx.TransportError:
            stats["client_retries_connection"] += 1
            await asyncio.sleep(0.2)
            continue
        if r.status_code >= 500 or r.status_code in (409, 429):
            stats[f"client_retries_{r.status_code}"] += 1
            await asyncio.sleep(0.2)
            continue
        return r
    raise AssertionError(f"{method} {url} got no answer in time")


async def list_all_refunds(client, headers) -> list[dict]:
    refunds, cursor = [], None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/refunds", params=params, headers=headers)).json()
        refunds += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return refunds


async def test_no_refund_is_doubled_or_lost_through_faults_and_kills(fresh_database, tmp_path):
    rng = random.Random(20261127)
    procs = Processes(tmp_path, fresh_database)
    key = procs.create_key()
    auth = {"Authorization": f"Bearer {key}"}
    sandbox_auth = {"Authorization": f"Bearer {SANDBOX_KEY}"}
    stats: Counter[str] = Counter()
    procs.start_sandbox()
    procs.start_api()
    api_url = f"http://127.0.0.1:{procs.api_port}"
    sandbox_url = f"http://127.0.0.1:{procs.sandbox_port}"
    try:
        await wait_until_up(f"{sandbox_url}/_control/faults")
        await wait_until_up(f"{api_url}/readyz")
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=10) as client,
            httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox,
        ):
            payment_ids = []
            for i in range(PAYMENTS):
                pse_id = f"pay_chaos_{i:02d}"
                r = await sandbox.post(
                    "/v1/payments",
                    json={"id": pse_id, "amount": PAYMENT_AMOUNT, "currency": "JPY"},
                    headers=sandbox_auth,
                )
                assert r.status_code in (200, 201), r.text
                r = await call_until_answered(
                    client,
                    "POST",
                    "/v1/payments",
                    headers=auth,
                    stats=stats,
                    json_body={
                        "pse_account": "sandbox",
                        "pse_payment_id": pse_id,
                        "amount": PAYMENT_AMOUNT,
                        "currency": "JPY",
                        "captured_at": "2026-11-20T00:00:00Z",
                    },
                )
                assert r.status_code in (200, 201), r.text
                payment_ids.append(r.json()["id"])

            limit = asyncio.Semaphore(PARALLEL)
            answered = 0
            kill_points = sorted(rng.sample(range(15, REFUNDS - 15), KILLS))
            created: dict[str, dict] = {}

            async def one(n: int) -> None:
                nonlocal answered
                async with limit:
                    body = {
                        "payment_id": payment_ids[n % PAYMENTS],
                        "amount": rng.randint(300, 2000),
                        "reason": "requested_by_customer",
                    }
                    headers = {**auth, "Idempotency-Key": f"chaos-{n}"}
                    r = await call_until_answered(
                        client,
                        "POST",
                        "/v1/refunds",
                        headers=headers,
                        json_body=body,
                        stats=stats,
                    )
                    answered += 1
                    if r.status_code == 201:
                        created[r.json()["id"]] = r.json()
                    else:
                        assert r.json()["code"] == "amount_exceeds_refundable", r.text
                        stats["refused_over_refundable"] += 1

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
            await wait_until_up(f"{api_url}/readyz")

            # Faults off: within the deadline every refund must be final.
            assert (await sandbox.put("/_control/faults", json={})).status_code == 200
            injected = (await sandbox.get("/_control/stats")).json()["faults_injected"]
            started = time.monotonic()
            while True:
                refunds = await list_all_refunds(client, auth)
                open_ = [r for r in refunds if r["status"] not in FINAL]
                if not open_:
                    break
                if time.monotonic() - started > SETTLE_DEADLINE_SECONDS:
                    pytest.fail(
                        f"{len(open_)} refunds not final after {SETTLE_DEADLINE_SECONDS}s: "
                        f"{Counter(r['status'] for r in open_)}\n{procs.logs()}"
                    )
                await asyncio.sleep(0.5)
            settle_seconds = time.monotonic() - started

            pse = (await sandbox.get("/_control/stats")).json()
            listing = (await sandbox.get("/_control/refunds")).json()
            pse_refunds = {r["id"]: r for r in listing["data"]}
            ours = {r["id"]: r for r in refunds}

            assert set(created) <= set(ours)
            doubles, lost, unknown_at_pse = [], [], []
            for pse_payment in pse["payments"].values():
                for reference, ids in pse_payment["refunds_by_reference"].items():
                    if reference not in ours:
                        unknown_at_pse.append(reference)
                    if len(ids) > 1:
                        doubles.append(reference)
            by_reference: dict[str, list[dict]] = {}
            for pse_refund in pse_refunds.values():
                by_reference.setdefault(pse_refund["reference"], []).append(pse_refund)
            for refund in ours.values():
                at_pse = by_reference.get(refund["id"], [])
                succeeded_at_pse = [p for p in at_pse if p["status"] == "succeeded"]
                if refund["status"] == "succeeded":
                    if len(at_pse) != 1 or len(succeeded_at_pse) != 1:
                        lost.append(refund["id"])
                elif succeeded_at_pse:
                    lost.append(refund["id"])  # money left that we do not count

            mismatched = []
            for i, payment_id in enumerate(payment_ids):
                payment = (await client.get(f"/v1/payments/{payment_id}", headers=auth)).json()
                pse_total = (
                    pse["payments"].get(f"pay_chaos_{i:02d}", {}).get("refunded_total_succeeded", 0)
                )
                if payment["refunded_amount"] != pse_total or pse_total > PAYMENT_AMOUNT:
                    mismatched.append((payment_id, payment["refunded_amount"], pse_total))
                assert payment["reserved_amount"] == 0

            statuses = Counter(r["status"] for r in ours.values())
            print(
                f"\nchaos: refunds requested={REFUNDS} created={len(ours)} "
                f"refused_over_refundable={stats['refused_over_refundable']} "
                f"statuses={dict(statuses)}\n"
                f"chaos: faults_injected={injected} kills={stats['kills']} "
                f"client_retries={ {k: v for k, v in stats.items() if 'retries' in k} }\n"
                f"chaos: settled_in={settle_seconds:.1f}s doubles={len(doubles)} "
                f"lost={len(lost)} unknown_at_pse={len(unknown_at_pse)} "
                f"payment_mismatches={len(mismatched)}"
            )
            assert stats["kills"] == KILLS
            assert len(ours) >= 100, "the run must put at least 100 refunds through"
            assert sum(injected.values()) > 0
            assert doubles == [], doubles
            assert lost == [], lost
            assert unknown_at_pse == [], unknown_at_pse
            assert mismatched == [], mismatched
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop()
