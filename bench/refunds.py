"""Refund creation under load, measured against a yardstick.

Creates a scratch PostgreSQL database with 1,000 large JPY payments on a
`sandbox` account, starts a PSE double answering the sandbox's refund calls at
once (bench/pse_double.py; `--pse sandbox` runs the full sandbox PSE instead,
settling nothing for an hour) and the service (`pse-refunds serve`, worker disabled, so only
the request path and the background submission right after it run), and loads
`POST /v1/refunds` with wrk: 32 connections, 2 threads, a random payment and a
fresh Idempotency-Key per request. Then the same load against two yardsticks:
the one-transaction yardstick (bench/yardstick.py: one FastAPI endpoint doing
the bare transaction on a raw asyncpg pool) and the same-protocol yardstick
(bench/protocol_yardstick.py: the service's three transactions, idempotency,
history, outbox, audit and the call to the same PSE double, in the least
code), and prints all side by side with the targets: service >= 0.5 x the
one-transaction yardstick, p99 <= 100 ms, audit overhead <= 15 %, and the
ratio service / same-protocol yardstick (above 1: the service beats the least
code doing the same work).

    .venv/bin/python bench/refunds.py [--duration 15] [--warmup 3] [--connections 32]
        [--threads 2] [--audit on|off|both] [--only service|yardstick|protocol]
        [--pse double|sandbox] [--workers N] [--keep-db]
        [--keep-logs] [--profile DIR] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Each run also prints what else used the CPUs meanwhile (other processes on a
small machine lower every figure), the database work per refund (from
pg_stat_database) and, with `--profile DIR`, where the service spent its CPU
(py-spy, sampling the measured run from outside).

Needs `wrk` (apt-get install wrk); `--profile` needs py-spy in the virtualenv.
Everything runs on this machine (loopback only); the subprocesses are stopped
and the scratch database dropped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.adapters.db.engine import migrate  # noqa: E402
from app.services.ids import new_id  # noqa: E402
from bench.protocol_yardstick import DDL as PROTOCOL_YARDSTICK_DDL  # noqa: E402
from bench.yardstick import DDL as YARDSTICK_DDL  # noqa: E402

DEFAULT_ADMIN_DSN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
LOOPBACK = "127.0.0.1"
SANDBOX_KEY = "sk_bench_sandbox"
ACCOUNT = "sandbox"
PAYMENTS = 1_000
PAYMENT_AMOUNT = 1_000_000_000  # JPY: refunds of 1 never run out
TARGET_RATIO = 0.5
TARGET_P99_MS = 100.0
TARGET_AUDIT_OVERHEAD = 0.15
MAX_FAILURE_SHARE = 0.01
OPEN_STATUSES = ("approved", "submitting")
# The payments columns the seeds write, in their records' order (named here, not
# taken from the repository: columns added later keep their database defaults).
SEED_PAYMENT_COLUMNS = [
    "id",
    "pse_account",
    "pse_payment_id",
    "order_id",
    "amount",
    "currency",
    "captured_at",
    "payment_method",
    "risk_level",
    "settlement_currency",
    "settlement_rate",
    "refunded_amount",
    "reserved_amount",
    "created_at",
    "updated_at",
]
YARDSTICK_LABEL = "one-tx yardstick"
PROTOCOL_LABEL = "protocol yardstick"

# One POST per request: a random payment of the file, amount 1, and an
# Idempotency-Key that is a random UUID (version 4), as stores make them
# (Stripe's and most PSEs' documentation ask for one). A key of digits joined
# by dashes (a nonce, the thread, a counter, a random number) made a run that
# the service's redaction searched for a card number on every request: 60 µs
# per key against 5 for a UUID, a cost a store's keys do not have.
# Arguments after `--`: <payment ids file> <bearer key or ""> <seed>.
# done() prints every status code seen and one non-2xx answer per thread.
REFUNDS_LUA = r"""
local threads = {}
local next_tid = 1

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   table.insert(threads, thread)
end

statuses = {}
sample = nil
local ids = {}
local headers = {}

function init(args)
   for line in io.lines(args[1]) do
      if #line > 0 then ids[#ids + 1] = line end
   end
   headers["Content-Type"] = "application/json"
   if args[2] ~= nil and #args[2] > 0 then
      headers["Authorization"] = "Bearer " .. args[2]
   end
   math.randomseed(tonumber(args[3]) + tid * 7919)
end

local function uuid4()
   local r = math.random
   return string.format("%04x%04x-%04x-4%03x-%04x-%04x%04x%04x",
      r(0, 0xffff), r(0, 0xffff), r(0, 0xffff), r(0, 0xfff), r(0x8000, 0xbfff),
      r(0, 0xffff), r(0, 0xffff), r(0, 0xffff))
end

