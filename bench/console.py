"""Console pages: server time of every page on demo-like data (target: p95 < 200 ms).

Creates a scratch PostgreSQL database migrated to head and seeds it through
the services, with the demo's settings (a `sandbox` account, the demo's
approval tiers, one key per demo role): 500 payments and about 2,000 refunds
requested over the last 30 days, a quarter of them today. Auto-approved
refunds go to an in-process PSE double (through the real sandbox adapter, so
the PSE calls are in the audit trail) that settles them, leaves them pending
or fails them; some stay `approved` or get canceled; those above the tiers
wait in `pending_approval` (some half approved) or are approved, rejected or
canceled; refunds of payments captured 200+ days ago are `offline_required`
(some paid out offline); some pending ones are settled by signed PSE
webhooks, a few are flagged for attention by a look-up that finds nothing,
and a completed reconciliation run of a few hundred lines ends it.

Then it serves the real app in-process (`create_app(build_container(...))`,
its lifespan entered, through `httpx.ASGITransport`), signs in through the
login form as an approver (demo `approver-1`, level 1) and as `ops`, and
requests each console page, a refund's page, a reconciliation's page and the
CSV export of all refunds `--repeat` times each, one request at a time, round
robin. Server time is the wall time of the in-process request (the whole
body read, no socket); a `Server-Timing` header is read as well when the app
sends one. Pages still being built answer a placeholder (flagged as such) or
404 (no verdict). A second table times the `ConsoleQueries` calls those
pages read through, without HTTP, so a slow page can be traced to its query.

    .venv/bin/python bench/console.py [--repeat 30] [--keep-db]
        [--export-path /console/refunds/export.csv]
        [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

The scratch database is dropped at the end, also on errors and Ctrl-C
(`--keep-db` keeps it). Everything runs in this one process on this machine,
PostgreSQL included: figures are comparable within one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The service's settings are the ones below, never a config file or the
# environment of whoever runs this.
for _name in [n for n in os.environ if n.startswith("PSE_REFUNDS_")]:
    del os.environ[_name]
_EMPTY_CONFIG = tempfile.NamedTemporaryFile(prefix="console-bench-", suffix=".toml", delete=True)
os.environ["PSE_REFUNDS_CONFIG_FILE"] = _EMPTY_CONFIG.name

from standardwebhooks import Webhook  # noqa: E402

from app.api.app import create_app  # noqa: E402
from app.bootstrap import Container, build_container  # noqa: E402
from app.cli.demo import DEMO_KEY_PREFIX, DEMO_ROLES, DEMO_SANDBOX_KEY  # noqa: E402
from app.config import Settings, load_settings  # noqa: E402
from app.domain.models import (  # noqa: E402
    Actor,
    Approver,
    Refund,
    RefundReason,
    RefundStatus,
    RiskLevel,
)
from app.domain.ports import Clock  # noqa: E402
from app.domain.records import ApiKey  # noqa: E402
from app.logs import configure_logging  # noqa: E402
from app.sandbox.config import new_webhook_secret  # noqa: E402
from app.services.console_results import AttentionQueue, RefundSearch  # noqa: E402
from app.services.payments import RegisterPayment  # noqa: E402
from app.services.refunds import RequestRefund  # noqa: E402
from bench.refunds import DEFAULT_ADMIN_DSN, BenchError, CpuWatch, ScratchDb, main  # noqa: E402

TARGET_MS = 200.0
ACCOUNT = "sandbox"
PSE_BASE = "http://pse.bench/sandbox"
BASE_URL = "http://console.bench"
PAYMENTS = 500
OLD_PAYMENTS = 50  # captured 200+ days ago: their refunds must be paid offline
REFUNDS = 2_000
DAYS = 30
TODAY_SHARE = 0.25
CONCURRENCY = 8
WARMUP_ROUNDS = 2
APPROVER = "approver-1"
OPS = "ops"
# Where the export might live while the refunds page is being built; the
# page's own link wins when it has one (`--export-path` overrides both).
EXPORT_CANDIDATES = (
    "/console/refunds/export.csv",
    "/console/refunds.csv",
    "/console/refunds/export",
    "/console/refunds?format=csv",
)
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_HREF = re.compile(r'href="([^"]+)"')


# ---------------------------------------------------------------------------
# A clock each seeding task sets for itself
# ---------------------------------------------------------------------------

# (the moment it says, perf_counter when set): a task seeding something that
# happened 12 days ago sees that time, moving on at the real pace; tasks it
# starts inherit it. Anything else (the measured requests) sees the real time.
_AT: ContextVar[tuple[datetime, float] | None] = ContextVar("bench_at", default=None)


class SeedClock(Clock):
    def now(self) -> datetime:
        at = _AT.get()
        if at is None:
            return datetime.now(UTC)
        return at[0] + timedelta(seconds=time.perf_counter() - at[1])


def at(moment: datetime) -> None:
    """From here on, in this task, the clock says `moment`."""
    _AT.set((moment, time.perf_counter()))


# ---------------------------------------------------------------------------
# The PSE: the sandbox's API answered in-process
# ---------------------------------------------------------------------------


class PseDouble:
    """The sandbox PSE's refund API, answered at once through an
    `httpx.MockTransport`: the real sandbox adapter and the auditing transport
    run as in the demo. The outcome of a create is what the refund's metadata
    `bench` asks for; look-ups of `hidden` ids find nothing."""

    def __init__(self) -> None:
        self.refunds: dict[str, dict[str, Any]] = {}
        self.by_key: dict[str, tuple[int, dict[str, Any]]] = {}
        self.hidden: set[str] = set()
        self.ids = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/sandbox")
        if request.method == "POST" and path == "/v1/refunds":
            key = request.headers.get("idempotency-key", "")
            if key in self.by_key:
                status, body = self.by_key[key]
                return httpx.Response(status, json=body)
            sent = json.loads(request.content)
            outcome = (sent.get("metadata") or {}).get("bench", "succeeded")
            if outcome == "failed":
                status, body = 400, {"error": {"code": "amount_too_large", "message": "too large"}}
            elif outcome == "unknown":
                status, body = (
                    409,
                    {"error": {"code": "idempotency_in_progress", "message": "try later"}},
                )
            else:
                self.ids += 1
                body = {
                    "id": f"sbre_bench_{self.ids:06d}",
                    "object": "refund",
                    "status": "succeeded" if outcome == "succeeded" else "pending",
                    "amount": sent["amount"],
                    "currency": sent["currency"],
                    "payment_id": sent.get("payment_id"),
                    "reference": sent.get("reference"),
                }
                status = 200
                self.refunds[body["id"]] = body
            self.by_key[key] = (status, body)
            return httpx.Response(status, json=body)
        if request.method == "GET" and path.startswith("/v1/refunds/"):
            found = self.refunds.get(path.rsplit("/", 1)[1])
            if found is None or found["id"] in self.hidden:
                return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
            return httpx.Response(200, json=found)
        if request.method == "GET" and path == "/v1/refunds":
            reference = request.url.params.get("reference")
            data = [
                r
                for r in self.refunds.values()
                if r["reference"] == reference and r["id"] not in self.hidden
            ]
            return httpx.Response(200, json={"object": "list", "data": data})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})

    def settle(self, pse_refund_id: str) -> dict[str, Any]:
        refund = self.refunds[pse_refund_id]
        refund["status"] = "succeeded"
        return refund


# ---------------------------------------------------------------------------
# Seeding, through the services
# ---------------------------------------------------------------------------


def bench_settings(db_url: str, webhook_secret: str) -> Settings:
    """The demo's settings (app/cli/demo.py), on the scratch database: the
    sandbox account, its tiers; the worker off; quiet logs."""
    return load_settings(
        database_url=db_url,
        log_format="json",
        log_level="warning",
        worker={"enabled": False},
        accounts={
            ACCOUNT: {
                "provider": "sandbox",
                "api_key": DEMO_SANDBOX_KEY,
                "webhook_secrets": [webhook_secret],
                "base_url": PSE_BASE,
                "timeout_seconds": 5,
                "max_attempts": 3,
            }
        },
        policy={
            "approval_tiers": [
                {"currency": "JPY", "above": 10000, "approvals": 1, "min_level": 1},
                {"currency": "JPY", "above": 100000, "approvals": 2, "min_level": 2},
                {"currency": "USD", "above": 10000, "approvals": 1, "min_level": 1},
                {"currency": "USD", "above": 100000, "approvals": 2, "min_level": 2},
            ]
        },
    )


class _Hold:
    """The submission queue while seeding: each chain submits its own refunds."""

    sends_at_once = False

    def submit_soon(self, refund_id: str) -> None:
        return None

    def send_soon(self, payment: object, refund: object) -> None:
        return None


@dataclass
class Keys:
    keys: dict[str, ApiKey]
    secrets: dict[str, str]

    def actor(self, name: str) -> Actor:
        key = self.keys[name]
        return Actor(key.id, key.name)

    def approver(self, name: str) -> Approver:
        key = self.keys[name]
        level = key.effective_approval_level
        assert level is not None
        return Approver(Actor(key.id, key.name), level)


@dataclass
class PaymentPlan:
    index: int
    currency: str
    captured_at: datetime
    risk: RiskLevel
    method: str
    amount: int = 0
    id: str = ""


@dataclass
class RefundPlan:
    payment: PaymentPlan
    amount: int
    created_at: datetime
    band: str  # auto | tier1 | tier2 (by amount against the tiers)
    outcome: str  # what the PSE does with it: succeeded | pending | failed | unknown
    fate: str  # what happens next


@dataclass
class Seeded:
    actions: Counter[str] = field(default_factory=Counter)  # service calls made
    rich_refund: str = ""  # the refund page measured: approved, sent, settled by a webhook
    rich_steps: int = 0
    reconciliation_id: str = ""
    reconciliation_counts: dict[str, int] = field(default_factory=dict)
    reconciliation_rows: int = 0
    seconds: float = 0.0


def _amount(rng: random.Random, band: str, currency: str) -> int:
    if currency == "USD":  # cents
        return {
            "auto": rng.randrange(500, 10_001, 100),
            "tier1": rng.randrange(10_100, 60_001, 100),
            "tier2": rng.randrange(100_100, 150_001, 100),
        }[band]
    return {
        "auto": rng.randrange(500, 10_001, 100),
        "tier1": rng.randrange(10_100, 100_001, 100),
        "tier2": rng.randrange(100_100, 300_001, 100),
    }[band]


def plan(rng: random.Random, now: datetime) -> tuple[list[PaymentPlan], list[RefundPlan]]:
    """Who pays what, and what becomes of each refund, oldest first."""
    payments = []
    for i in range(PAYMENTS):
        past_window = i >= PAYMENTS - OLD_PAYMENTS
        captured = now - timedelta(
            days=rng.uniform(200, 300) if past_window else rng.uniform(DAYS + 1, DAYS + 25)
        )
        payments.append(
            PaymentPlan(
                index=i,
                currency="USD" if rng.random() < 0.06 else "JPY",
                captured_at=captured,
                risk=RiskLevel.HIGH if rng.random() < 0.04 else RiskLevel.NORMAL,
                method=rng.choice(("card", "card", "card", "paypay", "apple_pay")),
            )
        )
    recent, old = payments[: PAYMENTS - OLD_PAYMENTS], payments[PAYMENTS - OLD_PAYMENTS :]
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today_from = midnight if now - midnight >= timedelta(hours=2) else now - timedelta(hours=20)
    refunds = []
    for _ in range(REFUNDS):
        if rng.random() < TODAY_SHARE:
            created = today_from + (now - timedelta(minutes=10) - today_from) * rng.random()
        else:
            created = (
                now
                - timedelta(days=DAYS)
                + (today_from - (now - timedelta(days=DAYS))) * (rng.random())
            )
        is_old = rng.random() < 0.05
        payment = rng.choice(old if is_old else recent)
        roll = rng.random()
        band = "auto" if roll < 0.78 else "tier1" if roll < 0.94 else "tier2"
        if is_old and rng.random() < 0.85:
            band = "auto"
        outcome = rng.choices(
            ("succeeded", "pending", "failed", "unknown"), weights=(64, 27, 5, 4)
        )[0]
        if band == "auto":
            fate = rng.choices(
                ("submit", "hold", "cancel", "webhook", "flag"), weights=(80, 2.5, 2, 15, 0.8)
            )[0]
        else:
            fate = rng.choices(
                ("wait", "half", "approve", "reject", "cancel"), weights=(36, 10, 36, 14, 4)
            )[0]
            if band == "tier1" and fate == "half":
                fate = "wait"
        if fate in ("webhook", "flag"):
            outcome = "pending"
        refunds.append(
            RefundPlan(payment, _amount(rng, band, payment.currency), created, band, outcome, fate)
        )
    refunds.sort(key=lambda r: r.created_at)
    for payment in payments:
        mine = sum(r.amount for r in refunds if r.payment is payment)
        payment.amount = max(mine + rng.randrange(0, 50_000, 100), 5_000)
    return payments, refunds


class Seeder:
    def __init__(
        self,
        container: Container,
        double: PseDouble,
        keys: Keys,
        webhook_secret: str,
        rng: random.Random,
    ) -> None:
        self.c = container
        self.double = double
        self.keys = keys
        self.webhook = Webhook(webhook_secret)
        self.rng = rng
        self.now = datetime.now(UTC)
        self.seeded = Seeded()
        self.webhooked: list[str] = []  # refunds settled by a webhook after an approval

    async def run(self) -> Seeded:
        started = time.perf_counter()
        payments, refunds = plan(self.rng, self.now)
        queue, self.c.deps.queue = self.c.deps.queue, _Hold()
        try:
            await self._register(payments)
            await self._refunds(refunds)
            await self._reconcile()
        finally:
            self.c.deps.queue = queue
        await self.c.audit.flush()
        self.seeded.seconds = time.perf_counter() - started
        return self.seeded

    async def _gather(self, jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(job: Callable[[], Awaitable[None]]) -> None:
            async with gate:
                await job()

        # Each job runs in a task of its own, so the time it sets is its own.
        await asyncio.gather(*(one(job) for job in jobs))

    async def _register(self, payments: list[PaymentPlan]) -> None:
        store = self.keys.keys["store"]
        registered_at = self.now - timedelta(days=DAYS, hours=1)

        def job(p: PaymentPlan) -> Callable[[], Awaitable[None]]:
            async def register() -> None:
                at(max(registered_at, p.captured_at + timedelta(minutes=5)))
                payment, _created = await self.c.payments.register(
                    RegisterPayment(
                        pse_account=ACCOUNT,
                        pse_payment_id=f"sbpay_bench_{p.index:05d}",
                        order_id=f"ORD-{10_000 + p.index}",
                        amount=p.amount,
                        currency=p.currency,
                        captured_at=p.captured_at,
                        payment_method=p.method,
                        risk_level=p.risk,
                    ),
                    store.name,
                )
                p.id = payment.id

            return register

        await self._gather([job(p) for p in payments])

    async def _refunds(self, refunds: list[RefundPlan]) -> None:
        await self._gather([self._chain(r) for r in refunds])

    def _chain(self, p: RefundPlan) -> Callable[[], Awaitable[None]]:
        async def chain() -> None:
            rng = random.Random(f"{p.payment.index}-{p.created_at.isoformat()}")
            when = p.created_at
            at(when)
            refund = await self.c.refunds.request(
                RequestRefund(
                    payment_id=p.payment.id,
                    amount=p.amount,
                    reason=rng.choice(list(RefundReason)),
                    note="customer called" if rng.random() < 0.3 else None,
                    metadata={"bench": p.outcome, "ticket": f"T-{rng.randrange(10**6)}"},
                ),
                self.keys.actor("store"),
            )
            self.seeded.actions["requested"] += 1

            def later(lo_hours: float, hi_hours: float) -> datetime | None:
                """A moment after the last step, if it is not in the future."""
                nonlocal when
                candidate = when + timedelta(hours=rng.uniform(lo_hours, hi_hours))
                if candidate > self.now - timedelta(minutes=1):
                    return None
                when = candidate
                at(when)
                return when

            if refund.status is RefundStatus.PENDING_APPROVAL:
                refund = await self._decide(p, refund, later, rng)
            if refund.status is not RefundStatus.APPROVED:
                return
            if p.fate == "hold":
                return
            if p.fate == "cancel":
                if later(0.2, 6) is not None:
                    await self.c.refunds.cancel(refund.id, self.keys.actor("store"), "duplicate")
                    self.seeded.actions["canceled"] += 1
                return
            refund = await self.c.submissions.submit(refund.id)
            self.seeded.actions["submitted"] += 1
            if refund.status is not RefundStatus.PENDING or refund.pse_refund_id is None:
                return
            if p.fate == "flag":
                if later(1, 4) is not None:
                    self.double.hidden.add(refund.pse_refund_id)
                    await self.c.submissions.resolve(refund.id)
                    self.seeded.actions["flagged"] += 1
                return
            if p.fate in ("webhook", "approve") and later(0.5, 20) is not None:
                await self._webhook(refund)
                if p.fate == "approve":
                    self.webhooked.append(refund.id)

        return chain

    async def _decide(
        self,
        p: RefundPlan,
        refund: Refund,
        later: Callable[[float, float], datetime | None],
        rng: random.Random,
    ) -> Refund:
        approvers = [self.keys.approver(n) for n in ("approver-1", "approver-2", "admin")]
        if p.fate in ("wait", "half"):
            if p.fate == "half" and later(0.5, 12) is not None:
                # One of two approvals given: by approver-1, the refund leaves
                # its inbox for the list of those it cannot decide.
                rng.shuffle(approvers)
                return await self._approve_once(refund, approvers)
            return refund
        if later(0.5, 30) is None:
            return refund
        if p.fate == "reject":
            self.seeded.actions["rejected"] += 1
            return await self.c.refunds.reject(
                refund.id, self.keys.approver("admin"), "not covered by the return policy"
            )
        if p.fate == "cancel":
            self.seeded.actions["canceled"] += 1
            return await self.c.refunds.cancel(refund.id, self.keys.actor("store"), "resolved")
        rng.shuffle(approvers)
        while refund.status is RefundStatus.PENDING_APPROVAL:
            before = len(refund.approvals)
            refund = await self._approve_once(refund, approvers)
            if len(refund.approvals) == before:
                break
            if refund.status is RefundStatus.PENDING_APPROVAL and later(0.2, 8) is None:
                break
        return refund

    async def _approve_once(self, refund: Refund, approvers: list[Approver]) -> Refund:
        for approver in approvers:
            if refund.decision_block(approver.actor.id, approver.level) is None:
                self.seeded.actions["approvals"] += 1
                return await self.c.refunds.approve(refund.id, approver, "checked the order")
        return refund

    async def _webhook(self, refund: Refund) -> None:
        assert refund.pse_refund_id is not None
        data = self.double.settle(refund.pse_refund_id)
        sent_at = self.c.deps.clock.now()
        event_id = f"evt_bench_{refund.id}"
        body = json.dumps(
            {
                "id": event_id,
                "type": "refund.succeeded",
                "created": int(sent_at.timestamp()),
                "data": data,
            }
        )
        headers = {
            "webhook-id": event_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self.webhook.sign(event_id, sent_at, body),
        }
        await self.c.webhooks.receive(ACCOUNT, headers, body.encode())
        self.seeded.actions["webhooks"] += 1

    async def _reconcile(self) -> None:
        """A settlement file of the last days' settled refunds (a few mismatches,
        some the service still has pending), run as the CLI and the API run it."""
        async with self.c.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, pse_refund_id, amount, currency, status, updated_at FROM refunds "
                "WHERE pse_refund_id IS NOT NULL AND status IN ('succeeded', 'pending') "
                "AND updated_at >= $1 ORDER BY updated_at",
                self.now - timedelta(days=4),
            )
        rng = self.rng
        lines = [
            "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
            "settlement_amount,settlement_currency"
        ]
        for i, row in enumerate(rows[-400:]):
            roll = rng.random()
            if roll < 0.02:
                continue  # missing in the file
            amount, status = row["amount"], "succeeded"
            if roll < 0.04:
                amount -= 100
            elif roll < 0.05:
                status = "failed"
            settled = min(row["updated_at"] + timedelta(hours=2), self.now)
            fee = "30" if row["currency"] == "JPY" else "3"
            lines.append(
                f"{row['pse_refund_id']},{row['id']},refund,{amount},{row['currency']},{status},"
                f"{settled.isoformat().replace('+00:00', 'Z')},{fee},,"
            )
            if i % 40 == 0:
                lines.append(f"sbre_ghost_{i},,refund,1500,JPY,succeeded,{settled.isoformat()},,,")
            if i % 25 == 0:
                lines.append(f"ch_bench_{i},,charge,5000,JPY,succeeded,{settled.isoformat()},,,")
        content = ("\n".join(lines) + "\n").encode()
        ops = self.keys.keys["ops"]
        run = await self.c.reconciliations.start(ACCOUNT, "settlement-bench.csv", ops.name)
        done = await self.c.reconciliations.run(run.id, lambda: io.BytesIO(content))
        if done.status != "completed":
            raise BenchError(f"the reconciliation run did not complete: {done.error}")
        self.seeded.reconciliation_id = done.id
        self.seeded.reconciliation_counts = {k: v for k, v in done.counts.items() if v}
        self.seeded.reconciliation_rows = len(lines) - 1


async def make_keys(container: Container) -> Keys:
    keys, secrets_ = {}, {}
    for name, roles, level in DEMO_ROLES:
        key, secret = await container.keys.create(DEMO_KEY_PREFIX + name, roles, level)
        keys[name], secrets_[name] = key, secret
    return Keys(keys, secrets_)


async def describe_data(container: Container, seeded: Seeded, candidates: list[str]) -> str:
    """What was seeded, and the refund page to measure: of the refunds approved,
    sent and settled by a webhook, the one with the most audit records."""
    async with container.pool.acquire() as conn:
        statuses = await conn.fetch(
            "SELECT status, count(*) AS n FROM refunds GROUP BY status ORDER BY n DESC"
        )
        figures = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM payments) AS payments,"
            " (SELECT count(*) FROM refunds) AS refunds,"
            " (SELECT count(*) FROM refunds WHERE attention IS NOT NULL) AS flagged,"
            " (SELECT count(*) FROM refunds WHERE created_at >= date_trunc('day', now()"
            "   AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS today,"
            " (SELECT count(*) FROM audit_log) AS audit,"
            " (SELECT count(*) FROM events) AS outbox,"
            " (SELECT count(*) FROM pse_webhook_events) AS webhooks,"
            " (SELECT count(*) FROM reconciliation_rows) AS lines"
        )
        richest = await conn.fetchrow(
            "SELECT r.id, (SELECT count(*) FROM audit_log a WHERE a.refund_id = r.id) AS n"
            " FROM refunds r WHERE r.id = ANY($1::text[]) ORDER BY n DESC LIMIT 1",
            candidates,
        )
    if richest is not None:
        seeded.rich_refund, seeded.rich_steps = richest["id"], richest["n"]
    by_status = ", ".join(f"{r['status']} {r['n']}" for r in statuses)
    calls = ", ".join(f"{n} {what}" for what, n in seeded.actions.most_common())
    return (
        f"{figures['payments']} payments, {figures['refunds']:,} refunds "
        f"({figures['today']} created today; {by_status}); {figures['flagged']} flagged; "
        f"{figures['webhooks']} PSE webhooks, {figures['outbox']:,} store events, "
        f"{figures['audit']:,} audit records; reconciliation {seeded.reconciliation_id}: "
        f"{seeded.reconciliation_rows} file rows, {figures['lines']} lines "
        f"{seeded.reconciliation_counts}; service calls: {calls}"
    )


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


@dataclass
class Timings:
    label: str
    viewer: str
    ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    server_timing_ms: list[float] = field(default_factory=list)
    placeholder: bool = False
    body_bytes: int = 0
    note: str = ""

    def pct(self, q: float, values: list[float] | None = None) -> float:
        values = sorted(self.ms if values is None else values)
        if not values:
            return float("nan")
        rank = max(0, min(len(values) - 1, round(q * (len(values) - 1))))
        return values[rank]


class GcWatch:
    """Full (generation 2) garbage collections while it is entered: each one
    stops the one thread serving requests for as long as it takes."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif info.get("generation") == 2:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1000)

    def describe(self) -> str:
        if not self.pauses_ms:
            return "no full garbage collection ran"
        return (
            f"{len(self.pauses_ms)} full garbage collections ran (gen 2, "
            f"{len(gc.get_objects()):,} objects tracked), {max(self.pauses_ms):.0f} ms the "
            f"longest, {sum(self.pauses_ms):.0f} ms in all: each one lands in one request"
        )


