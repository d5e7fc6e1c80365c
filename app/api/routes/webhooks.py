"""Webhooks from PSEs, authenticated by each provider's own signature scheme."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.api.deps import (
    WebhooksDep,
    json_response,
)
from app.api.docs import problems
from app.api.schemas import WebhookAck
from app.services.webhooks import WebhookReceipt, WebhookService

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post(
    "/{pse_account}",
    summary="Receive a PSE webhook",
    response_model=WebhookAck,
    responses=problems(
        (
            400,
            "`invalid_signature`: missing or wrong signature, or a timestamp outside the "
            "tolerance; `invalid_webhook_payload`: not an event of this PSE",
        ),
        (404, "`not_found`: no such PSE account"),
        413,
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object"},
                    "example": {
                        "id": "evt_1",
                        "type": "refund.succeeded",
                        "data": {"id": "sbre_1", "status": "succeeded"},
                    },
                }
            },
        }
    },
)
async def receive_webhook(
    pse_account: str,
    request: Request,
    webhooks: WebhooksDep,
) -> Response:
    """No API key: the request is authenticated by the signature scheme of the
    account's provider (Stripe-Signature, Standard Webhooks for the sandbox…),
    with every configured secret accepted during rotation.

    The raw event is stored before the answer, with what became of it: in
    the transaction that applies it, or alone (`received`) for the worker to
    apply when applying it fails. A repeated event id answers 200 and is
    applied once (`duplicate: true`: nothing changes). Events for refunds not
    yet known are kept and applied when the refund appears. An event that
    contradicts a final status changes nothing and raises
    `refund.needs_attention` (`status: conflict`).

    Matching: by the PSE's refund id first; by our reference only while our
    refund has no PSE id yet and only when payment, currency and amount agree.
    Any other event naming our refund is recorded (`status: mismatched`),
    changes nothing, and raises `refund.needs_attention`.

    A dispute (chargeback) event, where the provider's adapter reads them, is
    applied to the payment it names (by any of the PSE's ids of it) as
    `POST /v1/payments/{id}/disputes` would (source `pse`); a dispute of a
    payment not registered here is `ignored`, one that does not fit its
    payment (another currency, above its amount) is `mismatched`."""
    body = await request.body()
    return _ack(await webhooks.receive(pse_account, dict(request.headers), body))


def _ack(receipt: WebhookReceipt) -> Response:
    return json_response(
        200,
        {
            "received": True,
            "event_id": receipt.event_id,
            "duplicate": receipt.duplicate,
            "status": receipt.status.value if receipt.status else None,
        },
    )


class WebhookLane:
    """`POST /v1/webhooks/{pse_account}` as a plain ASGI app, placed before the
    framework's routes: PSEs send more requests than anyone else, and this
    one needs nothing of the framework's per-request work (its routing through
    the included routers, dependency solving, parameter validation). Inside
    the same middleware as every route (request id, access log, body limit
    and timeout, rate limits), and its errors go to the same handlers, so it
    answers exactly as `receive_webhook` above, which documents it in
    OpenAPI and which it shares `_ack` and the service with."""

    def __init__(self, service: WebhookService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = await request.body()
        receipt = await self.service.receive(
            request.path_params["pse_account"], dict(request.headers), body
        )
        await _ack(receipt)(scope, receive, send)


def lane(service: WebhookService) -> Route:
    """The route of `WebhookLane`, to go first among the app's routes."""
    return Route(
        f"{router.prefix}/{{pse_account}}",
        WebhookLane(service),
        methods=["POST"],
        include_in_schema=False,
    )
