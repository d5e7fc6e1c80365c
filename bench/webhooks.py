"""PSE webhook ingestion under load: signed `refund.succeeded` events.

Creates a scratch PostgreSQL database with `pending` refunds whose PSE ids are
known, starts the service (`pse-refunds serve`, worker disabled) with a
`sandbox` account and a webhook secret of our own, pre-signs one Standard
Webhooks event per refund (distinct event ids, timestamps of now: well inside
the five-minute tolerance) and has wrk POST them to `/v1/webhooks/sandbox`,
each exactly once, from a file read by its Lua script (64 connections,
2 threads). Prints events/s and p50/p99 (target >= 1,500 events/s), then
checks in the database that every event was stored once and applied once:
as many refunds `succeeded` as events stored, payments' counters consistent.

Then, in the same run, the same load (freshly signed events for the same
refunds) goes to the same-protocol yardstick (bench/webhook_yardstick.py:
verify the signature, store the raw event, lock and move the refund, history,
counters, outbox and audit in one transaction, in the least code, on its own
copy of the refunds), checked the same way, and the script prints
service / yardstick (target >= 0.8 x).

    .venv/bin/python bench/webhooks.py [--duration 15] [--connections 64]
        [--events 60000] [--workers N] [--keep-db] [--profile DIR]
    .venv/bin/python bench/webhooks.py --rounds 6 [--burst 5]

With `--rounds N` both are started at once and loaded in turns instead, a
`--burst` each per round, the first side alternating, each round's events
for refunds of their own: the median of the per-round ratios is the figure
with the machine's drift taken out.

Needs `wrk` (apt-get install wrk). Loopback only; the service is stopped and
the scratch database dropped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from standardwebhooks import Webhook  # noqa: E402

from app.sandbox.config import new_webhook_secret  # noqa: E402
from bench.refunds import (  # noqa: E402
    ACCOUNT,
    DEFAULT_ADMIN_DSN,
    LOOPBACK,
    BenchError,
    Child,
    Children,
    ScratchDb,
    WrkResult,
    check_failures,
    child_env,
    cli_command,
    free_port,
    main,
    per_unit,
    run_wrk,
    seed_payments,
    service_toml,
    start_profile,
    start_uvicorn,
    summarize_profile,
    wait_http,
)
from bench.webhook_yardstick import DDL as YARDSTICK_DDL  # noqa: E402
from bench.webhook_yardstick import SEED_FROM_SERVICE as YARDSTICK_SEED  # noqa: E402

TARGET_EVENTS_PER_SECOND = 1_500
TARGET_YARDSTICK_RATIO = 0.8
REFUND_AMOUNT = 1_000
# Events signed for each second of warm-up: more than a fast machine takes in one.
WARMUP_RATE = 3_000
FINAL = ("succeeded", "failed", "rejected", "canceled", "offline_paid")

# Each thread sends its share of the file (line i goes to thread i mod threads),
# each request once. Lines: <webhook-id> TAB <timestamp> TAB <signature> TAB <body>.
# Arguments after `--`: <requests file> <threads>.
WEBHOOKS_LUA = r"""
local threads = {}
local next_tid = 1

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   table.insert(threads, thread)
end

statuses = {}
sample = nil
sent = 0
applied = 0
exhausted = false
local requests = {}

function init(args)
   local count = tonumber(args[2])
   local i = 0
   for line in io.lines(args[1]) do
      if i % count == tid - 1 then
         local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
         requests[#requests + 1] = wrk.format("POST", nil, {
            ["Content-Type"] = "application/json",
            ["webhook-id"] = id,
            ["webhook-timestamp"] = ts,
            ["webhook-signature"] = sig,
         }, body)
      end
      i = i + 1
   end
end

function request()
   if sent >= #requests then
      -- Every event of this thread is sent: stop rather than repeat one.
      if not exhausted then
         exhausted = true
         wrk.thread:stop()
      end
      return wrk.format("GET", "/healthz")
   end
   sent = sent + 1
   return requests[sent]
end

