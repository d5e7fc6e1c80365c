"""Events to the store backend: the feed, and the webhook deliveries behind it."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app.api.deps import (
    Cursor,
    EventsDep,
    IdempotencyKeyHeader,
    IdempotentDep,
    Limit,
    Ops,
    StoreOrOps,
    json_bytes,
    json_response,
)
from app.api.docs import AUTH, problems
from app.api.problems import ApiError
from app.api.schemas import DeliveryOut, EventOut, Page, SearchText
from app.services.events import FROM_THE_START
from app.services.idempotency import IdempotencyClaim
from app.services.views import delivery_view, event_view

router = APIRouter(prefix="/v1/events", tags=["events"])

EVENT_TYPES = [
    "refund.created",
    "refund.approval_required",
    "refund.approved",
    "refund.rejected",
    "refund.submitted",
    "refund.pending",
    "refund.unknown",
    "refund.succeeded",
    "refund.failed",
    "refund.offline_required",
    "refund.offline_paid",
    "refund.canceled",
    "refund.needs_attention",
    "payment.dispute_opened",
    "payment.dispute_closed",
]


def _cursor(forward: bool, position: tuple[int, int]) -> str:
    raw = f"e1:{'f' if forward else 'b'}:{position[0]}:{position[1]}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _position(cursor: str) -> tuple[bool, tuple[int, int]]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, direction, tx, seq = raw.split(":")
        if tag != "e1" or direction not in ("f", "b"):
            raise ValueError(raw)
        return direction == "f", (int(tx), int(seq))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(
            422, "validation_error", "Invalid cursor", "cursor is not one we issued"
        ) from None


@router.get(
    "",
    summary="List events",
    response_model=Page[EventOut],
    responses=problems(*AUTH, (404, "`not_found`: `after` names no event"), 422),
)
async def list_events(
    events: EventsDep,
    _key: StoreOrOps,
    after: Annotated[
        str | None,
        Query(
            max_length=40,
            description="an event id: list the events after it, oldest first; "
            "`0` (or empty) to read the feed from its very first event",
        ),
    ] = None,
    type: Annotated[
        list[str] | None,
        Query(description=f"one or more of: {', '.join(EVENT_TYPES)}"),
    ] = None,
    refund_id: Annotated[SearchText, Query(max_length=40)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Every refund status change, as an event with the refund as it was after
    it, and every dispute opened or closed on a payment
    (`payment.dispute_opened`, `payment.dispute_closed`: no `refund_id`, the
    dispute and the payment in `data`).

    Without `after`: newest first (browse). With `after=<the last event id you
    processed>` (or `after=0` to start from the first event ever): oldest first
    from just after it, with no gaps (an event is
    listed only once every transaction that could still write an earlier one
    has finished), so a store pages forward with `after`, then `cursor` while
    `next_cursor` is not null, and never misses an event.

    A key scoped to PSE accounts reads only the events of their payments and
    refunds (an event of another account is 404, as an unknown one)."""
    for name in type or []:
        if name not in EVENT_TYPES:
            raise ApiError(422, "validation_error", "Unknown event type", f"no event type {name}")
    types = type or []
    if cursor is not None:
        forward, position = _position(cursor)
    elif after is not None:
        start = after or FROM_THE_START
        forward, position = True, await events.position_of(start)
    else:
        forward, position = False, None
    if forward:
        assert position is not None
        items = await events.list_forward(
            after=position, types=types, refund_id=refund_id, limit=limit + 1
        )
    else:
        items = await events.list_backward(
            before=position, types=types, refund_id=refund_id, limit=limit + 1
        )
    more = len(items) > limit
    items = items[:limit]
    next_cursor = _cursor(forward, items[-1].position) if more and items else None
    return json_response(200, {"data": [event_view(e) for e in items], "next_cursor": next_cursor})


@router.get(
    "/{event_id}",
    summary="Get an event",
    response_model=EventOut,
    responses=problems(*AUTH, 404),
)
async def get_event(event_id: str, events: EventsDep, _key: StoreOrOps) -> Response:
    """One event with its delivery state."""
    return json_response(200, event_view(await events.get(event_id)))


@router.get(
    "/{event_id}/deliveries",
    summary="Delivery attempts of an event",
    response_model=list[DeliveryOut],
    responses=problems(*AUTH, 404),
)
async def list_deliveries(event_id: str, events: EventsDep, _key: StoreOrOps) -> Response:
    """Every attempt to POST the event to the store's webhook: time, status code,
    duration and error."""
    attempts = await events.attempts(event_id)
    return json_response(200, [delivery_view(a) for a in attempts])


@router.post(
    "/{event_id}/redeliver",
    summary="Deliver an event again",
    response_model=EventOut,
    responses=problems(
        *AUTH,
        404,
        (409, "`idempotency_key_in_use`"),
        (422, "`validation_error`; `idempotency_key_reused`"),
    ),
)
async def redeliver_event(
    event_id: str,
    request: Request,
    events: EventsDep,
    idem: IdempotentDep,
    key: Ops,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Queue the event for delivery again now (after it `failed`, or to replay it
    to a store that lost it). The worker sends it with the same `webhook-id`."""

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        return 200, json_bytes(event_view(await events.redeliver(event_id)))

    return await idem(key, idempotency_key, handler)
