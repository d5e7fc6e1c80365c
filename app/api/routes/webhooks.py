"""Webhooks from PSEs, authenticated by each provider's own signature scheme."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import (
    WebhooksDep,
    json_response,
)
from app.api.docs import problems
from app.api.schemas import WebhookAck

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

    The raw event is stored before it is applied; a repeated event id answers
    200 and is applied once. Events for refunds not yet known are kept and
    applied when the refund appears. An event that contradicts a final status
    changes nothing and raises `refund.needs_attention` (`status: conflict`).

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
    receipt = await webhooks.receive(pse_account, dict(request.headers), body)
    return json_response(
        200,
        {
            "received": True,
            "event_id": receipt.event_id,
            "duplicate": receipt.duplicate,
            "status": receipt.status.value if receipt.status else None,
        },
    )
