"""The per-request cost of FastAPI's native OpenTelemetry instrumentation.

FastAPI 0.165 has native OpenTelemetry instrumentation (`fastapi/telemetry/`,
the `telemetry=` argument of `FastAPI()`, `opentelemetry-api` a required
dependency). It gives HTTP server spans, the `http.server.request.duration`
and `http.server.active_requests` metrics, log records of validation failures
and unhandled exceptions, and "operation" spans around dependency resolution,
the endpoint, serialization and background tasks.

How it is switched on and off (read in fastapi/applications.py and
fastapi/telemetry/_asgi.py, _api.py, _runtime.py):

- On, per signal, as soon as a provider is there: one configured globally
  (by opentelemetry-sdk code, `opentelemetry-instrument`, Logfire...) or one
  passed as `FastAPI(telemetry={"tracer_provider": ..., "meter_provider": ...,
  "logger_provider": ...})`. With opentelemetry-api alone and no provider set
  (this virtualenv, and the service), every signal is off: each request pays
  only the check (`NativeTelemetry.enabled()`), the always-installed
  `ExceptionTelemetryMiddleware` and the `_operation()` context look-ups.
- Off, per signal, with `FastAPI(telemetry={"tracing": False, "metrics": False,
  "logs": False})` (and `"operation_spans": False` for the inner spans only);
  per request with `telemetry={"exclude": callable(scope) -> bool}`. An API
  no-op provider (`NoOpTracerProvider`...) also counts as off.
- No environment variable switches the instrumentation itself:
  `FASTAPI_OTEL_AUTO_CONFIGURE=true` (or `telemetry={"auto_configure": True}`)
  only adds OTLP exporters from the `OTEL_*` variables at startup (it needs
  `fastapi[opentelemetry]`, i.e. the SDK), and `OTEL_SDK_DISABLED=true` only
  stops that auto-configuration. When contrib's ASGI `OpenTelemetryMiddleware`
  wraps the app, FastAPI leaves the server span, metrics and logs to it.

What this script measures: the same minimal route (`POST /refund`, a small
pydantic body, one dependency, a dict answered) in apps that differ only in
their `telemetry=` argument, called in-process N times per variant, one
request at a time, two ways: raw ASGI calls (least overhead around the app)
and httpx.ASGITransport. Variants are interleaved in rounds, in a new random
order each round. It prints the CPU time of this process per request (which
other processes on a busy machine do not inflate as they do wall time), best
round and median round, the difference to the default and the ratio:

- `off: no provider (default)`: `FastAPI()`, as the service runs today;
- `off: telemetry={...: False}`: every signal switched off by argument;
- `on: tracing+metrics+logs (API only)`, `on: tracing only`, `on: metrics
  only`: providers built on opentelemetry-api alone, whose spans do not record
  and whose instruments do nothing. FastAPI's own instrumentation code runs in
  full; what an SDK would add (recording and exporting spans, aggregating
  metrics) is not in these figures, so they are a lower bound;
- `on: SDK ...`, only if opentelemetry-sdk is installed (in-memory exporter
  and metric reader), and contrib's ASGI `OpenTelemetryMiddleware`, only if
  opentelemetry-instrumentation-asgi is installed. Neither is installed
  here, and this script installs nothing: it says so.

    .venv/bin/python bench/otel.py [--requests 5000] [--rounds 5] [--driver both|asgi|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import importlib.util
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import fastapi
import httpx
from fastapi import Depends, FastAPI, Header
from opentelemetry import _logs, metrics, trace
from pydantic import BaseModel, Field

BODY = b'{"payment_id":"pay_0123456789abcdef","amount":1,"reason":"requested_by_customer"}'
HEADERS = [
    (b"host", b"testserver"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"authorization", b"Bearer sk_otel_bench"),
]


# ---------------------------------------------------------------------------
# Providers on the OpenTelemetry API alone: FastAPI sees providers (not the
# API's deferred proxies, not its NoOp*Provider classes) and instruments every
# request; their spans are non-recording and their instruments no-ops.
# ---------------------------------------------------------------------------


class ApiTracerProvider(trace.TracerProvider):
    def get_tracer(self, *_args: Any, **_kwargs: Any) -> trace.Tracer:
        return trace.NoOpTracer()


class ApiMeterProvider(metrics.MeterProvider):
    def get_meter(self, name: str, *_args: Any, **_kwargs: Any) -> metrics.Meter:
        return metrics.NoOpMeter(name)


class ApiLoggerProvider(_logs.LoggerProvider):
    def get_logger(self, name: str, *_args: Any, **_kwargs: Any) -> _logs.Logger:
        return _logs.NoOpLogger(name)


class RefundIn(BaseModel):
    payment_id: str = Field(min_length=1, max_length=40)
    amount: int = Field(gt=0)
    reason: str = "requested_by_customer"


def caller(authorization: Annotated[str | None, Header()] = None) -> str:
    return (authorization or "").removeprefix("Bearer ")


def make_app(telemetry: dict[str, Any] | None) -> FastAPI:
    app = FastAPI(telemetry=telemetry)  # type: ignore[arg-type]

    @app.post("/refund", status_code=201)
    async def refund(body: RefundIn, key: Annotated[str, Depends(caller)]) -> dict[str, object]:
        return {"id": "rf_1", "payment_id": body.payment_id, "amount": body.amount, "by": key}

    return app


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Variant:
    label: str
    app: Any  # an ASGI app


def variants() -> tuple[list[Variant], list[str]]:
    """The apps to compare, and notes on what could not be measured."""
    api = {
        "tracer_provider": ApiTracerProvider(),
        "meter_provider": ApiMeterProvider(),
        "logger_provider": ApiLoggerProvider(),
    }
    found = [
        Variant("off: no provider (default)", make_app(None)),
        Variant(
            "off: telemetry={...: False}",
            make_app({"tracing": False, "metrics": False, "logs": False}),
        ),
        Variant("on: all signals (API only)", make_app(api)),
        Variant(
            "on: tracing only (API only)",
            make_app({"tracer_provider": api["tracer_provider"], "metrics": False, "logs": False}),
        ),
        Variant(
            "on: metrics only (API only)",
            make_app({"meter_provider": api["meter_provider"], "tracing": False, "logs": False}),
        ),
    ]
    notes = []
    if installed("opentelemetry.sdk"):
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        tracer_provider = TracerProvider()
        spans = InMemorySpanExporter()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        found.append(
            Variant(
                "on: SDK traces+metrics",
                make_app(
                    {
                        "tracer_provider": tracer_provider,
                        "meter_provider": meter_provider,
                        "logs": False,
                    }
                ),
            )
        )
        notes.append("SDK variant: spans kept in memory (SimpleSpanProcessor), metrics in memory")
    else:
        notes.append(
            "opentelemetry-sdk is not installed: the cost with a recording SDK is not measured "
            "(the 'API only' variants are a lower bound); this script installs nothing"
        )
    if installed("opentelemetry.instrumentation.asgi"):
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        found.append(
            Variant(
                "contrib ASGI middleware",
                OpenTelemetryMiddleware(make_app(None), tracer_provider=api["tracer_provider"]),
            )
        )
    else:
        notes.append(
            "opentelemetry-instrumentation-asgi (the SDK's ASGI middleware) is not installed: "
            "not measured; this script installs nothing"
        )
    return found, notes


# ---------------------------------------------------------------------------
# Drivers: N sequential in-process requests, seconds per request
# ---------------------------------------------------------------------------


def raw_asgi(app: Any) -> Callable[[int], Awaitable[float]]:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def run(n: int) -> float:
        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        started = time.process_time()
        for _ in range(n):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/refund",
                "raw_path": b"/refund",
                "root_path": "",
                "query_string": b"",
                "headers": HEADERS,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
                "state": {},
            }
            await app(scope, receive, send)
        elapsed = time.process_time() - started
        if statuses.count(201) != n:
            raise SystemExit(f"unexpected statuses: {sorted(set(statuses))}")
        return elapsed / n

    return run


def via_httpx(app: Any) -> Callable[[int], Awaitable[float]]:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    headers = {"content-type": "application/json", "authorization": "Bearer sk_otel_bench"}

    async def run(n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            answer = await client.post("/refund", content=BODY, headers=headers)
            if answer.status_code != 201:
                raise SystemExit(f"unexpected answer {answer.status_code}: {answer.text[:200]}")
        return (time.process_time() - started) / n

    return run


DRIVERS = {"asgi": raw_asgi, "httpx": via_httpx}


async def measure(
    found: list[Variant], driver: str, requests: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Each variant's CPU seconds per request (this process's CPU time, which
    other processes do not inflate as they do wall time): the best and the
    median of `rounds` batches. The variants run in a new random order each
    round, after a warm-up."""
    runners = {v.label: DRIVERS[driver](v.app) for v in found}
    per_round = max(1, requests // rounds)
    for run in runners.values():
        await run(min(200, per_round))
    times: dict[str, list[float]] = {label: [] for label in runners}
    order = list(runners)
    for _ in range(rounds):
        random.shuffle(order)
        for label in order:
            gc.collect()
            times[label].append(await runners[label](per_round))
    return {label: (min(t), statistics.median(t)) for label, t in times.items()}


async def run(args: argparse.Namespace) -> None:
    found, notes = variants()
    drivers = ["asgi", "httpx"] if args.driver == "both" else [args.driver]
    print(
        f"FastAPI {fastapi.__version__}: native OpenTelemetry instrumentation: yes "
        "(fastapi/telemetry/, FastAPI(telemetry={...}))"
    )
    print(
        "  on, per signal, when a tracer/meter/logger provider is configured globally or "
        "passed in FastAPI(telemetry=...); off with telemetry={'tracing': False, "
        "'metrics': False, 'logs': False}, per request with telemetry={'exclude': fn}; "
        "no environment variable switches it (FASTAPI_OTEL_AUTO_CONFIGURE only adds OTLP "
        "exporters at startup, with the SDK)"
    )
    print(
        f"  installed: opentelemetry-api {version_of('opentelemetry-api') or '(none)'}, "
        f"opentelemetry-sdk {version_of('opentelemetry-sdk') or '(not installed)'}, "
        "opentelemetry-instrumentation-asgi "
        f"{version_of('opentelemetry-instrumentation-asgi') or '(not installed)'}"
    )
    configured = [
        name
        for name, provider in (
            ("tracer", trace.get_tracer_provider()),
            ("meter", metrics.get_meter_provider()),
            ("logger", _logs.get_logger_provider()),
        )
        if type(provider).__name__ not in ("ProxyTracerProvider", "_ProxyMeterProvider")
        and type(provider).__name__ != "ProxyLoggerProvider"
    ]
    print(
        "  global providers in this process: "
        + (", ".join(configured) if configured else "none (so FastAPI() instruments nothing)")
    )
    results = {}
    for driver in drivers:
        results[driver] = await measure(found, driver, args.requests, args.rounds)
    base = found[0].label
    print(
        f"\nper-request cost: {args.requests:,} sequential in-process requests per variant and "
        f"driver, in {args.rounds} interleaved rounds; POST /refund, pydantic body, one "
        "dependency; CPU µs of this process per request, best round (median round)"
    )
    for driver in drivers:
        title = {"asgi": "raw ASGI calls", "httpx": "httpx.ASGITransport"}[driver]
        print(f"  {title:<30}{'µs/req':>9}{'(median)':>10}{'vs default':>12}{'ratio':>8}")
        base_us = results[driver][base][0] * 1e6
        for variant in found:
            best, median = (t * 1e6 for t in results[driver][variant.label])
            print(
                f"    {variant.label:<28}{best:>9.1f}{f'({median:.1f})':>10}"
                f"{best - base_us:>+12.1f}{best / base_us:>8.2f}"
            )
    print()
    for note in notes:
        print(f"  {note}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per variant")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--driver", choices=["both", "asgi", "httpx"], default="both")
    args = parser.parse_args()
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be positive")
    return args


if __name__ == "__main__":
    asyncio.run(run(arguments()))
