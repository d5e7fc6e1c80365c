"""Open-loop latency of refund creation: `POST /v1/refunds` on a fixed schedule.

wrk (bench/refunds.py) is a closed loop: each connection sends its next request
only when the last one is answered, so when the service stalls the load
generator stalls with it, and the requests that would have been sent meanwhile
are never timed. Their waiting is hidden (coordinated omission). This script
is an open loop of our own instead: request i is due at start + i / R, for a
constant rate R, whatever the service does. Its latency is measured from that
intended send time to the end of its answer, so time spent queueing behind a
slow request (in our connection pool, in the kernel, in the service) is
counted: coordinated omission corrected, as wrk2 and HdrHistogram do it.

Setup as bench/refunds.py (its functions): a scratch database with 1,000 large
JPY payments on a `sandbox` account, a store key, the PSE double (`--pse
sandbox`: the full sandbox), and the service (`pse-refunds serve`, worker
disabled, audit on unless `--audit off`). Each request is for a random payment
with a fresh Idempotency-Key, as wrk's.

1. Unless `--rate R` is given, the closed-loop phase of bench/refunds.py (wrk,
   `--connections`, `--max-duration` s) measures the service's maximum rate,
   and R is half of it.
2. `--warmup` s of open-loop load at R (not reported), then `--duration` s
   (default 60) measured.
3. Prints p50/p90/p99/max latency, the achieved rate (answers per second
   against R), the requests without a 2xx answer, how late this generator
   itself sent (a late generator understates nothing, since latency counts from
   the intended time, but says the machine is saturated), the CPU per process,
   and the targets p50 <= 15 ms and p99 <= 60 ms with PASS/FAIL, and the
   seconds of the run that held requests over 60 ms.
4. What the database's sessions waited on (pg_stat_activity, sampled every
   0.1 s), in those seconds and in the others: a stall whose sessions queue
   on `LWLock:WALWrite` behind one in `IO:WALSync` is commits waiting for
   the disk's flush (bench/disk.py measures that flush alone).

    .venv/bin/python bench/open_loop.py [--rate R] [--duration 60] [--warmup 3]
        [--max-duration 10] [--connections 32] [--pool 64] [--timeout 10]
        [--audit on|off] [--pse double|sandbox] [--workers N] [--keep-db]
        [--keep-logs] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

The generator keeps a pool of `--pool` keep-alive HTTP/1.1 connections (opened
before the load); a request due while every one is busy waits for one, and that
wait is part of its latency. A request not answered within `--timeout` s counts
as a failure, its connection is replaced. Needs `wrk` for step 1 only.
Loopback only; the subprocesses are stopped and the scratch database dropped at
the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.refunds import (  # noqa: E402
    DEFAULT_ADMIN_DSN,
    LOOPBACK,
    MAX_FAILURE_SHARE,
    PAYMENT_AMOUNT,
    PAYMENTS,
    BenchError,
    Children,
    CpuWatch,
    Load,
    MachineLoad,
    ScratchDb,
    audit_setting_exists,
    main,
    measure,
    prepare,
    refund_statuses,
    start_pse,
    start_service,
    submissions_note,
    wait_submissions,
)

TARGET_P50_MS = 15.0
TARGET_P99_MS = 60.0
PATH = "/v1/refunds"


# ---------------------------------------------------------------------------
# A small HTTP/1.1 client: keep-alive connections, Content-Length or chunked
# answers; enough for the service, on loopback only.
# ---------------------------------------------------------------------------


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send one request; its answer's status, body, and whether the
        connection may carry another."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip().lower()
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, body, headers.get("connection") != "close"


@dataclass
class OpenLoopResult:
    rate: float
    duration: float
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    send_lag: list[float] = field(default_factory=list)  # seconds late, per request
    sent: int = 0
    samples: list[str] = field(default_factory=list)
    machine: MachineLoad | None = None
    start: float = 0.0  # the loop's time when request 0 was due
    # The second of the run (from `start`) each request over the p99 target
    # was due in: a stall shows as a run of seconds, steady slowness as many.
    slow_seconds: Counter[int] = field(default_factory=Counter)

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code <= 299)

    @property
    def failures(self) -> int:
        return self.sent - self.ok

    @property
    def achieved(self) -> float:
        return self.answered / self.duration

    def percentile_ms(self, p: float, values: list[float] | None = None) -> float:
        """Nearest rank, in ms; `values` sorted (the latencies by default)."""
        data = self.latencies if values is None else values
        if not data:
            return float("nan")
        rank = max(1, min(len(data), math.ceil(p / 100 * len(data))))
        return data[rank - 1] * 1000


class OpenLoop:
    """Sends `request_for(i)` at start + i / rate, for `duration` seconds."""

    def __init__(
        self,
        port: int,
        request_for: Callable[[int], bytes],
        *,
        pool: int,
        timeout: float,
    ) -> None:
        self.port = port
        self.request_for = request_for
        self.pool_size = pool
        self.timeout = timeout
        self.idle: asyncio.Queue[Connection | None] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self.pool_size):
            self.idle.put_nowait(await Connection.open(LOOPBACK, self.port))

    async def close(self) -> None:
        while not self.idle.empty():
            conn = self.idle.get_nowait()
            if conn is not None:
                conn.close()

    async def run(self, rate: float, duration: float, first: int = 0) -> OpenLoopResult:
        loop = asyncio.get_running_loop()
        result = OpenLoopResult(rate, duration)
        tasks: set[asyncio.Task[None]] = set()
        start = result.start = loop.time() + 0.01
        total = int(rate * duration)
        for n in range(total):
            due = start + n / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = loop.create_task(self._one(first + n, due, result))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(list(tasks), timeout=self.timeout + 5)
        for task in list(tasks):  # not even timed out: give up on them
            task.cancel()
            result.errors["unfinished"] += 1
        result.latencies.sort()
        result.send_lag.sort()
        return result

    async def _one(self, i: int, due: float, result: OpenLoopResult) -> None:
        loop = asyncio.get_running_loop()
        request = self.request_for(i)
        conn = await self.idle.get()
        result.sent += 1
        result.send_lag.append(max(0.0, loop.time() - due))
        reusable = False
        try:
            if conn is None:
                conn = await Connection.open(LOOPBACK, self.port)
            status, body, reusable = await asyncio.wait_for(conn.exchange(request), self.timeout)
        except TimeoutError:
            result.errors["timeout"] += 1
            return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            result.errors[type(exc).__name__] += 1
            return
        finally:
            if not reusable and conn is not None:
                conn.close()
                conn = None
            self.idle.put_nowait(conn)  # None: the next user opens a fresh one
        latency = loop.time() - due
        result.latencies.append(latency)
        if latency * 1000 > TARGET_P99_MS:
            result.slow_seconds[int(due - result.start)] += 1
        result.statuses[status] += 1
        if not 200 <= status <= 299 and len(result.samples) < 3:
            result.samples.append(f"{status} {body[:300].decode(errors='replace')}")


def refund_requests(
    port: int, key: str, payment_ids: Sequence[str], seed: int
) -> Callable[[int], bytes]:
    """Request i: a random payment, amount 1, a fresh Idempotency-Key (a
    random UUID, as stores make them: see `REFUNDS_LUA` in bench/refunds.py)."""
    rng = random.Random(seed)
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
    )

    def request_for(i: int) -> bytes:
        body = (
            f'{{"payment_id":"{rng.choice(payment_ids)}","amount":1,'
            f'"reason":"requested_by_customer"}}'
        )
        return (
            f"{head}Idempotency-Key: {uuid.UUID(int=rng.getrandbits(128), version=4)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    return request_for


# ---------------------------------------------------------------------------
# What PostgreSQL's sessions waited on, sampled through the run
# ---------------------------------------------------------------------------

# pg_stat_activity of the scratch database's client sessions that are running
# a statement, by what each waits on ("CPU" when it waits on nothing).
_WAITS = (
    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS waiting, count(*) AS n "
    "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
    "AND backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1"
)


@dataclass
class WaitWatch:
    """Samples `_WAITS` every `every` s on a connection of its own, stamped
    with the loop's time, so that the seconds holding slow requests can be
    told apart: sessions queued on `LWLock:WALWrite` behind one in
    `IO:WALSync` are a commit waiting for the disk's flush; sessions on CPU
    or on locks are the service's or the database's own work."""

    dsn: str
    every: float = 0.1
    samples: list[tuple[float, Counter[str]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=10)
        self._task = asyncio.ensure_future(self._sample(conn))

    async def _sample(self, conn: asyncpg.Connection) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                at = loop.time()
                rows = await conn.fetch(_WAITS)
                self.samples.append((at, Counter({r["waiting"]: r["n"] for r in rows})))
                await asyncio.sleep(max(0.0, self.every - (loop.time() - at)))
        finally:
            await conn.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def describe(self, start: float, duration: float, slow: set[int]) -> list[str]:
        """Per sample, on average, the sessions waiting on each event in the
        seconds of the run holding slow requests and in the others, and the
        most seen at once."""
        groups: dict[bool, list[Counter[str]]] = {True: [], False: []}
        for at, waits in self.samples:
            second = math.floor(at - start)
            if 0 <= second < duration:
                groups[second in slow].append(waits)
        lines = []
        for is_slow, label in ((True, "in the seconds over target"), (False, "in the others")):
            taken = groups[is_slow]
            if not taken:
                continue
            total: Counter[str] = Counter()
            most: Counter[str] = Counter()
            for waits in taken:
                total.update(waits)
                for event, n in waits.items():
                    most[event] = max(most[event], n)
            top = ", ".join(
                f"{event} {n / len(taken):.2f} (at most {most[event]})"
                for event, n in total.most_common(4)
            )
            lines.append(
                f"  PostgreSQL sessions per sample {label} ({len(taken)} samples): "
                + (top or "none active")
            )
        return lines


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(result: OpenLoopResult, how: str, note: str, waits: WaitWatch | None = None) -> str:
    p50, p90, p99 = (result.percentile_ms(p) for p in (50, 90, 99))
    worst = result.latencies[-1] * 1000 if result.latencies else float("nan")
    lag99 = result.percentile_ms(99, result.send_lag)
    lag_max = result.send_lag[-1] * 1000 if result.send_lag else 0.0
    attempted = max(result.sent, 1)
    lines = [
        "",
        f"open-loop refund creation: {result.rate:,.1f} req/s scheduled for "
        f"{result.duration:.0f} s ({how}); latency from each request's intended send "
        "time (coordinated omission corrected)",
        f"  latency ms: p50 {p50:.1f}   p90 {p90:.1f}   p99 {p99:.1f}   max {worst:.1f}",
        f"  achieved: {result.achieved:,.1f} answers/s of {result.rate:,.1f} scheduled "
        f"({result.sent:,} sent, {result.answered:,} answered, {result.ok:,} 2xx, "
        f"statuses {dict(sorted(result.statuses.items()))}, "
        f"no answer {dict(result.errors) or 0})",
        f"  generator: sent late by p99 {lag99:.1f} ms, max {lag_max:.1f} ms "
        "(counted in the latencies)",
        f"  target p50 <= {TARGET_P50_MS:.0f} ms: {_verdict(p50 <= TARGET_P50_MS)}",
        f"  target p99 <= {TARGET_P99_MS:.0f} ms: {_verdict(p99 <= TARGET_P99_MS)}",
        f"  over {TARGET_P99_MS:.0f} ms: {sum(result.slow_seconds.values()):,} requests"
        + (
            ", due in seconds (of the run: requests) "
            + ", ".join(f"{t}: {n}" for t, n in sorted(result.slow_seconds.items())[:20])
            if result.slow_seconds
            else ""
        ),
    ]
    if waits is not None:
        lines += waits.describe(result.start, result.duration, set(result.slow_seconds))
    if result.failures > MAX_FAILURE_SHARE * attempted:
        lines.append(
            f"  WARNING: {result.failures:,} of {result.sent:,} requests had no 2xx answer: "
            "the latencies above mean little"
        )
        lines += [f"  sample: {s}" for s in result.samples]
    if result.achieved < 0.95 * result.rate:
        lines.append("  WARNING: the service did not keep up with the schedule")
    if result.machine is not None:
        lines.append(f"  {result.machine.describe()}")
    lines.append(f"  {note}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    db = ScratchDb(args.dsn)
    workdir = Path(tempfile.mkdtemp(prefix="open-loop-bench-"))
    children = Children(workdir)
    try:
        t0 = time.perf_counter()
        ready = await prepare(db, workdir, args.payments)
        print(
            f"scratch database {db.name} (PostgreSQL {ready.pg_version}): {args.payments:,} "
            f"payments of JPY {PAYMENT_AMOUNT:,}, store key created, "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        if args.audit == "off" and not audit_setting_exists():
            raise BenchError("--audit off: this build has no `audit_enabled` setting")
        _pse, pse_url = await start_pse(children, args.pse)
        label = f"service (audit {args.audit})"
        service, base = await start_service(
            children,
            workdir,
            db,
            pse_url,
            slug=f"service-audit-{args.audit}",
            # A build without the setting has the audit on, always.
            audit=(args.audit == "on") if audit_setting_exists() else None,
            workers=args.workers,
        )
        port = int(base.rsplit(":", 1)[1])
        if args.rate is not None:
            rate, how = args.rate, "--rate"
        else:
            print(
                f"measuring the maximum rate: wrk, {args.connections} connections, "
                f"{args.max_duration:.0f} s ...",
                flush=True,
            )
            closed = await measure(
                f"{label} closed loop",
                f"{base}{PATH}",
                ready.script,
                [str(ready.ids_file), ready.key],
                Load(args.max_duration, args.warmup, args.connections, args.threads),
                db_name=db.name,
                settle=db.analyze,
            )
            rate = closed.rps / 2
            how = (
                f"half the closed-loop maximum: {closed.rps:,.1f} req/s with wrk, "
                f"{args.connections} connections, p99 {closed.p99_ms:.1f} ms"
            )
            print(f"  {closed.rps:,.1f} req/s: open loop at {rate:,.1f} req/s", flush=True)
            await wait_submissions(db)
        if rate <= 0:
            raise BenchError(f"no rate to run at ({rate})")
        payment_ids = [p.id for p in ready.payments]
        loop = OpenLoop(
            port,
            refund_requests(port, ready.key, payment_ids, secrets.randbits(30)),
            pool=args.pool,
            timeout=args.timeout,
        )
        await loop.open()
        try:
            if args.warmup > 0:
                print(f"open-loop warm-up: {args.warmup:.0f} s at {rate:,.1f} req/s ...")
                warm = await loop.run(rate, args.warmup, first=0)
                if warm.failures > MAX_FAILURE_SHARE * max(warm.sent, 1):
                    raise BenchError(
                        f"warm-up: {warm.failures:,} of {warm.sent:,} requests without a 2xx "
                        f"answer (statuses {dict(warm.statuses)}, errors {dict(warm.errors)}):"
                        f"\n  " + "\n  ".join(warm.samples)
                    )
            before = await refund_statuses(db)
            print(f"open loop: {args.duration:.0f} s at {rate:,.1f} req/s ...", flush=True)
            watch = CpuWatch(db.name)
            waits = WaitWatch(db.dsn)
            await waits.start()
            try:
                result = await loop.run(rate, args.duration, first=10_000_000)
            finally:
                await waits.stop()
            result.machine = watch.stop()
        finally:
            await loop.close()
        if service.proc.returncode is not None:
            raise BenchError(f"the service died:\n{service.log_tail()}")
        drained, after = await wait_submissions(db)
        note = (
            submissions_note(sum(after.values()) - sum(before.values()), drained, after)
            .replace("(warm-up included)", "in the measured run")
            .replace("; statuses", "; statuses of all refunds in the database")
        )
        print(report(result, how, note, waits))
    finally:
        await children.stop_all()
        if args.keep_db:
            print(f"kept database {db.name}: {db.dsn}")
        else:
            await db.drop()
        if args.keep_logs:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--rate", type=float, default=None, help="requests/s (default: half the measured maximum)"
    )
    parser.add_argument("--duration", type=float, default=60, help="seconds of measured load")
    parser.add_argument(
        "--warmup", type=float, default=3, help="seconds of load before each measured run"
    )
    parser.add_argument(
        "--max-duration", type=float, default=10, help="seconds of the closed-loop max measurement"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (max rate)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (max rate)")
    parser.add_argument("--pool", type=int, default=64, help="open-loop keep-alive connections")
    parser.add_argument("--timeout", type=float, default=10, help="seconds before a request fails")
    parser.add_argument("--payments", type=int, default=PAYMENTS)
    parser.add_argument("--audit", choices=["on", "off"], default="on")
    parser.add_argument("--pse", choices=["double", "sandbox"], default="double")
    parser.add_argument(
        "--workers", type=int, default=1, help="API processes of the service (serve --workers)"
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs")
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="an admin connection")
    args = parser.parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if min(args.duration, args.max_duration, args.pool, args.timeout, args.payments) <= 0:
        parser.error("--duration, --max-duration, --pool, --timeout, --payments must be positive")
    return args


if __name__ == "__main__":
    main(run, arguments, "bench/open_loop.py")
