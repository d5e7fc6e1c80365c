"""What the chaos tests share (test_chaos.py: one service process;
test_chaos_cluster.py: two APIs and two workers): the service's commands as
subprocesses on loopback, a store backend that retries until it is answered,
and the final reckoning of the service's refunds against the sandbox PSE's."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

import httpx
import pytest

SANDBOX_KEY = "sk_chaos_sandbox"
SANDBOX_AUTH = {"Authorization": f"Bearer {SANDBOX_KEY}"}
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

# `call(n, method, path, **httpx_kwargs)`: request n of the load, sent until answered.
Call = Callable[..., Awaitable[httpx.Response]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the service's commands -------------------------------------------------------------


def write_config(
    workdir: Path,
    *,
    database_url: str,
    sandbox_port: int,
    whsec: str,
    submitting_grace_seconds: float,
    lease_seconds: float,
) -> Path:
    """The service's configuration file, against the sandbox on `sandbox_port`."""
    config = workdir / "pse-refunds.toml"
    config.write_text(
        f"""
database_url = "{database_url}"
log_format = "json"
log_level = "warning"
idempotency_in_flight_seconds = 5

[accounts.sandbox]
provider = "sandbox"
api_key = "{SANDBOX_KEY}"
webhook_secrets = ["{whsec}"]
base_url = "http://127.0.0.1:{sandbox_port}"
timeout_seconds = 1
max_attempts = 3
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.2

[worker]
poll_interval_seconds = 0.2
resolve_backoff_seconds = [0.5, 1, 1, 2, 2, 3, 3, 5, 5, 8, 8, 13, 13]
approved_grace_seconds = 1
submitting_grace_seconds = {submitting_grace_seconds}
pending_check_after_seconds = 2
lease_seconds = {lease_seconds}
"""
    )
    return config


