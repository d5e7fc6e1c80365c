"""Prometheus metrics: one registry per process (built by the composition root).

Counters and histograms are updated where things happen; the gauges of
current state (refunds unknown, waiting for approval, stale; delivery lag)
are read from the database when `/metrics` is scraped, so every process
reports the same truth.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PSE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.refunds_created = Counter(
            "refunds_created",
            "Refunds recorded, by status at creation and PSE account",
            ["pse_account", "status"],
            registry=r,
        )
        self.refunds_finished = Counter(
            "refunds_finished",
            "Refunds reaching a final status, by status and PSE account",
            ["pse_account", "status"],
            registry=r,
        )
        self.pse_call_seconds = Histogram(
            "pse_call_duration_seconds",
            "Duration of each HTTP attempt to a PSE",
            ["host", "outcome"],
            buckets=PSE_BUCKETS,
            registry=r,
        )
        self.pse_calls = Counter(
            "pse_calls",
            "HTTP attempts to PSEs by outcome (ok, 4xx, 5xx, 429, timeout, connection_error)",
            ["host", "outcome"],
            registry=r,
        )
        self.pse_retries = Counter(
            "pse_retries",
            "Attempts retried after a timeout, 5xx or 429",
            ["pse_account"],
            registry=r,
        )
        self.webhooks_received = Counter(
            "pse_webhooks_received",
            "PSE webhooks received, by account and verification result",
            ["pse_account", "result"],
            registry=r,
        )
        self.events_delivered = Counter(
            "store_webhook_deliveries",
            "Attempts to deliver events to the store's webhook, by outcome",
            ["outcome"],
            registry=r,
        )
        self.refunds_by_status = Gauge(
            "refunds_open", "Refunds not final, by status", ["status"], registry=r
        )
        self.refunds_stale = Gauge(
            "refunds_stale", "Refunds not final and older than the SLA", registry=r
        )
        self.delivery_lag = Gauge(
            "store_webhook_delivery_lag_seconds",
            "Age of the oldest event not yet delivered to the store's webhook",
            registry=r,
        )
        self.audit_buffered = Gauge(
            "audit_records_buffered", "Audit records waiting to be sealed", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class NoMetrics:
    """For code paths that run without a registry."""

    def __getattr__(self, _name: str) -> object:
        return _Ignore()


class _Ignore:
    def labels(self, *_a: object, **_k: object) -> _Ignore:
        return self

    def inc(self, *_a: object) -> None:
        return None

    def observe(self, *_a: object) -> None:
        return None

    def set(self, *_a: object) -> None:
        return None