function response(status, hdrs, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 200 and status <= 299 then
      if body ~= nil and string.find(body, '"status":%s*"applied"') then
         applied = applied + 1
      end
   elseif sample == nil then
      sample = status .. " " .. string.gsub(string.sub(body or "", 1, 600), "[\r\n]", " ")
   end
end

function done(summary, latency, requests)
   local merged = {}
   local total_sent, total_applied, ran_out = 0, 0, 0
   for _, thread in ipairs(threads) do
      for code, n in pairs(thread:get("statuses") or {}) do
         merged[code] = (merged[code] or 0) + n
      end
      local s = thread:get("sample")
      if s ~= nil then io.write("SAMPLE " .. s .. "\n") end
      total_sent = total_sent + (thread:get("sent") or 0)
      total_applied = total_applied + (thread:get("applied") or 0)
      if thread:get("exhausted") then ran_out = ran_out + 1 end
   end
   local parts = {}
   for code, n in pairs(merged) do parts[#parts + 1] = code .. "=" .. n end
   table.sort(parts)
   io.write("STATUSES " .. table.concat(parts, ",") .. "\n")
   io.write("EXTRA sent=" .. total_sent .. "\n")
   io.write("EXTRA applied=" .. total_applied .. "\n")
   io.write("EXTRA exhausted_threads=" .. ran_out .. "\n")
end
"""

REFUND_COLUMNS = [
    "id",
    "payment_id",
    "pse_account",
    "amount",
    "currency",
    "status",
    "reason",
    "note",
    "metadata",
    "required_approvals",
    "offline",
    "offline_reason",
    "auto_approved",
    "created_by",
    "pse_refund_id",
    "settlement_amount",
    "settlement_currency",
    "submit_attempts",
    "resolve_attempts",
    "next_check_at",
    "created_at",
    "updated_at",
]


def refund_id(kind: str, i: int) -> str:
    """`kind`: "bm" for the measured events, "bw" for the warm-up."""
    return f"rf_{kind}{i:09d}"


def pse_refund_id(kind: str, i: int) -> str:
    return f"sbre_{kind}{i:09d}"


async def seed(conn: asyncpg.Connection, payments: int, counts: dict[str, int]) -> list[str]:
    """Payments, then `counts[kind]` pending refunds of JPY 1,000 spread over them,
    each with the history of a refund the PSE accepted; the payments reserve
    their amounts. Returns each payment's PSE payment id, by position."""
    per_payment = [0] * payments
    for count in counts.values():
        for i in range(count):
            per_payment[i % payments] += 1
    seeded = await seed_payments(conn, payments, reserved=lambda i: per_payment[i] * REFUND_AMOUNT)
    now = datetime.now(UTC) - timedelta(minutes=5)
    for kind, count in counts.items():
        refunds = []
        history = []
        for i in range(count):
            rid = refund_id(kind, i)
            refunds.append(
                (
                    rid,
                    seeded[i % payments].id,
                    ACCOUNT,
                    REFUND_AMOUNT,
                    "JPY",
                    "pending",
                    "requested_by_customer",
                    None,
                    "{}",
                    "[]",
                    False,
                    None,
                    True,
                    "key_bench",
                    pse_refund_id(kind, i),
                    REFUND_AMOUNT,
                    "JPY",
                    1,
                    0,
                    now + timedelta(hours=1),
                    now,
                    now,
                )
            )
            history += [
                (rid, "approved", now, "key_bench", None),
                (rid, "submitting", now, "system", None),
                (rid, "pending", now, f"pse:{ACCOUNT}", None),
            ]
        await conn.copy_records_to_table("refunds", records=refunds, columns=REFUND_COLUMNS)
        await conn.copy_records_to_table(
            "refund_status_history",
            records=history,
            columns=["refund_id", "status", "at", "actor", "detail"],
        )
    await conn.execute("ANALYZE")
    return [p.pse_payment_id for p in seeded]


def event_nonce() -> str:
    """Letters only: a hex nonce ending in digits, joined by `_` to the
    event's nine-digit number, made a run of 13 digits and marks in about one
    run in four, which the service's redaction then searches for a card
    number (and the yardstick never does): runs of the same code differed by
    that alone."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))


def write_events(
    path: Path, secret: str, kind: str, count: int, payments: Sequence[str], nonce: str
) -> None:
    """One signed `refund.succeeded` per refund, timestamped now, one per line."""
    signer = Webhook(secret)
    now = datetime.now(UTC)
    stamp = now.isoformat().replace("+00:00", "Z")
    timestamp = str(int(now.timestamp()))
    with path.open("w") as out:
        for i in range(count):
            event_id = f"evt_{kind}_{nonce}_{i:09d}"
            body = json.dumps(
                {
                    "id": event_id,
                    "type": "refund.succeeded",
                    "created_at": stamp,
                    "data": {
                        "id": pse_refund_id(kind, i),
                        "object": "refund",
                        "payment_id": payments[i % len(payments)],
                        "amount": REFUND_AMOUNT,
                        "currency": "JPY",
                        "status": "succeeded",
                        "reference": refund_id(kind, i),
                        "reason": "requested_by_customer",
                        "metadata": {},
                        "failure_code": None,
                        "failure_message": None,
                        "created_at": stamp,
                        "updated_at": stamp,
                    },
                },
                separators=(",", ":"),
            )
            signature = signer.sign(msg_id=event_id, timestamp=now, data=body)
            out.write(f"{event_id}\t{timestamp}\t{signature}\t{body}\n")


async def verify(db: ScratchDb, kind: str, result: WrkResult) -> tuple[list[str], int]:
    """What the database says about the measured events, and how many were stored;
    a broken promise raises."""
    conn = await db.connect()
    try:
        statuses = {
            r["status"]: r["n"]
            for r in await conn.fetch(
                "SELECT status, count(*) AS n FROM refunds WHERE id LIKE $1 GROUP BY status",
                f"rf_{kind}%",
            )
        }
        stored = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_ids,"
            " count(*) FILTER (WHERE status = 'applied') AS applied"
            " FROM pse_webhook_events WHERE event_id LIKE $1",
            f"evt_{kind}_%",
        )
        twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT refund_id FROM refund_status_history"
            " WHERE status = 'succeeded' AND refund_id LIKE $1"
            " GROUP BY refund_id HAVING count(*) > 1) AS d",
            f"rf_{kind}%",
        )
        outbox = await conn.fetchval(
            "SELECT count(*) FROM events WHERE type = 'refund.succeeded' AND refund_id LIKE $1",
            f"rf_{kind}%",
        )
        counters_off = await conn.fetchval(
            """
            SELECT count(*) FROM payments p
            LEFT JOIN (
                SELECT payment_id,
                       sum(amount) FILTER (WHERE status IN ('succeeded', 'offline_paid')) AS done,
                       sum(amount) FILTER (WHERE status <> ALL($1::text[])) AS open
                FROM refunds GROUP BY payment_id
            ) r ON r.payment_id = p.id
            WHERE p.refunded_amount <> coalesce(r.done, 0)
               OR p.reserved_amount <> coalesce(r.open, 0)
            """,
            list(FINAL),
        )
    finally:
        await conn.close()
    succeeded = statuses.get("succeeded", 0)
    answered = sum(n for code, n in result.statuses.items() if 200 <= code <= 299)
    sent = int(result.extra.get("sent", "0"))
    lines = [
        f"refunds: {dict(sorted(statuses.items()))}",
        f"events: {sent:,} sent, {answered:,} answered 2xx "
        f"({int(result.extra.get('applied', '0')):,} of them 'applied'), "
        f"{stored['n']:,} stored ({stored['distinct_ids']:,} distinct ids, "
        f"{stored['applied']:,} applied)",
        f"refund.succeeded in the outbox: {outbox:,}; refunds succeeded twice: {twice}; "
        f"payments with counters off: {counters_off}",
    ]
    problems = []
    if stored["n"] != stored["distinct_ids"]:
        problems.append("an event was stored more than once")
    if not answered <= stored["n"] <= sent:
        # Requests in flight when wrk stops may still be stored: between the two.
        problems.append(f"stored {stored['n']} is not between answered {answered} and sent {sent}")
    if not succeeded == stored["applied"] == stored["n"]:
        problems.append(
            f"{stored['n']} events stored, {stored['applied']} applied, {succeeded} succeeded"
        )
    if outbox != succeeded:
        problems.append(f"{outbox} refund.succeeded events for {succeeded} succeeded refunds")
    if twice:
        problems.append(f"{twice} refunds went to succeeded twice")
    if counters_off:
        problems.append(f"{counters_off} payments' refunded/reserved amounts are off")
    if problems:
        raise BenchError(
            "verification failed: " + "; ".join(problems) + "\n  " + "\n  ".join(lines)
        )
    return lines, int(stored["n"])


@dataclass(frozen=True)
class EventLoad:
    """What the service's run and the yardstick's share."""

    args: argparse.Namespace
    db: ScratchDb
    workdir: Path
    script: Path
    secret: str
    payments: Sequence[str]
    warmup_events: int


async def load_events(
    load: EventLoad,
    *,
    label: str,
    url: str,
    profile_pid: int | None = None,
    profile_out: Path | None = None,
) -> tuple[WrkResult, Counter[str], asyncio.Task[None] | None]:
    """The warm-up events (`bw`), then the measured ones (`bm`), each signed just
    before its run and sent once. Returns wrk's result, the database counters
    from before the measured run, and the profile being recorded, if any."""
    args, db, workdir, script = load.args, load.db, load.workdir, load.script
    secret, payments, warmup_events = load.secret, load.payments, load.warmup_events
    threads = min(args.threads, args.connections)
    nonce = event_nonce()
    slug = label.replace(" ", "-")
    if warmup_events:
        warm_file = workdir / f"{slug}-warmup.tsv"
        write_events(warm_file, secret, "bw", warmup_events, payments, nonce)
        warm = await run_wrk(
            f"{label} warm-up",
            url,
            script,
            [str(warm_file), str(threads)],
            duration=args.warmup,
            connections=args.connections,
            threads=threads,
        )
        check_failures(warm)
    await db.tidy()
    activity = await db.activity()
    events_file = workdir / f"{slug}-events.tsv"
    t1 = time.perf_counter()
    write_events(events_file, secret, "bm", args.events, payments, nonce)
    print(
        f"signed {args.events:,} events in {time.perf_counter() - t1:.1f} s; loading {url} ...",
        flush=True,
    )
    profile = None
    if profile_pid is not None and profile_out is not None:
        profile = start_profile(profile_pid, args.duration, profile_out)
    result = await run_wrk(
        label,
        url,
        script,
        [str(events_file), str(threads)],
        duration=args.duration,
        connections=args.connections,
        threads=threads,
        db_name=db.name,
    )
    check_failures(result)
    if int(result.extra.get("exhausted_threads", "0")):
        raise BenchError(
            f"{label}: the {args.events:,} events ran out before the {args.duration:.0f} s "
            "were over: the rate is understated; raise --events"
        )
    events_file.unlink(missing_ok=True)
    return result, activity, profile


async def verify_yardstick(db: ScratchDb, kind: str, result: WrkResult) -> tuple[list[str], int]:
    """The yardstick's own tables after its run: every event stored once, applied
    once, and its refund moved once."""
    conn = await db.connect()
    try:
        stored = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_ids,"
            " count(*) FILTER (WHERE status = 'applied') AS applied"
            " FROM wyard_events WHERE event_id LIKE $1",
            f"evt_{kind}_%",
        )
        succeeded = await conn.fetchval(
            "SELECT count(*) FROM wyard_refunds WHERE status = 'succeeded' AND id LIKE $1",
            f"rf_{kind}%",
        )
        outbox = await conn.fetchval(
            "SELECT count(*) FROM wyard_outbox WHERE type = 'refund.succeeded'"
            " AND refund_id LIKE $1",
            f"rf_{kind}%",
        )
    finally:
        await conn.close()
    answered = sum(n for code, n in result.statuses.items() if 200 <= code <= 299)
    sent = int(result.extra.get("sent", "0"))
    lines = [
        f"events: {sent:,} sent, {answered:,} answered 2xx "
        f"({int(result.extra.get('applied', '0')):,} of them 'applied'), "
        f"{stored['n']:,} stored ({stored['distinct_ids']:,} distinct ids, "
        f"{stored['applied']:,} applied); refunds succeeded {succeeded:,}, "
        f"refund.succeeded in the outbox {outbox:,}",
    ]
    if not (
        stored["n"] == stored["distinct_ids"] == stored["applied"] == succeeded == outbox
        and answered <= stored["n"] <= sent
    ):
        raise BenchError("yardstick verification failed:\n  " + "\n  ".join(lines))
    return lines, int(stored["n"])


async def measured(
    loads: EventLoad,
    children: Children,
    child: Child,
    *,
    label: str,
    url: str,
    profile_out: Path | None,
    verify_side: Callable[[ScratchDb, str, WrkResult], Awaitable[tuple[list[str], int]]],
) -> tuple[WrkResult, list[str], tuple[asyncio.Task[None] | None, Path | None]]:
    """One side's measured load, its checks (with the database work per event,
    read once its process has stopped) and the profile being recorded."""
    result, activity, profile = await load_events(
        loads, label=label, url=url, profile_pid=child.pid, profile_out=profile_out
    )
    if child.proc.returncode is not None:
        raise BenchError(f"{label}: the server died:\n{child.log_tail()}")
    await asyncio.sleep(1)  # requests cut off by wrk's stop finish meanwhile
    checks, stored = await verify_side(loads.db, "bm", result)
    await children.stop(child)  # its backends exit: their counters are complete
    checks.append(per_unit(activity, await loads.db.activity(), stored, "event"))
    return result, checks, (profile, profile_out)


async def prepare(
    args: argparse.Namespace, db: ScratchDb, workdir: Path, counts: dict[str, int]
) -> tuple[Sequence[str], str, Path, Path]:
    """The scratch database seeded with `counts` pending refunds per kind (and
    the yardstick's copy), a webhook secret, the service's configuration and
    wrk's script: the payments' PSE ids, the secret, the config, the script."""
    t0 = time.perf_counter()
    await db.create()
    conn = await db.connect()
    try:
        payments = await seed(conn, args.payments, counts)
        await conn.execute(YARDSTICK_DDL)
        await conn.execute(YARDSTICK_SEED)
    finally:
        await conn.close()
    print(
        f"scratch database {db.name}: {args.payments:,} payments, "
        f"{sum(counts.values()):,} pending refunds (and the yardstick's copy), "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    secret = new_webhook_secret()
    config = workdir / "service.toml"
    # Nothing is sent to the PSE here: its address is the discard port.
    config.write_text(service_toml(db.url, "http://127.0.0.1:9", webhook_secret=secret))
    script = workdir / "webhooks.lua"
    script.write_text(WEBHOOKS_LUA)
    return payments, secret, config, script


async def run(args: argparse.Namespace) -> None:
    db = ScratchDb(args.dsn)
    workdir = Path(tempfile.mkdtemp(prefix="webhooks-bench-"))
    children = Children(workdir)
    warmup_events = int(args.warmup * WARMUP_RATE) if args.warmup > 0 else 0
    try:
        counts = {"bw": warmup_events, "bm": args.events}
        payments, secret, config, script = await prepare(args, db, workdir, counts)
        threads = min(args.threads, args.connections)
        loads = EventLoad(args, db, workdir, script, secret, payments, warmup_events)

        port = free_port()
        argv = [*cli_command(), "serve", "--host", LOOPBACK, "--port", str(port)]
        if args.workers > 1:
            argv += ["--workers", str(args.workers)]
        service = await children.start("service", argv, child_env(config))
        base = f"http://{LOOPBACK}:{port}"
        await wait_http(f"{base}/readyz", service)
        result, checks, profile = await measured(
            loads,
            children,
            service,
            label="webhooks",
            url=f"{base}/v1/webhooks/{ACCOUNT}",
            profile_out=args.profile / "service-webhooks.txt" if args.profile else None,
            verify_side=verify,
        )

        print("running the webhook yardstick ...", flush=True)
        yard, yard_base = await start_uvicorn(
            children,
            "webhook-yardstick",
            "bench.webhook_yardstick:app",
            child_env(WEBHOOK_YARDSTICK_DSN=db.dsn, WEBHOOK_YARDSTICK_SECRET=secret),
        )
        yard_result, yard_checks, yard_profile = await measured(
            loads,
            children,
            yard,
            label="webhook yardstick",
            url=f"{yard_base}/webhooks/{ACCOUNT}",
            profile_out=args.profile / "yardstick-webhooks.txt" if args.profile else None,
            verify_side=verify_yardstick,
        )

        ok = result.rps >= TARGET_EVENTS_PER_SECOND
        ratio = result.rps / yard_result.rps
        print(
            f"\nwebhook ingestion (wrk, {threads} threads, {args.connections} connections, "
            f"{args.duration:.0f} s after {args.warmup:.0f} s of warm-up; "
            f"each request a distinct signed refund.succeeded event; "
            f"service processes: {args.workers}; then the same load on the yardstick)"
        )
        for name, r in (("service", result), ("yardstick", yard_result)):
            print(
                f"  {name:<10} events/s {r.rps:>8,.1f}   p50 {r.p50_ms:.1f} ms   "
                f"p90 {r.percentiles_ms.get(90, 0):.1f} ms   p99 {r.p99_ms:.1f} ms   "
                f"events {r.requests:,}   non-2xx {r.failures:,}"
            )
        print(
            f"  target >= {TARGET_EVENTS_PER_SECOND:,} events/s: {'ok' if ok else 'MISSED'} "
            f"({result.rps / TARGET_EVENTS_PER_SECOND:.2f} x)"
        )
        print(
            f"  service / yardstick: {ratio:.2f} x (target >= {TARGET_YARDSTICK_RATIO:.1f} x) "
            f"{'ok' if ratio >= TARGET_YARDSTICK_RATIO else 'MISSED'}"
        )
        for line in checks:
            print(f"  service: {line}")
        if result.machine is not None:
            print(f"  service: {result.machine.describe()}")
        for line in yard_checks:
            print(f"  yardstick: {line}")
        if yard_result.machine is not None:
            print(f"  yardstick: {yard_result.machine.describe()}")
        for recording, out in (profile, yard_profile):
            if recording is not None and out is not None:
                await recording
                print("  " + summarize_profile(out))
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


def round_kind(i: int) -> str:
    """The refunds (and events) of round `i` of `--rounds`: `r00`, `r01`…"""
    return f"r{i:02d}"


async def run_rounds(args: argparse.Namespace) -> None:
    """`--rounds N`: the service and the yardstick started at once, then loaded
    in turns, a `--burst` of wrk each per round, the first side alternating;
    each round's events are for refunds of their own (both sides have their
    own copy of them). A drift of the machine's speed hits both alike."""
    db = ScratchDb(args.dsn)
    workdir = Path(tempfile.mkdtemp(prefix="webhooks-rounds-"))
    children = Children(workdir)
    warmup_events = int(args.warmup * WARMUP_RATE) if args.warmup > 0 else 0
    per_round = args.events // args.rounds
    kinds = [round_kind(i) for i in range(args.rounds)]
    try:
        counts = {"bw": warmup_events} | dict.fromkeys(kinds, per_round)
        payments, secret, config, script = await prepare(args, db, workdir, counts)
        threads = min(args.threads, args.connections)
        port = free_port()
        service = await children.start(
            "service",
            [*cli_command(), "serve", "--host", LOOPBACK, "--port", str(port)],
            child_env(config),
        )
        await wait_http(f"http://{LOOPBACK}:{port}/readyz", service)
        yard, yard_base = await start_uvicorn(
            children,
            "webhook-yardstick",
            "bench.webhook_yardstick:app",
            child_env(WEBHOOK_YARDSTICK_DSN=db.dsn, WEBHOOK_YARDSTICK_SECRET=secret),
        )
        sides = {
            "service": (service, f"http://{LOOPBACK}:{port}/v1/webhooks/{ACCOUNT}"),
            "yardstick": (yard, f"{yard_base}/webhooks/{ACCOUNT}"),
        }

        async def burst(side: str, kind: str, count: int, seconds: float) -> WrkResult:
            child, url = sides[side]
            events_file = workdir / f"{side}-{kind}.tsv"
            write_events(events_file, secret, kind, count, payments, event_nonce())
            result = await run_wrk(
                f"{side} {kind}",
                url,
                script,
                [str(events_file), str(threads)],
                duration=seconds,
                connections=args.connections,
                threads=threads,
            )
            events_file.unlink(missing_ok=True)
            check_failures(result)
            if child.proc.returncode is not None:
                raise BenchError(f"{side}: the server died:\n{child.log_tail()}")
            if int(result.extra.get("exhausted_threads", "0")):
                raise BenchError(
                    f"{side}: the {count:,} events of {kind} ran out within the burst: "
                    "raise --events"
                )
            return result

        if warmup_events:
            for side in sides:
                await burst(side, "bw", warmup_events, args.warmup)
        await db.tidy()
        results: dict[str, dict[str, WrkResult]] = {side: {} for side in sides}
        rates: dict[str, list[float]] = {side: [] for side in sides}
        for i, kind in enumerate(kinds):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for side in order:
                results[side][kind] = await burst(side, kind, per_round, args.burst)
                rates[side].append(results[side][kind].rps)
                await asyncio.sleep(1)  # requests cut off by wrk's stop finish meanwhile
            print(
                f"round {i + 1}: service {rates['service'][-1]:.1f}, "
                f"yardstick {rates['yardstick'][-1]:.1f} events/s",
                flush=True,
            )
        for kind in kinds:
            # Raises on a broken promise: an event stored twice, applied twice, lost.
            await verify(db, kind, results["service"][kind])
            await verify_yardstick(db, kind, results["yardstick"][kind])
        ratios = [a / b for a, b in zip(rates["service"], rates["yardstick"], strict=True)]
        ratio = statistics.median(ratios)
        print(
            f"\nwebhook ingestion, {args.rounds} rounds of {args.burst:g} s per side "
            f"({args.connections} connections, each request a distinct signed "
            "refund.succeeded event), events/s median (min-max):"
        )
        for side, values in rates.items():
            print(
                f"  {side:>9}: {statistics.median(values):7.1f} "
                f"({min(values):.1f}-{max(values):.1f})"
            )
        print(
            f"  service / yardstick, per round: median {ratio:.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}) (target >= {TARGET_YARDSTICK_RATIO:.1f} x) "
            f"{'ok' if ratio >= TARGET_YARDSTICK_RATIO else 'MISSED'}"
        )
        print(
            f"  every event of the {args.rounds} rounds stored once and applied once, on both sides"
        )
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
    parser.add_argument("--duration", type=float, default=15, help="seconds of measured load")
    parser.add_argument(
        "--warmup",
        type=float,
        default=3,
        help=f"seconds of warm-up ({WARMUP_RATE:,} events a second signed for it)",
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--events", type=int, default=60_000, help="events (and pending refunds) to send"
    )
    parser.add_argument("--payments", type=int, default=1_000)
    parser.add_argument(
        "--workers", type=int, default=1, help="API processes of the service (serve --workers)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="interleave: both sides started at once, loaded in turns for N rounds "
        "(--events split among them); 0: the service, then the yardstick",
    )
    parser.add_argument(
        "--burst", type=float, default=5.0, help="seconds of load per side and round (--rounds)"
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    parser.add_argument("--keep-logs", action="store_true", help="keep the service's log")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record the service and the yardstick with py-spy; stacks go to DIR",
    )
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="an admin connection")
    args = parser.parse_args(argv)
    if min(args.duration, args.connections, args.threads, args.events, args.payments) < 1:
        parser.error("--duration, --connections, --threads, --events, --payments must be >= 1")
    if args.rounds < 0 or (args.rounds and args.burst < 1):
        parser.error("--rounds must be >= 0, and --burst >= 1 with it")
    if args.rounds and (args.profile or args.workers > 1):
        parser.error("--rounds measures one process per side, without --profile")
    args.profile = Path(args.profile).resolve() if args.profile else None
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    return args


async def run_selected(args: argparse.Namespace) -> None:
    await (run_rounds(args) if args.rounds else run(args))


if __name__ == "__main__":
    main(run_selected, arguments, "bench/webhooks.py")