def service_env(config: Path) -> dict[str, str]:
    """This process's environment, but for settings of the service: those
    come from `config` alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
    return {**env, "PSE_REFUNDS_CONFIG_FILE": str(config), "PYTHONPATH": os.getcwd()}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def spawn(
    workdir: Path, env: dict[str, str], log_name: str, *args: str, **kwargs
) -> subprocess.Popen:
    """`python -m app.cli *args` in the background, its output in `log_name`.log."""
    log = open(workdir / f"{log_name}.log", "w")
    return subprocess.Popen(
        cli_command(*args),
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


def create_key(workdir: Path, env: dict[str, str]) -> str:
    """A new API key with the roles store and ops, made by the CLI."""
    done = subprocess.run(
        cli_command(
            "keys", "create", "--name", "chaos", "--role", "store", "--role", "ops", "--json"
        ),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)["key"]


def sandbox_args(
    *, port: int, webhook_url: str, whsec: str, seed: int, faults: dict[str, object]
) -> list[str]:
    """The CLI's words for the standalone sandbox PSE, with `faults` on."""
    return [
        "sandbox",
        "--port",
        str(port),
        "--api-key",
        SANDBOX_KEY,
        "--webhook-url",
        webhook_url,
        "--webhook-secret",
        whsec,
        "--settle-delay",
        "0.2",
        "--seed",
        str(seed),
        "--faults",
        json.dumps(faults),
    ]


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def stop(procs: Iterable[subprocess.Popen | None]) -> None:
    """SIGTERM to every process still running; killed if not gone in 15 s."""
    running = [proc for proc in procs if proc is not None and proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def logs(workdir: Path, tail: int) -> str:
    """The last `tail` characters of every log in `workdir`."""
    return "\n".join(
        f"== {p.name}\n" + p.read_text()[-tail:] for p in sorted(workdir.glob("*.log"))
    )


def request_failures(workdir: Path) -> list[str]:
    """What the service logged of each request it answered 500 (the log's
    `request.failed` lines, the last line of each traceback): a failed run
    says why without the whole logs."""
    found = []
    for path in sorted(workdir.glob("*.log")):
        for line in path.read_text().splitlines():
            if '"request.failed"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                found.append(f"{path.name}: {line[:300]}")
                continue
            last = (entry.get("exception") or "").strip().splitlines()[-1:] or [""]
            found.append(f"{path.name}: {entry.get('request_id')} {last[0]}")
    return found


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


# -- the store backend ------------------------------------------------------------------


async def call_until_answered(
    send: Callable[[int], Awaitable[httpx.Response]],
    what: str,
    *,
    stats: Counter[str],
    connection_pause: float = 0.2,
    retry_after_up_to: float | None = None,
) -> httpx.Response:
    """What a careful store backend does: on any error, retry with the same
    key. `send(attempt)` sends the request once (attempt 0, 1, ...); after an
    error it waits 0.2 s, or with `retry_after_up_to` what Retry-After asks
    (0.2 s without one) up to that many seconds."""
    deadline = time.monotonic() + 120
    for attempt in itertools.count():
        if time.monotonic() >= deadline:
            break
        try:
            r = await send(attempt)
        except httpx.TransportError:
            stats["client_retries_connection"] += 1
            await asyncio.sleep(connection_pause)
            continue
        if r.status_code >= 500 or r.status_code in (409, 429):
            stats[f"client_retries_{r.status_code}"] += 1
            pause = 0.2
            if retry_after_up_to is not None:
                pause = min(float(r.headers.get("retry-after") or 0.2), retry_after_up_to)
            await asyncio.sleep(pause)
            continue
        return r
    raise AssertionError(f"{what} got no answer in time")


@dataclass
class Store:
    """The store backend's side of a run: the payments it registered, the
    refunds it was told were created."""

    call: Call
    auth: dict[str, str]
    stats: Counter[str]
    payment_ids: list[str] = field(default_factory=list)
    created: dict[str, dict] = field(default_factory=dict)

    async def seed_payments(
        self, sandbox: httpx.AsyncClient, *, prefix: str, count: int, amount: int
    ) -> None:
        """`count` payments made at the sandbox PSE (`{prefix}_00`, ...), each
        registered with the service."""
        for i in range(count):
            pse_id = f"{prefix}_{i:02d}"
            r = await sandbox.post(
                "/v1/payments",
                json={"id": pse_id, "amount": amount, "currency": "JPY"},
                headers=SANDBOX_AUTH,
            )
            assert r.status_code in (200, 201), r.text
            r = await self.call(
                i,
                "POST",
                "/v1/payments",
                headers=self.auth,
                json={
                    "pse_account": "sandbox",
                    "pse_payment_id": pse_id,
                    "amount": amount,
                    "currency": "JPY",
                    "captured_at": "2026-11-20T00:00:00Z",
                },
            )
            assert r.status_code in (200, 201), r.text
            self.payment_ids.append(r.json()["id"])

    async def refund(self, n: int, rng: Random, idempotency_key: str) -> None:
        """Refund request n, on the payments in turn: created, or refused as
        more than is left to refund."""
        body = {
            "payment_id": self.payment_ids[n % len(self.payment_ids)],
            "amount": rng.randint(300, 2000),
            "reason": "requested_by_customer",
        }
        headers = {**self.auth, "Idempotency-Key": idempotency_key}
        r = await self.call(n, "POST", "/v1/refunds", headers=headers, json=body)
        if r.status_code == 201:
            self.created[r.json()["id"]] = r.json()
        else:
            assert r.json()["code"] == "amount_exceeds_refundable", r.text
            self.stats["refused_over_refundable"] += 1


async def list_all_refunds(client, headers) -> list[dict]:
    refunds, cursor = [], None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/refunds", params=params, headers=headers)).json()
        refunds += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return refunds


# -- the end of a run -------------------------------------------------------------------


async def settle(
    sandbox: httpx.AsyncClient,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    *,
    deadline_seconds: float,
    logs: Callable[[], str],
) -> tuple[list[dict], dict[str, int], float]:
    """Faults off: within the deadline every refund must be final. Returns the
    refunds, the faults the sandbox injected, and how long they took."""
    assert (await sandbox.put("/_control/faults", json={})).status_code == 200
    injected = (await sandbox.get("/_control/stats")).json()["faults_injected"]
    started = time.monotonic()
    while True:
        refunds = await list_all_refunds(client, auth)
        open_ = [r for r in refunds if r["status"] not in FINAL]
        if not open_:
            break
        if time.monotonic() - started > deadline_seconds:
            pytest.fail(
                f"{len(open_)} refunds not final after {deadline_seconds}s: "
                f"{Counter(r['status'] for r in open_)}\n{logs()}"
            )
        await asyncio.sleep(0.5)
    return refunds, injected, time.monotonic() - started


@dataclass
class Reckoning:
    doubles: list[str]  # references refunded more than once at the PSE
    lost: list[str]  # our refunds whose money the PSE moved otherwise than we say
    unknown_at_pse: list[str]  # references at the PSE that are none of our refunds
    mismatched: list[tuple[str, int, int]]  # (payment, refunded by us, by the PSE)

    def __str__(self) -> str:
        return (
            f"doubles={len(self.doubles)} lost={len(self.lost)} "
            f"unknown_at_pse={len(self.unknown_at_pse)} "
            f"payment_mismatches={len(self.mismatched)}"
        )

    def assert_clean(self) -> None:
        assert self.doubles == [], self.doubles
        assert self.lost == [], self.lost
        assert self.unknown_at_pse == [], self.unknown_at_pse
        assert self.mismatched == [], self.mismatched


async def reckon(
    store: Store,
    client: httpx.AsyncClient,
    sandbox: httpx.AsyncClient,
    ours: dict[str, dict],
    *,
    prefix: str,
    amount: int,
) -> Reckoning:
    """Our refunds (`ours`, by id) and payments against the sandbox PSE's; no
    payment holds money reserved any more."""
    pse = (await sandbox.get("/_control/stats")).json()
    listing = (await sandbox.get("/_control/refunds")).json()

    lost = [refund_id for refund_id in store.created if refund_id not in ours]
    doubles, unknown_at_pse = [], []
    for pse_payment in pse["payments"].values():
        for reference, ids in pse_payment["refunds_by_reference"].items():
            if reference not in ours:
                unknown_at_pse.append(reference)
            if len(ids) > 1:
                doubles.append(reference)
    by_reference: dict[str, list[dict]] = {}
    for pse_refund in listing["data"]:
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
    for i, payment_id in enumerate(store.payment_ids):
        payment = (await client.get(f"/v1/payments/{payment_id}", headers=store.auth)).json()
        pse_total = pse["payments"].get(f"{prefix}_{i:02d}", {}).get("refunded_total_succeeded", 0)
        if payment["refunded_amount"] != pse_total or pse_total > amount:
            mismatched.append((payment_id, payment["refunded_amount"], pse_total))
        assert payment["reserved_amount"] == 0
    return Reckoning(doubles, lost, unknown_at_pse, mismatched)
