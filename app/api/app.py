"""The FastAPI application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from app.api import problems, protocol
from app.api.guard import RateLimits, RequestGuard
from app.api.metrics_access import MetricsPortGate
from app.api.middleware import RequestContextMiddleware, send_refusal
from app.api.routes import audit, events, ops, payments, reconciliations, refunds, webhooks
from app.bootstrap import Container
from app.console.app import console_mount

DESCRIPTION = """
Owns the refund lifecycle between a store backend and its PSEs (KOMOJU,
PAY.JP, Xendit, Razorpay, Omise, Stripe…): refund rules, approvals, calls to
the PSE with idempotency keys, webhooks, and an honest `unknown` state that
the service resolves by itself.

**Auth**: `Authorization: Bearer <api key>`; keys have roles `store`,
`approver` (level 1-3), `ops`, `admin` (`pse-refunds keys create`).
**Money**: integers in the currency's minor unit (JPY 1500 = ¥1,500; USD 1500 = $15.00).
**Errors**: `application/problem+json` with a stable `code`.
**Idempotency**: `Idempotency-Key` is required on `POST /v1/refunds` and accepted on every POST.
"""

TAGS = [
    {
        "name": "payments",
        "description": "The captured payments refunds are made against, and their disputes.",
    },
    {"name": "refunds", "description": "Request, approve, cancel, pay out and follow refunds."},
    {"name": "webhooks", "description": "Signed notifications from PSEs."},
    {
        "name": "events",
        "description": "Every refund change and payment dispute, as a feed and as signed "
        "webhooks to the store.",
    },
    {
        "name": "reconciliation",
        "description": "Settlement files against our refunds; FX differences and fees.",
    },
    {"name": "audit", "description": "The tamper-evident audit trail."},
    {"name": "operations", "description": "Health, readiness and the active policy."},
]


def create_app(
    container: Container,
    *,
    extra_mounts: dict[str, Any] | None = None,
    run_worker: bool = False,
) -> FastAPI:
    """Build the app around a container. When served, the app runs the
    background worker (if `run_worker` and `[worker] enabled`) and the
    listener of key revocations, and closes the container on shutdown, after
    the worker's pass under way has finished."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        # Key revocations made by any process, heard at once: the key cache
        # is trusted only while they are (KeyService.follow_revocations).
        revocations_task = asyncio.create_task(container.follow_revocations(stop))
        worker_task = None
        if run_worker and container.settings.worker.enabled:
            worker_task = asyncio.create_task(container.worker.run(stop))
        audit_stop = asyncio.Event()
        audit_task = asyncio.create_task(container.audit.run(audit_stop))
        gauges_stop = asyncio.Event()
        gauges_task = None
        if container.shares_metrics:
            gauges_task = asyncio.create_task(container.publish_process_gauges(gauges_stop))
        try:
            yield
        finally:
            stop.set()
            if worker_task is not None:
                await worker_task
            await revocations_task
            await container.aclose()
            audit_stop.set()
            await audit_task
            for mounted in (extra_mounts or {}).values():
                closer = getattr(getattr(mounted, "state", None), "sandbox", None)
                if closer is not None:
                    await closer.aclose()
            if gauges_task is not None:
                gauges_stop.set()
                await gauges_task

    # Swagger UI and ReDoc come from the installed package, never from a CDN:
    # the docs work on a closed network.
    app = FastAPIOffline(
        title="PSE Refund Service",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
        static_url="/docs/static",
    )
    app.state.container = container
    # Each serving process builds its app before it accepts a connection.
    protocol.configure(container.settings.server)
    # What tells the database being out of reach comes from the composition
    # root: the API never reaches into the database adapter.
    problems.install(app, container.unavailable, container.unavailable_candidates)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.include_router(ops.router)
    app.include_router(payments.router)
    app.include_router(refunds.router)
    app.include_router(webhooks.router)
    app.include_router(events.router)
    app.include_router(reconciliations.router)
    app.include_router(audit.router)
    # The PSEs' webhooks are matched first, by a route of their own (see
    # routes/webhooks.py); the route above documents them.
    app.router.routes.insert(0, webhooks.lane(container.webhooks))
    # The console is an app of its own: its errors are pages, not problem+json.
    app.router.routes.append(console_mount(container))
    for path, mounted in (extra_mounts or {}).items():
        app.mount(path, mounted)
    # Inside the request context (request id, access log, audit): who calls,
    # and how often, is settled before any route runs or any body is read.
    app.add_middleware(
        RequestGuard,
        limits=RateLimits(container.settings.rate_limits),
        authenticate=container.keys.authenticate,
        refuse=send_refusal,
        on_refused=lambda reason: container.deps.metrics.requests_refused.labels(reason).inc(),
    )
    if container.settings.metrics_port is not None:
        # The metrics listener serves /metrics alone; outside the guard, so that
        # every other path there is a 404 whatever key it carries.
        app.add_middleware(MetricsPortGate, port=container.settings.metrics_port)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=container.settings.max_body_bytes,
        max_upload_bytes=container.settings.max_upload_bytes,
        # Settlement files may be large: the API's upload and the console's.
        upload_paths=("/v1/reconciliations", "/console/reconciliations"),
        audit=container.audit,
        body_timeout_seconds=container.settings.server.body_timeout_seconds,
        unavailable=container.unavailable,
    )
    return app


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_GUARDED: dict[str, dict[str, Any]] = {
    "429": {
        "description": "`rate_limited`: a rate limit of the key, the client address or the "
        "PSE account is spent; retry after `Retry-After` seconds",
        "headers": _RETRY_AFTER,
    },
    "503": {
        "description": "`unavailable`: the database cannot be reached just now; nothing was "
        "done, retry after `Retry-After` seconds",
        "headers": _RETRY_AFTER,
    },
}
_BODY_TIMEOUT = {"description": "`request_timeout`: the body did not arrive in time"}


def _with_schema(answer: dict[str, Any], problem: dict[str, Any]) -> dict[str, Any]:
    return {**answer, "content": {"application/problem+json": {"schema": problem}}}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document, told the truth about our errors: every 422 is
    problem+json (the framework's default validation schema is never sent), and
    `Idempotency-Key` is required on `POST /v1/refunds` (a request without it
    gets 400 `idempotency_key_required`)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.get("responses", {})
            if path.startswith("/v1/"):
                # Answered by the layers in front of every route (app/api/guard.py,
                # the middleware): documented on each operation they guard.
                for status, answer in _GUARDED.items():
                    responses.setdefault(status, _with_schema(answer, problem))
                if "requestBody" in operation:
                    responses.setdefault("408", _with_schema(_BODY_TIMEOUT, problem))
            if "422" in responses:
                described = responses["422"].get("description", "")
                if described == "Validation Error":
                    described = "`validation_error`: the body, query or headers are not valid"
                example = (
                    responses["422"].get("content", {}).get("application/problem+json", {})
                ).get("example")
                content: dict[str, Any] = {"schema": problem}
                if example is not None:
                    content["example"] = example
                responses["422"] = {
                    "description": described,
                    "content": {"application/problem+json": content},
                }
            if path == "/v1/refunds" and method == "post":
                for parameter in operation.get("parameters", []):
                    if parameter.get("name") == "Idempotency-Key":
                        parameter["required"] = True
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema
