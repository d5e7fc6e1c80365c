"""Health, readiness and the active policy."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import Admin, ContainerDep, json_response
from app.api.docs import AUTH, problems
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
async def readyz(request: Request, container: ContainerDep) -> Response:
    """200 when the database answers and its schema is at the migrations' head."""
    ready, detail = await container.readiness()
    if not ready:
        return problem_response(503, "not_ready", "Not ready", detail, request_id_of(request))
    return json_response(200, {"status": "ready", "schema": detail})


@router.get(
    "/v1/policy",
    summary="The active refund policy",
    response_model=PolicyOut,
    responses=problems(*AUTH),
)
async def get_policy(container: ContainerDep, _key: Admin) -> Response:
    """The policy in force: window, caps, approval tiers, and each PSE account's
    provider and window. Secrets are never shown."""
    settings = container.settings
    policy = settings.policy
    return json_response(
        200,
        {
            "refund_window_days": policy.refund_window_days,
            "max_refund_amount": policy.max_refund_amount,
            "daily_auto_approve_limit": policy.daily_auto_approve_limit,
            "approval_tiers": [tier.model_dump() for tier in policy.approval_tiers],
            "offline_payment_methods": policy.offline_payment_methods,
            "rates": {
                pair: {"rate": rate.rate, "as_of": rate.as_of.isoformat()}
                for pair, rate in policy.rates.items()
            },
            "rate_max_age_days": policy.rate_max_age_days,
            "accounts": {
                name: {
                    "provider": account.provider,
                    "refund_window_days": account.refund_window_days or policy.refund_window_days,
                    "timeout_seconds": account.timeout_seconds,
                    "max_attempts": account.max_attempts,
                }
                for name, account in settings.accounts.items()
            },
            "stale_after_hours": settings.stale_after_hours,
        },
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(container: ContainerDep) -> Response:
    """Refunds created and finished by status and account, PSE call latency and
    outcomes, retries, webhooks received by verification result, store webhook
    deliveries and lag, and the refunds currently open by status and stale.
    Expose it to your Prometheus only (it carries no secret, but business volumes)."""
    body = await container.metrics_text()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
