"""Health, readiness and the active policy."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import Admin, OperationsDep, json_response
from app.api.docs import AUTH, problems
from app.api.metrics_access import METRICS_PATH, metrics_refusal
from app.api.problems import problem_response, request_id_of
from app.api.schemas import PolicyOut

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness", responses={200: {"description": "The process lives"}})
async def healthz() -> Response:
    """Answers 200 while the process runs; checks nothing else."""
    return json_response(200, {"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness",
    responses={
        200: {"description": "Database reachable, schema at head"},
        **problems((503, "`not_ready`: database unreachable or schema not at head")),
    },
)
async def readyz(request: Request, operations: OperationsDep) -> Response:
    """200 when the database answers and its schema is at the migrations' head."""
    ready, detail = await operations.readiness()
    if not ready:
        return problem_response(503, "not_ready", "Not ready", detail, request_id_of(request))
    return json_response(200, {"status": "ready", "schema": detail})


@router.get(
    "/v1/policy",
    summary="The active refund policy",
    response_model=PolicyOut,
    responses=problems(*AUTH),
)
async def get_policy(operations: OperationsDep, _key: Admin) -> Response:
    """The policy in force: window, caps, approval tiers, operator exchange
    rates, and each PSE account's provider and window. Secrets are never shown."""
    return json_response(200, operations.policy())


@router.get(
    METRICS_PATH,
    summary="Prometheus metrics",
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        **problems(
            (401, "`unauthorized`: `metrics_token` is set and the scrape does not carry it"),
            (
                404,
                "`not_found`: not served here (neither `metrics_token` nor `metrics_port` set, "
                "or `metrics_port` set and this is not that port)",
            ),
        ),
    },
)
async def metrics(request: Request, operations: OperationsDep) -> Response:
    """Refunds created and finished by status and account, PSE call latency and
    outcomes, retries, webhooks received by verification result, store webhook
    deliveries and lag, and the refunds currently open by status and stale.

    Not served by default (404): it carries no secret, but business volumes.
    With `metrics_token` set, a scrape sends `Authorization: Bearer <metrics_token>`
    (else 401); with `metrics_port` set, `serve` answers it on that port only."""
    refusal = metrics_refusal(request, operations.settings)
    if refusal is not None:  # before any query: a refused scrape costs nothing
        return refusal
    body = await operations.metrics_text()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
