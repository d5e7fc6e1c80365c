"""Prometheus metrics: one registry per process (built by the composition root).

Counters and histograms are updated where things happen; the gauges of
current state (refunds unknown, waiting for approval, stale; open and lost
disputes; delivery lag)
are read from the database when `/metrics` is scraped, so every process
reports the same truth.

`serve --workers N` (N > 1) runs N processes behind one port, and a scrape
reaches any one of them: there the metrics use prometheus-client's
multiprocess mode. Each process writes its values to files in a directory
shared by all (PROMETHEUS_MULTIPROC_DIR, which must be set before
prometheus-client is imported), and `/metrics` merges them: counters and
histograms add up, the gauges read from the database report the value set
last (`mostrecent`), and the audit buffer is the sum over live processes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client import multiprocess as multiprocess_files

MULTIPROC_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"

PSE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        """`multiprocess_dir`: the directory shared by the processes of one
        `serve --workers N`; None (the default) keeps everything in this process."""
        if multiprocess_dir is not None and not values.ValueClass._multiprocess:
            raise RuntimeError(
                f"{MULTIPROC_DIR_VAR} was not set when prometheus_client was imported"
            )
        self.multiprocess_dir = multiprocess_dir
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
        self.requests_refused = Counter(
            "http_requests_refused",
            "Requests refused before any route ran, by reason (missing_key, unknown_key, "
            "rate_limited_address, rate_limited_key, rate_limited_failed_auth, "
            "rate_limited_login, rate_limited_webhooks)",
            ["reason"],
            registry=r,
        )
        self.webhooks_received = Counter(
            "pse_webhooks_received",
            "PSE webhooks received, by account and verification result",
            ["pse_account", "result"],
            registry=r,
        )
        self.disputes = Counter(
            "disputes",
            "Disputes opened and ended, by PSE account and outcome (opened, won, lost, "
            "closed, reinstated)",
            ["pse_account", "outcome"],
            registry=r,
        )
        self.events_delivered = Counter(
            "store_webhook_deliveries",
            "Attempts to deliver events to the store's webhook, by outcome",
            ["outcome"],
            registry=r,
        )
        # Read from the database at each scrape: the latest reading is the truth.
        self.refunds_by_status = Gauge(
            "refunds_open",
            "Refunds not final, by status",
            ["status"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.refunds_stale = Gauge(
            "refunds_stale",
            "Refunds not final and older than the SLA",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.disputes_open = Gauge(
            "disputes_open",
            "Disputes open, by PSE account",
            ["pse_account"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.disputes_open_amount = Gauge(
            "disputes_open_amount",
            "What the open disputes are for, in minor units, by PSE account and currency",
            ["pse_account", "currency"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.disputes_lost_amount = Gauge(
            "disputes_lost_amount",
            "What lost disputes counted against their payments (their disputed_amount), "
            "in minor units, by PSE account and currency",
            ["pse_account", "currency"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.delivery_lag = Gauge(
            "store_webhook_delivery_lag_seconds",
            "Age of the oldest event not yet delivered to the store's webhook",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        # Each process buffers its own records.
        self.audit_buffered = Gauge(
            "audit_records_buffered",
            "Audit records waiting to be sealed",
            registry=r,
            multiprocess_mode="livesum",
        )

    @property
    def multiprocess(self) -> bool:
        return self.multiprocess_dir is not None

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        forget_dead_processes(self.multiprocess_dir)
        merged = CollectorRegistry()
        multiprocess_files.MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

    def withdraw_process(self) -> None:
        """This process stops: its share of the live gauges no longer counts."""
        if self.multiprocess_dir is not None:
            _mark_dead(os.getpid(), self.multiprocess_dir)


_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of processes that ended without saying so (killed,
    crashed): their counters and histograms still count, their buffers do not."""
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(os.path.basename(path))
        if match:
            pids.add(int(match.group(1)))
    for pid in pids:
        if not _alive(pid):
            _mark_dead(pid, directory)


def _mark_dead(pid: int, directory: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # another process was quicker
        multiprocess_files.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
