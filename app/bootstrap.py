"""The composition root: the one place that wires adapters to ports."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta

import httpx
import structlog

from app.adapters.clock import SystemClock
from app.adapters.db.claimer import AdvisoryLockClaimer
from app.adapters.db.engine import (
    SCHEMA_REVISION,
    ConnectionPool,
    create_pool,
    current_revision,
)
from app.adapters.db.faults import UNAVAILABLE_CANDIDATES, database_unavailable
from app.adapters.db.key_events import RevocationListener
from app.adapters.db.uow import UnitOfWorkFactory
from app.adapters.notify.webhook import StoreWebhookPublisher
from app.adapters.pse.audit_transport import AuditingTransport
from app.adapters.pse.base import PseAccount
from app.adapters.pse.transport import pse_transport as http_transport
from app.adapters.settlement.parsers import SettlementFileError, open_settlement
from app.config import AccountSettings, ConfigError, Settings, secrets_of
from app.domain.console import SessionLimits
from app.domain.money import parse_rate
from app.domain.policy import ApprovalTier, OnDispute, RefundPolicy, TrustedRate
from app.domain.ports import (
    Clock,
    PseGateway,
)
from app.domain.resolution import CheckSchedule
from app.metrics import Metrics
from app.redaction import Redactor
from app.services.audit import AuditService
from app.services.console import ConsoleService
from app.services.console_queries import ConsoleQueries
from app.services.context import AccountInfo, Deps
from app.services.dispatch import BackgroundSubmitter
from app.services.disputes import DisputeService
from app.services.events import DeliveryService, EventService, RetryPolicy
from app.services.idempotency import IdempotencyService
from app.services.jobs import BackgroundJobs
from app.services.keys import KeyService
from app.services.operations import Operations
from app.services.payments import PaymentService
from app.services.reconciliation import ReconciliationService
from app.services.refunds import RefundService
from app.services.submission import SubmissionService
from app.services.webhooks import WebhookService
from app.services.worker import Worker


def policy_from(settings: Settings) -> RefundPolicy:
    p = settings.policy
    return RefundPolicy(
        refund_window_days=p.refund_window_days,
        max_refund_amount=dict(p.max_refund_amount),
        daily_auto_approve_limit=dict(p.daily_auto_approve_limit),
        approval_tiers=tuple(
            ApprovalTier(t.currency, t.above, t.approvals, t.min_level) for t in p.approval_tiers
        ),
        offline_payment_methods=frozenset(m.lower() for m in p.offline_payment_methods),
        rates=tuple(
            TrustedRate(*pair.split("_"), parse_rate(r.rate), r.as_of)
            for pair, r in p.rates.items()
        ),
        rate_max_age_days=p.rate_max_age_days,
        on_dispute=OnDispute(p.on_dispute),
    )


def schedule_from(settings: Settings) -> CheckSchedule:
    w = settings.worker
    return CheckSchedule(
        backoff_seconds=tuple(w.resolve_backoff_seconds),
        approved_grace_seconds=w.approved_grace_seconds,
        submitting_grace_seconds=w.submitting_grace_seconds,
        pending_check_after_seconds=w.pending_check_after_seconds,
    )


def pse_account(name: str, cfg: AccountSettings) -> PseAccount:
    return PseAccount(
        name=name,
        provider=cfg.provider,
        api_key=cfg.api_key.get_secret_value(),
        base_url=cfg.effective_base_url(),
        webhook_secrets=tuple(s.get_secret_value() for s in cfg.webhook_secrets),
        refund_window_days=cfg.refund_window_days,
        timeout_seconds=cfg.timeout_seconds,
        max_attempts=cfg.max_attempts,
        backoff_initial_seconds=cfg.backoff_initial_seconds,
        backoff_max_seconds=cfg.backoff_max_seconds,
        webhook_tolerance_seconds=cfg.webhook_tolerance_seconds,
        options=dict(cfg.options),
    )


# provider → (module, class) of its adapter; imported only when configured.
ADAPTERS: dict[str, tuple[str, str]] = {
    "sandbox": ("app.adapters.pse.sandbox", "SandboxGateway"),
    "stripe": ("app.adapters.pse.stripe", "StripeGateway"),
    "komoju": ("app.adapters.pse.komoju", "KomojuGateway"),
    "payjp": ("app.adapters.pse.payjp", "PayjpGateway"),
    "xendit": ("app.adapters.pse.xendit", "XenditGateway"),
    "razorpay": ("app.adapters.pse.razorpay", "RazorpayGateway"),
    "omise": ("app.adapters.pse.omise", "OmiseGateway"),
}


def gateway_for(account: PseAccount, http: httpx.AsyncClient) -> PseGateway:
    try:
        module_name, class_name = ADAPTERS[account.provider]
    except KeyError:
        raise ConfigError(
            f"accounts.{account.name}.provider: {account.provider!r} has no adapter"
        ) from None
    gateway_class = getattr(importlib.import_module(module_name), class_name)
    try:
        gateway: PseGateway = gateway_class(account, http)
    except ValueError as exc:  # an adapter refusing its settings names the key
        raise ConfigError(str(exc)) from None
    return gateway


@dataclass
class Container:
    settings: Settings
    pool: ConnectionPool
    deps: Deps
    payments: PaymentService
    refunds: RefundService
    disputes: DisputeService
    submissions: SubmissionService
    webhooks: WebhookService
    keys: KeyService
    idempotency: IdempotencyService
    submitter: BackgroundSubmitter
    worker: Worker
    events: EventService
    deliveries: DeliveryService
    reconciliations: ReconciliationService
    jobs: BackgroundJobs
    audit: AuditService
    http: httpx.AsyncClient
    console: ConsoleService
    pse_accounts: dict[str, PseAccount] = field(default_factory=dict)
    # This process's claimer key (connected at the worker's first pass).
    claimer: AdvisoryLockClaimer | None = None
    # False for a pool handed to build_container: whoever opened it closes it.
    owns_pool: bool = True
    # Hears key revocations made by any process (`follow_revocations`).
    revocations: RevocationListener | None = None
    # Whether an error says that the database cannot be reached just now (503
    # with Retry-After, not 500), asked of errors of the candidate classes:
    # the database adapter's knowledge, handed to the edges (the API's
    # handlers and middleware, the console's pages), which never import it.
    unavailable: Callable[[BaseException], bool] = database_unavailable
    unavailable_candidates: tuple[type[Exception], ...] = UNAVAILABLE_CANDIDATES
    operations: Operations = field(init=False)
    console_queries: ConsoleQueries = field(init=False)

    def __post_init__(self) -> None:
        self.operations = Operations(self.deps, self.settings, self.audit, self.readiness)
        self.console_queries = ConsoleQueries(self.deps, self.deliveries, self.disputes)

    @property
    def shares_metrics(self) -> bool:
        """True in each process of `serve --workers N` (N > 1): the processes'
        metrics are merged at every scrape."""
        return isinstance(self.deps.metrics, Metrics) and self.deps.metrics.multiprocess

    async def publish_process_gauges(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """With shared metrics, keep this process's share of the gauges that are
        summed over processes (the audit buffer) current, whichever process is
        scraped; when stopped, withdraw it."""
        metrics: Metrics = self.deps.metrics
        try:
            while not stop.is_set():
                metrics.audit_buffered.set(self.audit.pending)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)
        finally:
            metrics.withdraw_process()

    async def follow_revocations(self, stop: asyncio.Event) -> None:
        """Until `stop`: hear every key revocation, made by any process, on a
        connection of its own, so that the key cache is trusted only while
        none can be missed (KeyService.follow_revocations). Run by each
        process that serves requests (the app's lifespan)."""
        if self.revocations is not None:
            await self.revocations.run(stop)

    async def readiness(self) -> tuple[bool, str]:
        """(True, schema revision) when the database answers at the head revision."""
        try:
            current = await current_revision(self.pool)
        except Exception:
            return False, "the database is unreachable"
        if current != SCHEMA_REVISION:
            return False, (
                f"the schema is at {current or 'nothing'}, not at {SCHEMA_REVISION}: "
                "run `pse-refunds migrate`"
            )
        return True, current or ""

    async def aclose(self) -> None:
        await self.jobs.aclose()
        await self.submitter.aclose()
        for gateway in self.deps.gateways.values():
            await gateway.aclose()
        await self.http.aclose()
        try:
            await self.audit.flush()
        except Exception:  # the database is gone: nothing more can be sealed
            structlog.get_logger("app.audit").exception(
                "audit.flush_failed", buffered=self.audit.pending
            )
        if self.claimer is not None:
            await self.claimer.close()
        if self.owns_pool:
            await self.pool.close()


def build_container(
    settings: Settings,
    *,
    clock: Clock | None = None,
    pse_transport: httpx.AsyncBaseTransport | None = None,
    gateway_factory: Callable[[PseAccount, httpx.AsyncClient], PseGateway] | None = None,
    pool: ConnectionPool | None = None,
    metrics: Metrics | None = None,
) -> Container:
    # Without a database_url the command resolves the embedded server's URL
    # before building (app.cli.database); a pool of no URL never connects.
    owns_pool = pool is None
    pool = pool or create_pool(settings.database_url or "")
    uow = UnitOfWorkFactory(pool)
    the_clock = clock or SystemClock()
    redactor = Redactor(secrets_of(settings))
    audit = AuditService(uow, the_clock, redactor, enabled=settings.audit_enabled)
    metrics = metrics or Metrics()
    http = httpx.AsyncClient(
        # The pool's limits are the transport's (transport.LIMITS).
        transport=AuditingTransport(pse_transport or http_transport(), audit, metrics),
        headers={"User-Agent": "pse-refunds/0.1"},
    )
    accounts = {
        name: replace(
            pse_account(name, cfg),
            on_retry=lambda name=name: metrics.pse_retries.labels(name).inc(),
        )
        for name, cfg in settings.accounts.items()
    }
    make = gateway_factory or gateway_for
    gateways = {name: make(account, http) for name, account in accounts.items()}
    deps = Deps(
        uow=uow,
        single_statement_uow=uow.single_statement,
        clock=the_clock,
        policy=policy_from(settings),
        accounts={
            name: AccountInfo(name, a.provider, a.refund_window_days)
            for name, a in accounts.items()
        },
        gateways=gateways,
        stale_after_hours=settings.stale_after_hours,
        schedule=schedule_from(settings),
        deliver_events=settings.store_webhook is not None,
        audit=audit,
        metrics=metrics,
    )
    publisher = None
    retry = RetryPolicy()
    hook = settings.store_webhook
    if hook is not None:
        publisher = StoreWebhookPublisher(
            hook.url,
            [hook.secret.get_secret_value()]
            + [s.get_secret_value() for s in hook.secrets_previous],
            http,
            deps.clock,
            timeout_seconds=hook.timeout_seconds,
        )
        retry = RetryPolicy(
            retry_for=timedelta(hours=hook.retry_for_hours),
            initial_seconds=hook.backoff_initial_seconds,
            max_seconds=hook.backoff_max_seconds,
        )
    # The worker's and the deliveries' claims name this process (see claimer.py).
    claimer = AdvisoryLockClaimer(pool.url)
    deliveries = DeliveryService(
        deps,
        publisher,
        retry,
        concurrency=settings.worker.concurrency,
        lease_seconds=max(60.0, (hook.timeout_seconds * 3) if hook else 60.0),
        claimer=claimer,
    )
    disputes = DisputeService(deps)
    webhooks = WebhookService(deps, disputes)
    submissions = SubmissionService(
        deps, webhooks, submitting_grace_seconds=settings.worker.submitting_grace_seconds
    )
    submitter = BackgroundSubmitter(submissions.submit, submissions.send)
    deps.queue = submitter
    keys = KeyService(deps)
    return Container(
        revocations=RevocationListener(pool.url, keys.revoked, keys.follow_revocations),
        settings=settings,
        pool=pool,
        owns_pool=owns_pool,
        deps=deps,
        payments=PaymentService(deps),
        refunds=RefundService(deps),
        disputes=disputes,
        submissions=submissions,
        webhooks=webhooks,
        keys=keys,
        idempotency=IdempotencyService(
            deps, timedelta(seconds=settings.idempotency_in_flight_seconds)
        ),
        submitter=submitter,
        events=EventService(deps),
        reconciliations=ReconciliationService(deps, open_settlement, (SettlementFileError,)),
        jobs=BackgroundJobs(),
        audit=audit,
        deliveries=deliveries,
        worker=Worker(
            deps,
            submissions,
            webhooks,
            deliveries,
            poll_interval_seconds=settings.worker.poll_interval_seconds,
            batch_size=settings.worker.batch_size,
            concurrency=settings.worker.concurrency,
            lease_seconds=settings.worker.lease_seconds,
            idempotency_retention_days=settings.idempotency_retention_days,
            claimer=claimer,
        ),
        http=http,
        console=ConsoleService(
            deps,
            SessionLimits(
                idle=timedelta(minutes=settings.console_idle_minutes),
                absolute=timedelta(hours=settings.console_absolute_hours),
            ),
        ),
        pse_accounts=accounts,
        claimer=claimer,
    )