def server_timing(header: str | None) -> float | None:
    """`total` (or `app`) of a Server-Timing header, else its largest `dur`."""
    if not header:
        return None
    found: dict[str, float] = {}
    for metric in header.split(","):
        parts = [p.strip() for p in metric.split(";")]
        for p in parts[1:]:
            if p.startswith("dur="):
                try:
                    found[parts[0]] = float(p[4:])
                except ValueError:
                    pass
    for name in ("total", "app"):
        if name in found:
            return found[name]
    return max(found.values()) if found else None


async def sign_in(app: Any, secret: str) -> httpx.AsyncClient:
    """A browser of its own, signed in through the login form."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
    page = await client.get("/console/login")
    token = _CSRF.search(page.text)
    if page.status_code != 200 or token is None:
        await client.aclose()
        raise BenchError(f"the login page answered {page.status_code} without a CSRF token")
    signed = await client.post(
        "/console/login", data={"api_key": secret, "csrf_token": token.group(1)}
    )
    if signed.status_code != 303 or "console_session" not in client.cookies:
        await client.aclose()
        raise BenchError(f"sign-in answered {signed.status_code}: {signed.text[:300]}")
    return client


async def find_export(client: httpx.AsyncClient, wanted: str | None) -> tuple[str, str]:
    """The CSV export of all refunds: `--export-path`, the refunds page's
    link, or the first candidate answering CSV. (path, how it was found)"""
    if wanted:
        return wanted, "--export-path"
    page = await client.get("/console/refunds")
    for href in _HREF.findall(page.text):
        href = href.replace("&amp;", "&")
        if href.startswith("/console/refunds") and ("csv" in href or "export" in href):
            return href, "linked from /console/refunds"
    for candidate in EXPORT_CANDIDATES:
        answer = await client.get(candidate)
        if answer.status_code == 200 and "csv" in answer.headers.get("content-type", ""):
            return candidate, "found by trying"
    return EXPORT_CANDIDATES[0], "no export yet: guessed"


async def measure_pages(
    clients: dict[str, httpx.AsyncClient], pages: list[tuple[str, str]], repeat: int
) -> list[Timings]:
    targets = [
        (viewer, label, path, Timings(label, viewer)) for label, path in pages for viewer in clients
    ]
    for round_no in range(WARMUP_ROUNDS + repeat):
        for viewer, _label, path, timings in targets:
            client = clients[viewer]
            started = time.perf_counter()
            response = await client.get(path)
            elapsed = (time.perf_counter() - started) * 1000
            if round_no < WARMUP_ROUNDS:
                continue
            timings.ms.append(elapsed)
            timings.statuses[response.status_code] += 1
            timings.body_bytes = len(response.content)
            if 'class="not-yet"' in response.text[:20000]:
                timings.placeholder = True
            st = server_timing(response.headers.get("server-timing"))
            if st is not None:
                timings.server_timing_ms.append(st)
    return [t for *_rest, t in targets]


async def measure_calls(
    calls: list[tuple[str, str, Callable[[], Awaitable[Any]]]], repeat: int
) -> list[Timings]:
    rows = [(call, Timings(label, viewer)) for label, viewer, call in calls]
    for round_no in range(WARMUP_ROUNDS + repeat):
        for call, timings in rows:
            started = time.perf_counter()
            result = await call()
            elapsed = (time.perf_counter() - started) * 1000
            if round_no >= WARMUP_ROUNDS:
                timings.ms.append(elapsed)
                timings.note = result if isinstance(result, str) else ""
    return [t for _call, t in rows]


def query_calls(
    container: Container, keys: Keys, seeded: Seeded
) -> list[tuple[str, str, Callable[[], Awaitable[Any]]]]:
    q = container.console_queries
    approver, ops = keys.keys[APPROVER], keys.keys[OPS]

    def sized(
        what: Callable[[], Awaitable[Any]], count: Callable[[Any], str]
    ) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            return count(await what())

        return call

    async def export() -> str:
        rows = chunks = 0
        async for chunk in await q.export_csv(RefundSearch()):
            chunks += 1
            rows += chunk.count("\r\n")
        return f"{rows - 1:,} rows"

    def page(label: str) -> Callable[[Any], str]:
        return lambda p: f"{len(p.items)} {label}" + (" (more)" if p.next_cursor else "")

    calls: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
        ("home()", APPROVER, sized(lambda: q.home(approver), lambda h: f"{h.approvals}")),
        ("home()", OPS, sized(lambda: q.home(ops), lambda h: f"queues {h.queues.stale} stale")),
        ("approval_counts()", APPROVER, sized(lambda: q.approval_counts(approver), str)),
        (
            "approvals_inbox()",
            APPROVER,
            sized(lambda: q.approvals_inbox(approver), page("items")),
        ),
        (
            "approvals_blocked()",
            APPROVER,
            sized(lambda: q.approvals_blocked(approver), page("items")),
        ),
        ("search(all)", OPS, sized(lambda: q.search(RefundSearch()), page("rows"))),
        ("export_csv(all)", OPS, export),
        (
            "refund_detail()",
            APPROVER,
            sized(
                lambda: q.refund_detail(seeded.rich_refund, approver),
                lambda d: f"{len(d.timeline.entries)} timeline entries",
            ),
        ),
        ("attention_counts()", OPS, sized(q.attention_counts, lambda c: f"{c}")),
    ]

    def attention(queue: AttentionQueue) -> Callable[[], Awaitable[Any]]:
        return lambda: q.attention(queue)

    for queue in AttentionQueue:
        calls.append((f"attention({queue.value})", OPS, sized(attention(queue), page("rows"))))
    calls += [
        ("failed_deliveries()", OPS, sized(q.failed_deliveries, page("events"))),
        ("reconciliations()", OPS, sized(q.reconciliations, page("runs"))),
        (
            "reconciliation(id)",
            OPS,
            sized(
                lambda: q.reconciliation(seeded.reconciliation_id),
                lambda d: f"{len(d.lines.items)} lines of {d.run.rows_total}",
            ),
        ),
        ("fx_report()", OPS, sized(q.fx_report, lambda r: f"{len(r)} currencies")),
    ]
    return calls


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def _verdict(t: Timings) -> tuple[str, str]:
    """(what answered, verdict)"""
    codes = set(t.statuses)
    if codes == {404}:
        return "404: not built yet", "-"
    if codes == {403}:
        return "403: not this key's", "-"
    ok = all(200 <= c < 300 for c in codes)
    what = "placeholder" if t.placeholder else ("page" if ok else "errors")
    if not ok:
        return what, "FAIL"
    return what, "PASS" if t.pct(0.95) < TARGET_MS else "MISS"


def page_table(rows: list[Timings], repeat: int) -> list[str]:
    has_st = any(t.server_timing_ms for t in rows)
    head = (
        f"  {'page':<34}{'viewer':<12}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}"
        f"{'ST p95':>8}  {'statuses':<10}{'KB':>6}  {'answer':<19}verdict"
    )
    lines = [head]
    for t in rows:
        what, verdict = _verdict(t)
        codes = ",".join(
            f"{c}x{n}" if len(t.statuses) > 1 else str(c) for c, n in sorted(t.statuses.items())
        )
        st = f"{t.pct(0.95, t.server_timing_ms):>8.1f}" if t.server_timing_ms else f"{'-':>8}"
        lines.append(
            f"  {t.label:<34}{t.viewer:<12}{t.pct(0.5):>8.1f}{t.pct(0.95):>8.1f}"
            f"{max(t.ms):>8.1f}{st}  {codes:<10}{t.body_bytes / 1024:>6.0f}  {what:<19}{verdict}"
        )
    if not has_st:
        lines.append(
            "  (ST: the app sends no Server-Timing header; times are the in-process wall time)"
        )
    return lines


def call_table(rows: list[Timings]) -> list[str]:
    lines = [
        f"  {'ConsoleQueries call':<34}{'viewer':<12}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'max ms':>8}  result"
    ]
    for t in rows:
        lines.append(
            f"  {t.label:<34}{t.viewer:<12}{t.pct(0.5):>8.1f}{t.pct(0.95):>8.1f}"
            f"{max(t.ms):>8.1f}  {t.note[:60]}"
        )
    return lines


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class Results:
    seeded: Seeded
    export_path: str
    export_how: str
    pages: list[Timings]
    pages_seconds: float
    collections: GcWatch
    machine: Any
    calls: list[Timings]


async def seed_and_measure(
    app: Any,
    container: Container,
    double: PseDouble,
    secret: str,
    db: ScratchDb,
    repeat: int,
    export_path: str | None,
) -> Results:
    keys = await make_keys(container)
    seeder = Seeder(container, double, keys, secret, random.Random(20261201))
    seeded = await seeder.run()
    await db.tidy()
    data = await describe_data(container, seeded, seeder.webhooked)
    print(f"seeded in {seeded.seconds:.1f} s: {data}", flush=True)
    if not seeded.rich_refund:
        raise BenchError("no refund was approved, sent and settled by a webhook")
    clients = {
        APPROVER: await sign_in(app, keys.secrets[APPROVER]),
        OPS: await sign_in(app, keys.secrets[OPS]),
    }
    try:
        export, export_how = await find_export(clients[OPS], export_path)
        pages = [
            ("/console", "/console"),
            ("/console/approvals", "/console/approvals"),
            ("/console/refunds", "/console/refunds"),
            ("export CSV (all refunds)", export),
            ("/console/refunds/{id}", f"/console/refunds/{seeded.rich_refund}"),
            ("/console/attention", "/console/attention"),
            ("/console/reconciliations", "/console/reconciliations"),
            (
                "/console/reconciliations/{id}",
                f"/console/reconciliations/{seeded.reconciliation_id}",
            ),
        ]
        print(
            f"measuring {len(pages)} pages x {len(clients)} viewers x {repeat} "
            f"(after {WARMUP_ROUNDS} warm-up rounds), one request at a time ...",
            flush=True,
        )
        gc.collect()  # the seeding's garbage is not the pages'
        watch = CpuWatch(db.name)
        t0 = time.perf_counter()
        with GcWatch() as collections:
            page_rows = await measure_pages(clients, pages, repeat)
        pages_seconds = time.perf_counter() - t0
        machine = watch.stop()
    finally:
        for client in clients.values():
            await client.aclose()
    calls = await measure_calls(query_calls(container, keys, seeded), repeat)
    return Results(
        seeded, export, export_how, page_rows, pages_seconds, collections, machine, calls
    )


def report(results: Results, repeat: int) -> list[str]:
    seeded, page_rows = results.seeded, results.pages
    lines = [
        "",
        f"console pages: server time per request, in-process (httpx.ASGITransport), "
        f"{repeat} requests each, target p95 < {TARGET_MS:.0f} ms",
        f"  refund page: {seeded.rich_refund} ({seeded.rich_steps} audit records); "
        f"export: {results.export_path} ({results.export_how})",
        *page_table(page_rows, repeat),
    ]
    measured = [t for t in page_rows if _verdict(t)[1] in ("PASS", "MISS")]
    built = [t for t in measured if not t.placeholder]
    missed = [t for t in measured if _verdict(t)[1] == "MISS"]
    absent = [t for t in page_rows if set(t.statuses) == {404}]
    failed = [t for t in page_rows if _verdict(t)[1] == "FAIL"]
    lines.append(
        f"  {len(measured) - len(missed)} of {len(measured)} answered within target "
        f"({len(built)} of them real pages, {len(measured) - len(built)} placeholders); "
        f"{len(absent)} not built yet (404)"
        + (f"; {len(failed)} answered errors" if failed else "")
    )
    if missed:
        lines.append("  MISSED: " + ", ".join(f"{t.label} ({t.viewer})" for t in missed))
    lines += [
        f"  pages measured in {results.pages_seconds:.1f} s; {results.collections.describe()}",
        f"  {results.machine.describe()}",
        f"  machine: {os.cpu_count()} cores shared by this process (app and client), "
        "PostgreSQL and whatever else runs; compare figures of one run only",
        "",
        "what the pages read (app/services/console_queries.py), called directly, "
        f"{repeat} times each:",
        *call_table(results.calls),
    ]
    return lines


async def run(args: argparse.Namespace) -> None:
    configure_logging("json", "warning")
    db = ScratchDb(args.dsn)
    started = time.perf_counter()
    try:
        try:
            await db.create()
        except (OSError, TimeoutError) as exc:
            raise BenchError(f"no PostgreSQL at {args.dsn}: {exc}") from None
        conn = await db.connect()
        try:
            pg_version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        print(
            f"scratch database {db.name} (PostgreSQL {pg_version}), migrated in "
            f"{time.perf_counter() - started:.1f} s; seeding through the services ...",
            flush=True,
        )
        secret = new_webhook_secret()
        double = PseDouble()
        container = build_container(
            bench_settings(db.url, secret), clock=SeedClock(), pse_transport=double.transport()
        )
        app = create_app(container)
        # The app's lifespan: the audit writer runs; on the way out the
        # container is closed (its pool included) and the audit flushed.
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        try:
            results = await seed_and_measure(
                app, container, double, secret, db, args.repeat, args.export_path
            )
        except BaseException:
            # Interrupted half-way, the units of work cancelled hand their
            # connections back in the background (asyncpg shields a release):
            # a pool closed at once can wait for ever. A moment, then not long.
            try:
                await asyncio.sleep(0.5)
                await asyncio.wait_for(lifespan.__aexit__(None, None, None), 5)
            except BaseException:
                print("bench/console.py: the service did not close within 5 s", file=sys.stderr)
            raise
        await lifespan.__aexit__(None, None, None)
        print("\n".join(report(results, args.repeat)))
        print(f"\ntotal {time.perf_counter() - started:.1f} s")
    finally:
        if args.keep_db:
            print(f"kept database {db.name}: {db.dsn}")
        else:
            await db.drop()


def arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="measured requests per page")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the scratch database")
    parser.add_argument(
        "--export-path", default=None, help="the CSV export's path (default: find it)"
    )
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="an admin connection")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be positive")
    return args


if __name__ == "__main__":
    main(run, arguments, "bench/console.py")