function request()
   headers["Idempotency-Key"] = uuid4()
   local body = '{"payment_id":"' .. ids[math.random(#ids)]
      .. '","amount":1,"reason":"requested_by_customer"}'
   return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
   statuses[status] = (statuses[status] or 0) + 1
   if (status < 200 or status > 299) and sample == nil then
      sample = status .. " " .. string.gsub(string.sub(body or "", 1, 600), "[\r\n]", " ")
   end
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      for code, n in pairs(thread:get("statuses") or {}) do
         merged[code] = (merged[code] or 0) + n
      end
      local s = thread:get("sample")
      if s ~= nil then io.write("SAMPLE " .. s .. "\n") end
   end
   local parts = {}
   for code, n in pairs(merged) do parts[#parts + 1] = code .. "=" .. n end
   table.sort(parts)
   io.write("STATUSES " .. table.concat(parts, ",") .. "\n")
end
"""


class BenchError(Exception):
    """A run whose figures cannot be trusted, or that could not run; the message says why."""


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Children get SIGTERM if this process dies without cleaning up (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def cli_command() -> list[str]:
    """`pse-refunds` of this virtualenv (the same code as `python -m app.cli`)."""
    script = Path(sys.executable).with_name("pse-refunds")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def child_env(config: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
    env["PYTHONPATH"] = str(ROOT)
    if config is not None:
        env["PSE_REFUNDS_CONFIG_FILE"] = str(config)
    env.update(extra)
    return env


# pid -> name of the long-running children, to tell their CPU use apart.
CHILD_NAMES: dict[int, str] = {}


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


class Children:
    """Long-running subprocesses (service, sandbox, yardstick), logs in files."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Child] = []

    async def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, proc, log)
        CHILD_NAMES[proc.pid] = name
        self.running.append(child)
        return child

    async def stop(self, child: Child, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
        if child in self.running:
            self.running.remove(child)

    async def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            await self.stop(child)


async def wait_http(url: str, child: Child, within: float = 60.0) -> None:
    """Until `url` answers 200; fails at once if the process exits."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if child.proc.returncode is not None:
                raise BenchError(
                    f"{child.name} exited with status {child.proc.returncode}:\n{child.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{child.name} not ready after {within:.0f} s:\n{child.log_tail()}"
                )
            await asyncio.sleep(0.2)


async def run_command(
    argv: Sequence[str],
    *,
    within: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[int, str, str]:
    """Run to completion (killed after `within` s or when cancelled): status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except BaseException:  # timeout, Ctrl-C: never leave it running
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# ---------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------


class ScratchDb:
    """`refunds_bench_<hex>`, migrated to head; dropped by `drop()`."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"refunds_bench_{secrets.token_hex(4)}"
        self.dsn = f"{admin_dsn.rsplit('/', 1)[0]}/{self.name}"
        self.url = self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        self.created = False

    async def create(self) -> None:
        admin = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"')
            self.created = True
        finally:
            await admin.close()
        await asyncio.to_thread(migrate, self.url)

    async def drop(self) -> None:
        if not self.created:
            return
        admin = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()
        self.created = False

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, timeout=10)

    async def analyze(self) -> None:
        """Statistics of the tables as the warm-up left them. A database that
        starts empty has statistics of empty tables, and each connection keeps
        the plans it made on them: its foreign-key checks then scan `refunds`
        from end to end, longer with every refund written, until autovacuum's
        next ANALYZE (a minute or more). A live database has none of that.
        ANALYZE makes every open connection plan its statements again."""
        conn = await self.connect()
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    async def activity(self) -> Counter[str]:
        """This database's cumulative counters (pg_stat_database)."""
        conn = await self.connect()
        try:
            row = await conn.fetchrow(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched"
                " FROM pg_stat_database WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        return Counter(dict(row) if row is not None else {})

    async def tidy(self) -> None:
        """Between measured runs: fresh statistics, no dirty pages left to write."""
        conn = await self.connect()
        try:
            await conn.execute("VACUUM (ANALYZE)")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()


@dataclass(frozen=True)
class SeededPayment:
    id: str
    pse_payment_id: str


async def seed_payments(
    conn: asyncpg.Connection,
    count: int,
    *,
    amount: int = PAYMENT_AMOUNT,
    reserved: Callable[[int], int] = lambda _i: 0,
) -> list[SeededPayment]:
    """`count` card payments captured now (inside every refund window), by COPY."""
    now = datetime.now(UTC)
    seeded = [SeededPayment(new_id("pay"), f"pi_bench_{i:06d}") for i in range(count)]
    await conn.copy_records_to_table(
        "payments",
        records=[
            (
                p.id,
                ACCOUNT,
                p.pse_payment_id,
                f"order_bench_{i:06d}",
                amount,
                "JPY",
                now,
                "card",
                "normal",
                "JPY",
                "1",
                0,
                reserved(i),
                now,
                now,
            )
            for i, p in enumerate(seeded)
        ],
        columns=SEED_PAYMENT_COLUMNS,
    )
    return seeded


async def refund_statuses(db: ScratchDb) -> Counter[str]:
    conn = await db.connect()
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM refunds GROUP BY status")
    finally:
        await conn.close()
    return Counter({r["status"]: r["n"] for r in rows})


# ---------------------------------------------------------------------------
# Service configuration
# ---------------------------------------------------------------------------


def audit_setting_exists() -> bool:
    from app.config import Settings

    return "audit_enabled" in Settings.model_fields


def rate_limits_setting_exists() -> bool:
    from app.config import Settings

    return "rate_limits" in Settings.model_fields


def service_toml(
    db_url: str,
    pse_base_url: str,
    *,
    audit: bool | None = None,
    webhook_secret: str | None = None,
    daily_limit: int | None = None,
) -> str:
    """The service's TOML: PostgreSQL, quiet JSON logs, no worker, one sandbox account.
    `audit_enabled` is written only when `audit` is given; `daily_limit`, a daily
    auto-approval limit in JPY, only when given."""
    lines = [
        f'database_url = "{db_url}"',
        'log_level = "warning"',
        'log_format = "json"',
    ]
    if audit is not None:
        lines.append(f"audit_enabled = {'true' if audit else 'false'}")
    lines += [
        "",
        "[worker]",
        "enabled = false",
    ]
    if rate_limits_setting_exists():
        # Counted as in production, but far above the load: the bench measures
        # what the limits cost, never a 429.
        lines += [
            "",
            "[rate_limits]",
            'per_key = "1000000/second"',
            'per_address = "1000000/second"',
            'webhooks_per_account = "1000000/second"',
        ]
    if daily_limit is not None:
        lines += ["", "[policy]", f"daily_auto_approve_limit = {{JPY = {daily_limit}}}"]
    lines += [
        "",
        f"[accounts.{ACCOUNT}]",
        'provider = "sandbox"',
        f'api_key = "{SANDBOX_KEY}"',
        f'base_url = "{pse_base_url}"',
    ]
    if webhook_secret is not None:
        lines.append(f'webhook_secrets = ["{webhook_secret}"]')
    return "\n".join(lines) + "\n"


async def create_store_key(config: Path, workdir: Path) -> str:
    status, out, err = await run_command(
        [*cli_command(), "keys", "create", "--name", "bench", "--role", "store", "--json"],
        within=120,
        env=child_env(config),
        cwd=workdir,
    )
    if status != 0:
        raise BenchError(f"keys create failed ({status}): {err.strip() or out.strip()}")
    return str(json.loads(out)["key"])


# ---------------------------------------------------------------------------
# What else used the CPUs during a run
# ---------------------------------------------------------------------------

_BACKEND = re.compile(r"^postgres: \S+: \S+ (\S+) (?:\d[\d.:]*\(\d+\)|\[local\])")


@dataclass(frozen=True)
class _Proc:
    ppid: int
    started: int  # clock ticks after boot: tells a reused pid apart
    name: str
    cpu: float  # seconds, user + system


def _processes() -> dict[int, _Proc]:
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = cmdline or stat[stat.index("(") + 1 : stat.rindex(")")]
        table[int(entry.name)] = _Proc(
            int(fields[1]), int(fields[19]), name, (int(fields[11]) + int(fields[12])) / tick
        )
    return table


def _reaped_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy_seconds() -> float:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class MachineLoad:
    """CPUs (in cores) busy during a run: the whole machine, then each of ours (this
    script's children, and the PostgreSQL backends of its database), PostgreSQL's
    shared processes, and everything else."""

    cpus: int
    busy: float
    ours: list[tuple[str, float]]
    postgres_shared: float
    others: list[tuple[str, float]]

    @property
    def other(self) -> float:
        return sum(c for _, c in self.others)

    def describe(self) -> str:
        mine = ", ".join(f"{name} {cores:.2f}" for name, cores in self.ours if cores >= 0.005)
        top = ", ".join(f"{name} {cores:.2f}" for name, cores in self.others[:3] if cores >= 0.01)
        text = (
            f"CPU (cores) during the run: {self.busy:.2f} of {self.cpus} busy; {mine}; "
            f"PostgreSQL shared {self.postgres_shared:.2f}; other processes {self.other:.2f}"
            + (f" ({top})" if top else "")
        )
        if self.other > 0.1 * self.cpus:
            text += " -- WARNING: other work on this machine lowers these figures"
        return text


class CpuWatch:
    def __init__(self, db_name: str | None) -> None:
        self.db_name = db_name
        self.started = time.monotonic()
        self.busy = _busy_seconds()
        self.procs = _processes()
        self.reaped = _reaped_children_cpu()

    def stop(self) -> MachineLoad:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        busy = _busy_seconds() - self.busy
        now = _processes()
        shared = 0.0
        ours: Counter[str] = Counter()
        others: Counter[str] = Counter()
        for pid, proc in now.items():
            before = self.procs.get(pid)
            same = before is not None and before.started == proc.started
            used = proc.cpu - (before.cpu if before is not None and same else 0)
            if used <= 0:
                continue
            backend = _BACKEND.match(proc.name)
            mine = self._ours(pid, now)
            if mine is not None:
                ours[mine] += used
            elif backend and backend.group(1) == self.db_name:
                ours["postgres"] += used
            elif backend:
                others[f"postgres {backend.group(1)}"] += used
            elif proc.name.startswith(("postgres", "/usr/lib/postgresql")):
                shared += used
            else:
                others[proc.name[:60]] += used
        # wrk has exited by now: its CPU is in this process's reaped children.
        ours["wrk"] += _reaped_children_cpu() - self.reaped
        return MachineLoad(
            cpus=os.cpu_count() or 1,
            busy=busy / elapsed,
            ours=[(name, used / elapsed) for name, used in ours.most_common()],
            postgres_shared=shared / elapsed,
            others=[(name, used / elapsed) for name, used in others.most_common()],
        )

    @staticmethod
    def _ours(pid: int, table: dict[int, _Proc]) -> str | None:
        """The name of our child `pid` descends from ("bench" for this process)."""
        me = os.getpid()
        for _ in range(64):
            if pid == me:
                return "bench"
            proc = table.get(pid)
            if proc is None or proc.ppid in (0, pid):
                return None
            if proc.ppid == me:
                return CHILD_NAMES.get(pid) or Path(proc.name.split(" ", 1)[0]).name
            pid = proc.ppid
        return None


# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS_S[unit]


@dataclass
class WrkResult:
    label: str
    requests: int
    duration_s: float
    rps: float
    percentiles_ms: dict[int, float]
    wrk_non2xx: int  # wrk's own count ("Non-2xx or 3xx responses": in fact status > 399)
    socket_errors: dict[str, int]
    statuses: Counter[int]
    samples: list[str]
    extra: dict[str, str] = field(default_factory=dict)
    output: str = ""
    machine: MachineLoad | None = None

    @property
    def p50_ms(self) -> float:
        return self.percentiles_ms[50]

    @property
    def p99_ms(self) -> float:
        return self.percentiles_ms[99]

    @property
    def non2xx(self) -> int:
        if self.statuses:
            return sum(n for code, n in self.statuses.items() if not 200 <= code <= 299)
        return self.wrk_non2xx

    @property
    def failures(self) -> int:
        """Non-2xx answers plus requests without an answer (timeouts, socket errors)."""
        return self.non2xx + sum(self.socket_errors.values())


def parse_wrk(label: str, output: str) -> WrkResult:
    def need(pattern: str) -> re.Match[str]:
        found = re.search(pattern, output, re.MULTILINE)
        if found is None:
            raise BenchError(f"{label}: cannot read wrk's output ({pattern!r}):\n{output}")
        return found

    total = need(rf"^\s*(\d+) requests in {_DURATION},")
    rps = need(r"^Requests/sec:\s+([\d.]+)")
    percentiles = {
        int(m.group(1)): _seconds(m.group(2), m.group(3)) * 1000
        for m in re.finditer(rf"^\s+(50|75|90|99)%\s+{_DURATION}\s*$", output, re.MULTILINE)
    }
    if 50 not in percentiles or 99 not in percentiles:
        raise BenchError(f"{label}: no latency distribution in wrk's output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    statuses: Counter[int] = Counter()
    samples: list[str] = []
    extra: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("STATUSES "):
            for part in line[9:].split(","):
                if "=" in part:
                    code, n = part.split("=")
                    statuses[int(code)] += int(n)
        elif line.startswith("SAMPLE "):
            samples.append(line[7:])
        elif line.startswith("EXTRA "):
            key, _, value = line[6:].partition("=")
            extra[key] = value
    return WrkResult(
        label=label,
        requests=int(total.group(1)),
        duration_s=_seconds(total.group(2), total.group(3)),
        rps=float(rps.group(1)),
        percentiles_ms=percentiles,
        wrk_non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=socket_errors,
        statuses=statuses,
        samples=samples,
        extra=extra,
        output=output,
    )


async def run_wrk(
    label: str,
    url: str,
    script: Path,
    script_args: Sequence[str],
    *,
    duration: float,
    connections: int,
    threads: int,
    db_name: str | None = None,
) -> WrkResult:
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise BenchError(f"refusing to load {url}: loopback only")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    argv = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *script_args,
    ]
    watch = CpuWatch(db_name)
    status, out, err = await run_command(argv, within=duration + 60)
    if status != 0:
        raise BenchError(f"{label}: wrk exited with {status}: {err.strip()}\n{out}")
    result = parse_wrk(label, out)
    result.machine = watch.stop()
    return result


def check_failures(result: WrkResult) -> None:
    """More than 1% of requests without a 2xx answer: the figures mean nothing."""
    attempted = result.requests + sum(result.socket_errors.values())
    if result.requests == 0:
        raise BenchError(f"{result.label}: no request completed\n{result.output}")
    if result.failures > MAX_FAILURE_SHARE * attempted:
        samples = "\n  ".join(result.samples) or "(no response body captured)"
        raise BenchError(
            f"{result.label}: {result.failures:,} of {attempted:,} requests failed "
            f"(statuses {dict(result.statuses)}, socket errors {result.socket_errors}); "
            f"sample response(s):\n  {samples}"
        )


# ---------------------------------------------------------------------------
# CPU profile (py-spy, sampling the running service from outside)
# ---------------------------------------------------------------------------


def start_profile(pid: int, duration: float, out: Path) -> asyncio.Task[None]:
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        found = shutil.which("py-spy")
        if found is None:
            raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
        py_spy = Path(found)
    argv = [
        str(py_spy),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(duration))),
        "--rate",
        os.environ.get("BENCH_PROFILE_RATE", "100"),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]

    async def record() -> None:
        status, _out, err = await run_command(argv, within=duration + 60)
        if status != 0:
            print(f"py-spy failed ({status}): {err.strip()}", file=sys.stderr)

    return asyncio.create_task(record())


_IDLE_LEAVES = ("Condition.wait (threading.py)", "Event.wait (threading.py)")


def summarize_profile(path: Path, top: int = 15) -> str:
    """From py-spy's collapsed stacks: own (leaf) CPU share by function and by
    package, and inclusive share of the product's own functions (app/). Threads
    parked in a wait are left out. The inclusive shares are lower bounds: the
    stacks of resumed coroutines often lack their callers."""
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    app_inclusive: Counter[str] = Counter()
    total = idle = 0
    if not path.exists():
        return f"(no profile at {path})"
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if frames and frames[-1][0] in _IDLE_LEAVES:
            idle += count
            continue
        total += count
        leaf, leaf_file = frames[-1] if frames else ("(no Python frame)", "(native)")
        own[leaf] += count
        by_package[leaf_file.split("/", 1)[0]] += count
        for name in {name for name, file in frames if file.startswith("app/")}:
            app_inclusive[name] += count
    if total == 0:
        return "(empty profile)"

    def table(title: str, counter: Counter[str]) -> list[str]:
        lines = [f"  {title}"]
        lines += [f"    {n / total:6.1%}  {name}" for name, n in counter.most_common(top)]
        return lines

    lines = [f"CPU profile: {total:,} samples, {idle:,} of parked threads left out ({path})"]
    lines += table("own time, by function:", own)
    lines += table("own time, by package:", by_package)
    lines += table("inclusive time, functions of app/ (lower bounds):", app_inclusive)
    return "\n".join(lines)


def _frame_name(frame: str) -> tuple[str, str]:
    """`func (path/to/file.py:12)` -> ("func (file.py)", "pkg/file.py")."""
    found = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if found is None:
        return frame, frame
    func, file = found.groups()
    short = file
    for marker in ("site-packages/", f"{ROOT}/"):
        if marker in short:
            short = short.split(marker, 1)[1]
    if short.startswith("/usr/lib/python"):
        short = "stdlib/" + short.rsplit("/", 1)[-1]
    return f"{func} ({short})", short


# ---------------------------------------------------------------------------
# The refund bench
# ---------------------------------------------------------------------------


@dataclass
class Phase:
    label: str
    result: WrkResult
    notes: list[str] = field(default_factory=list)


@dataclass
class Load:
    duration: float
    warmup: float
    connections: int
    threads: int


async def measure(
    label: str,
    url: str,
    script: Path,
    args: Sequence[str],
    load: Load,
    *,
    db_name: str | None = None,
    on_measure: Callable[[], Any] | None = None,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> WrkResult:
    """A warm-up (checked, not reported), then the measured run; `settle` (the
    scratch database's `analyze`) and `on_measure` are called between the two.
    `args`: the script's arguments before its seed."""
    if load.warmup > 0:
        warm = await run_wrk(
            f"{label} warm-up",
            url,
            script,
            [*args, str(secrets.randbits(30))],
            duration=load.warmup,
            connections=load.connections,
            threads=load.threads,
        )
        check_failures(warm)
    if settle is not None:
        await settle()
    if on_measure is not None:
        on_measure()
    result = await run_wrk(
        label,
        url,
        script,
        [*args, str(secrets.randbits(30))],
        duration=load.duration,
        connections=load.connections,
        threads=load.threads,
        db_name=db_name,
    )
    check_failures(result)
    return result


async def wait_drained(
    statuses: Callable[[], Awaitable[Counter[str]]], within: float = 60.0
) -> tuple[float, Counter[str]]:
    """How long after the load the background submissions took to reach the PSE."""
    started = time.monotonic()
    while True:
        now = await statuses()
        if not any(now[s] for s in OPEN_STATUSES):
            return time.monotonic() - started, now
        if time.monotonic() - started > within:
            return float("inf"), now
        await asyncio.sleep(0.25)


async def wait_submissions(db: ScratchDb, within: float = 60.0) -> tuple[float, Counter[str]]:
    return await wait_drained(lambda: refund_statuses(db), within)


def submissions_note(created: int, drained: float, after: Counter[str]) -> str:
    return (
        f"{created:,} refunds created (warm-up included); "
        + (
            f"all sent to the PSE {drained:.1f} s after the load"
            if drained != float("inf")
            else f"{sum(after[s] for s in OPEN_STATUSES):,} still not sent 60 s after the load"
        )
        + f"; statuses {dict(after)}"
    )


async def start_pse(children: Children, kind: str) -> tuple[Child, str]:
    """The PSE the service and the same-protocol yardstick call: the double
    (bench/pse_double.py) or the full sandbox (settling nothing for an hour)."""
    port = free_port()
    if kind == "sandbox":
        argv = [
            *cli_command(),
            "sandbox",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--api-key",
            SANDBOX_KEY,
            "--settle-delay",
            "3600",
        ]
    else:
        argv = [sys.executable, str(BENCH / "pse_double.py"), "--port", str(port)]
    pse = await children.start(f"pse-{kind}", argv, child_env())
    url = f"http://{LOOPBACK}:{port}"
    await wait_http(f"{url}/{'openapi.json' if kind == 'sandbox' else 'healthz'}", pse)
    return pse, url


async def start_service(
    children: Children,
    workdir: Path,
    db: ScratchDb,
    sandbox_url: str,
    *,
    slug: str,
    audit: bool | None,
    workers: int = 1,
    daily_limit: int | None = None,
) -> tuple[Child, str]:
    """`pse-refunds serve` (worker disabled) on a free port, once it is ready."""
    config = workdir / f"{slug}.toml"
    config.write_text(service_toml(db.url, sandbox_url, audit=audit, daily_limit=daily_limit))
    port = free_port()
    argv = [*cli_command(), "serve", "--host", LOOPBACK, "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    service = await children.start(slug, argv, child_env(config))
    base = f"http://{LOOPBACK}:{port}"
    await wait_http(f"{base}/readyz", service)
    return service, base


async def start_uvicorn(
    children: Children, name: str, app: str, env: dict[str, str]
) -> tuple[Child, str]:
    """A yardstick app served the way the service is: uvicorn, one worker, no access log."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    child = await children.start(name, argv, env)
    base = f"http://{LOOPBACK}:{port}"
    await wait_http(f"{base}/openapi.json", child)
    return child, base


@dataclass
class Prepared:
    """A seeded scratch database and what the load needs to reach it."""

    payments: list[SeededPayment]
    ids_file: Path
    script: Path
    key: str
    pg_version: str


async def prepare(db: ScratchDb, workdir: Path, payments: int) -> Prepared:
    """Create and seed the scratch database (payments, the yardsticks' tables), write
    wrk's payment ids file and script, and create the service's store key."""
    await db.create()
    conn = await db.connect()
    try:
        seeded = await seed_payments(conn, payments)
        await conn.execute(YARDSTICK_DDL)
        await conn.execute(PROTOCOL_YARDSTICK_DDL)
        await conn.execute("ANALYZE")
        pg_version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    ids_file = workdir / "payment_ids.txt"
    ids_file.write_text("".join(f"{p.id}\n" for p in seeded))
    script = workdir / "refunds.lua"
    script.write_text(REFUNDS_LUA)
    key_config = workdir / "keys.toml"
    key_config.write_text(service_toml(db.url, "http://127.0.0.1:9"))
    key = await create_store_key(key_config, workdir)
    return Prepared(seeded, ids_file, script, key, pg_version)


async def service_phase(
    *,
    label: str,
    audit: bool | None,
    db: ScratchDb,
    children: Children,
    workdir: Path,
    sandbox_url: str,
    script: Path,
    ids_file: Path,
    key: str,
    load: Load,
    profile_dir: Path | None,
    workers: int = 1,
    daily_limit: int | None = None,
) -> Phase:
    slug = label.replace(" ", "-").replace("(", "").replace(")", "")
    service, base = await start_service(
        children,
        workdir,
        db,
        sandbox_url,
        slug=slug,
        audit=audit,
        workers=workers,
        daily_limit=daily_limit,
    )
    profile: list[asyncio.Task[None]] = []
    profile_out = profile_dir / f"{slug}.txt" if profile_dir is not None else None
    try:
        await db.tidy()
        before = await refund_statuses(db)
        activity = await db.activity()

        def start_profiling() -> None:
            if profile_out is not None:
                profile.append(start_profile(service.pid, load.duration, profile_out))

        result = await measure(
            label,
            f"{base}/v1/refunds",
            script,
            [str(ids_file), key],
            load,
            db_name=db.name,
            settle=db.analyze,
            on_measure=start_profiling,
        )
        drained, after = await wait_submissions(db)
        if service.proc.returncode is not None:
            raise BenchError(f"{label}: the service died:\n{service.log_tail()}")
        for task in profile:
            await task
    finally:
        await children.stop(service)
    created = sum(after.values()) - sum(before.values())
    notes = [
        submissions_note(created, drained, after),
        per_unit(activity, await db.activity(), created, "refund (request + submission)"),
    ]
    if profile_out is not None:
        notes.append(summarize_profile(profile_out))
    return Phase(label, result, notes)


async def yardstick_phase(
    *,
    db: ScratchDb,
    children: Children,
    script: Path,
    ids_file: Path,
    key: str,
    load: Load,
) -> Phase:
    yard, base = await start_uvicorn(
        children, "yardstick", "bench.yardstick:app", child_env(YARDSTICK_DSN=db.dsn)
    )
    try:
        await db.tidy()
        made_before = await _yard_refunds(db)
        activity = await db.activity()
        result = await measure(
            YARDSTICK_LABEL,
            f"{base}/refund",
            script,
            [str(ids_file), key],
            load,
            db_name=db.name,
            settle=db.analyze,
        )
    finally:
        await children.stop(yard)
    made = await _yard_refunds(db) - made_before
    return Phase(
        YARDSTICK_LABEL,
        result,
        [
            f"{made:,} yard_refunds rows (warm-up included)",
            per_unit(activity, await db.activity(), made, "refund"),
        ],
    )


async def _yard_refunds(db: ScratchDb) -> int:
    conn = await db.connect()
    try:
        return int(await conn.fetchval("SELECT count(*) FROM yard_refunds"))
    finally:
        await conn.close()


async def protocol_statuses(db: ScratchDb) -> Counter[str]:
    conn = await db.connect()
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM pyard_refunds GROUP BY status")
    finally:
        await conn.close()
    return Counter({r["status"]: r["n"] for r in rows})


async def protocol_phase(
    *,
    db: ScratchDb,
    children: Children,
    sandbox_url: str,
    script: Path,
    ids_file: Path,
    key: str,
    load: Load,
) -> Phase:
    """bench/protocol_yardstick.py under the same load, calling the same PSE."""
    yard, base = await start_uvicorn(
        children,
        "protocol-yardstick",
        "bench.protocol_yardstick:app",
        child_env(
            PROTOCOL_YARDSTICK_DSN=db.dsn,
            PROTOCOL_YARDSTICK_PSE_URL=sandbox_url,
            PROTOCOL_YARDSTICK_PSE_KEY=SANDBOX_KEY,
        ),
    )
    try:
        await db.tidy()
        before = await protocol_statuses(db)
        activity = await db.activity()
        result = await measure(
            PROTOCOL_LABEL,
            f"{base}/refund",
            script,
            [str(ids_file), key],
            load,
            db_name=db.name,
            settle=db.analyze,
        )
        drained, after = await wait_drained(lambda: protocol_statuses(db))
        if yard.proc.returncode is not None:
            raise BenchError(f"{PROTOCOL_LABEL} died:\n{yard.log_tail()}")
    finally:
        await children.stop(yard)
    created = sum(after.values()) - sum(before.values())
    return Phase(
        PROTOCOL_LABEL,
        result,
        [
            submissions_note(created, drained, after),
            per_unit(activity, await db.activity(), created, "refund (request + submission)"),
        ],
    )


def per_unit(before: Counter[str], after: Counter[str], units: int, what: str) -> str:
    """Database work per unit: read once the server's backends have exited (their
    counters are flushed then), so it includes every transaction of the phase."""
    if units <= 0:
        return f"database work per {what}: (none made)"
    d = {k: (after[k] - before[k]) / units for k in after}
    return (
        f"database work per {what}: {d['xact_commit']:.1f} commits, "
        f"{d['xact_rollback']:.1f} rollbacks, {d['tup_inserted']:.1f} rows inserted, "
        f"{d['tup_updated']:.1f} updated, {d['tup_fetched']:.1f} fetched"
    )


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(phases: list[Phase], load: Load, payments: int, setup: str = "") -> str:
    lines = [
        "",
        f"refund creation: wrk {load.threads} threads, {load.connections} connections, "
        f"{load.duration:.0f} s per run (after {load.warmup:.0f} s of warm-up), "
        f"{payments:,} payments, {os.cpu_count()} CPUs shared by wrk, PostgreSQL and the servers"
        + (f"; {setup}" if setup else ""),
        f"  {'':<22}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'requests':>11}"
        f"{'non-2xx':>9}",
    ]
    for phase in phases:
        r = phase.result
        lines.append(
            f"  {phase.label:<22}{r.rps:>10,.1f}{r.p50_ms:>9.1f}{r.percentiles_ms.get(90, 0):>9.1f}"
            f"{r.p99_ms:>9.1f}{r.requests:>11,}{r.failures:>9,}"
        )
    by_label = {p.label: p.result for p in phases}
    yard = by_label.get(YARDSTICK_LABEL)
    protocol = by_label.get(PROTOCOL_LABEL)
    services = [p for p in phases if p.label.startswith("service")]
    lines.append("")
    for phase in services:
        r = phase.result
        if protocol is not None:
            ratio = r.rps / protocol.rps
            lines.append(
                f"  {phase.label} / same-protocol yardstick: {ratio:.2f} x "
                f"(above 1 x it beats the least code doing the same work): "
                + ("beats it" if ratio > 1 else "does not beat it")
            )
        if yard is not None:
            ratio = r.rps / yard.rps
            lines.append(
                f"  {phase.label} / one-transaction yardstick: {ratio:.2f} x "
                f"(target >= {TARGET_RATIO:.1f} x) {_verdict(ratio >= TARGET_RATIO)}"
            )
        lines.append(
            f"  {phase.label} p99: {r.p99_ms:.1f} ms "
            f"(target <= {TARGET_P99_MS:.0f} ms) {_verdict(r.p99_ms <= TARGET_P99_MS)}"
        )
    if protocol is not None and yard is not None:
        lines.append(
            f"  same-protocol / one-transaction yardstick: {protocol.rps / yard.rps:.2f} x "
            "(what the protocol's work costs by itself)"
        )
    on, off = by_label.get("service (audit on)"), by_label.get("service (audit off)")
    if on is not None and off is not None:
        overhead = 1 - on.rps / off.rps
        lines.append(
            f"  audit overhead: 1 - on/off = {overhead:.1%} "
            f"(target <= {TARGET_AUDIT_OVERHEAD:.0%}) {_verdict(overhead <= TARGET_AUDIT_OVERHEAD)}"
        )
    for phase in phases:
        if phase.result.machine is not None:
            lines.append(f"  {phase.label}: {phase.result.machine.describe()}")
        for note in phase.notes:
            lines.append(f"  {phase.label}: {note}")
    return "\n".join(lines)


def audit_variants(choice: str, only: str | None) -> list[tuple[str, bool | None]]:
    """(label, audit_enabled to write) for each service run."""
    if only not in (None, "service"):
        return []
    exists = audit_setting_exists()
    wanted = {"on": [True], "off": [False], "both": [True, False]}[choice]
    if not exists:
        if choice == "off":
            raise BenchError(
                "--audit off: this build has no `audit_enabled` setting (app/config.py)"
            )
        if choice == "both":
            print(
                "note: this build has no `audit_enabled` setting: measuring audit on only",
                file=sys.stderr,
            )
        return [("service (audit on)", None)]
    return [(f"service (audit {'on' if a else 'off'})", a) for a in wanted]


async def run(args: argparse.Namespace) -> None:
    load = Load(args.duration, args.warmup, args.connections, args.threads)
    variants = audit_variants(args.audit, args.only)
    db = ScratchDb(args.dsn)
    workdir = Path(tempfile.mkdtemp(prefix="refunds-bench-"))
    children = Children(workdir)
    profile_dir: Path | None = args.profile
    phases: list[Phase] = []
    try:
        t0 = time.perf_counter()
        ready = await prepare(db, workdir, args.payments)
        script, ids_file, key = ready.script, ready.ids_file, ready.key
        print(
            f"scratch database {db.name} (PostgreSQL {ready.pg_version}): {args.payments:,} "
            f"payments of JPY {PAYMENT_AMOUNT:,}, store key created, "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        def measured(phase: Phase) -> None:
            phases.append(phase)
            print(
                f"  {phase.result.rps:,.1f} req/s, p50 {phase.result.p50_ms:.1f} ms, "
                f"p99 {phase.result.p99_ms:.1f} ms",
                flush=True,
            )

        with_protocol = args.only in (None, "protocol")
        sandbox_url = ""
        if variants or with_protocol:
            _pse, sandbox_url = await start_pse(children, args.pse)
        for label, audit in variants:
            print(f"running {label} ...", flush=True)
            measured(
                await service_phase(
                    label=label,
                    audit=audit,
                    db=db,
                    children=children,
                    workdir=workdir,
                    sandbox_url=sandbox_url,
                    script=script,
                    ids_file=ids_file,
                    key=key,
                    load=load,
                    profile_dir=profile_dir,
                    workers=args.workers,
                    daily_limit=args.daily_limit,
                )
            )
        if args.only in (None, "yardstick"):
            print(f"running {YARDSTICK_LABEL} ...", flush=True)
            measured(
                await yardstick_phase(
                    db=db, children=children, script=script, ids_file=ids_file, key=key, load=load
                )
            )
        if with_protocol:
            print(f"running {PROTOCOL_LABEL} ...", flush=True)
            measured(
                await protocol_phase(
                    db=db,
                    children=children,
                    sandbox_url=sandbox_url,
                    script=script,
                    ids_file=ids_file,
                    key=key,
                    load=load,
                )
            )
        setup = f"PSE: {args.pse}; service processes: {args.workers}"
        print(report(phases, load, args.payments, setup))
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
    parser.add_argument("--duration", type=float, default=15, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--payments", type=int, default=PAYMENTS)
    parser.add_argument("--audit", choices=["on", "off", "both"], default="both")
    parser.add_argument(
        "--daily-limit",
        type=int,
        metavar="MINOR",
        help="give the service a daily auto-approval limit in JPY (minor units): each "
        "auto-approved refund then locks its day's total (the yardsticks have none)",
    )
    parser.add_argument(
        "--only",
        choices=["service", "yardstick", "protocol"],
        default=None,
        help="measure one side: the service, the one-transaction yardstick, "
        "or the same-protocol yardstick",
    )
    parser.add_argument(
        "--pse",
        choices=["double", "sandbox"],
        default="double",
        help="the PSE the service calls: a double answering at once, or the sandbox",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="API processes of the service (serve --workers)"
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs")
    parser.add_argument(
        "--profile", metavar="DIR", help="record the service with py-spy; stacks go to DIR"
    )
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="an admin connection")
    args = parser.parse_args(argv)
    args.profile = Path(args.profile).resolve() if args.profile else None
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.duration < 1 or args.connections < 1 or args.threads < 1 or args.payments < 1:
        parser.error("--duration, --connections, --threads and --payments must be positive")
    if args.daily_limit is not None and args.daily_limit < 1:
        parser.error("--daily-limit must be positive (a limit of 0 auto-approves nothing)")
    return args


def main(
    entry: Callable[[argparse.Namespace], Any],
    parse: Callable[[], argparse.Namespace],
    name: str,
) -> None:
    """Run `entry`; SIGTERM and Ctrl-C still stop the children and drop the database."""
    args = parse()

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        # Also when started with SIGINT ignored (a background job of a script).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await entry(args)

    try:
        asyncio.run(guarded())
    except BenchError as exc:
        print(f"{name}: FAILED: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{name}: interrupted (subprocesses stopped, database dropped)", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main(run, arguments, "bench/refunds.py")
