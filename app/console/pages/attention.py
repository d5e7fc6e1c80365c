"""Attention: the queues ops must clear, each with its count and its oldest
first, and Redeliver for the events the store never accepted. Open disputes
come first, the soonest evidence deadline first, the overdue ones marked.

Acknowledging a flag and recording an offline payout happen on the refund's
own page (with its timeline in view); each queue links there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console.deps import ActDep, ConsoleQueriesDep, ViewerDep
from app.console.formatting import error_message
from app.console.paging import decode_cursor, encode_cursor, link
from app.console.rendering import render
from app.console.security import base_path
from app.domain.errors import DomainError, InvalidInput
from app.domain.records import Role
from app.services.console_queries import ConsoleQueries
from app.services.console_results import (
    AttentionCounts,
    AttentionQueue,
    Page,
)

router = APIRouter()

# Each queue shows this many at a time; "Next page" pages one queue through.
PAGE_SIZE = 20
DELIVERIES = "failed_deliveries"
DISPUTES = "open_disputes"


@dataclass(frozen=True, slots=True)
class Section:
    key: str
    title: str
    explains: str
    count: int
    page: Page[Any]
    next_url: str | None
    first_url: str | None
    # For refund queues: the column naming what to do on the refund's page.
    next_step: str | None = None
    attention: bool = False


# (queue, title, what it holds, next step on the refund's page)
_QUEUES = (
    (
        AttentionQueue.STALE,
        "Stale",
        "Not final and older than the SLA: find out where each stands before the customer "
        "opens a chargeback.",
        None,
    ),
    (
        AttentionQueue.UNKNOWN,
        "Unknown at the PSE",
        "The PSE's answer was lost (a timeout, a crash): the service asks again by itself; "
        "Sync now on the refund's page asks at once.",
        None,
    ),
    (
        AttentionQueue.NEEDS_ATTENTION,
        "Needs attention",
        "Flagged for a person: read why, act on the refund if it needs it, then acknowledge it.",
        "Acknowledge",
    ),
    (
        AttentionQueue.OFFLINE_REQUIRED,
        "Offline payout",
        "The PSE cannot refund these (past its window, or a payment method it cannot "
        "refund): pay out another way, then record the payout.",
        "Record offline payout",
    ),
)


QUEUE_KEYS = (DISPUTES, *(queue.value for queue, *_ in _QUEUES), DELIVERIES)


def _count(counts: AttentionCounts, key: str) -> int:
    value: int = getattr(counts, key)
    return value


def _links(base: str, key: str, page: Page[Any], paged: bool) -> tuple[str | None, str | None]:
    next_url = None
    if page.next_cursor is not None:
        next_url = link(
            f"{base}/attention", [("queue", key), ("cursor", encode_cursor(page.next_cursor))]
        )
        next_url += f"#{key}"
    first_url = f"{base}/attention#{key}" if paged else None
    return next_url, first_url


async def _sections(
    queries: ConsoleQueries, base: str, paged_queue: str | None, cursor: str | None
) -> list[Section]:
    counts = await queries.attention_counts()
    paged = paged_queue == DISPUTES
    disputes = await queries.open_disputes(limit=PAGE_SIZE, cursor=cursor if paged else None)
    next_url, first_url = _links(base, DISPUTES, disputes, paged)
    overdue = counts.overdue_disputes
    sections = [
        Section(
            DISPUTES,
            "Open disputes",
            "Chargebacks the customer's bank has opened, the soonest evidence deadline first: "
            "answer each at the PSE before its deadline. While one is open its payment takes "
            "no new refund and its refunds not yet sent are held."
            + (f" {overdue:,} past the deadline." if overdue else ""),
            counts.open_disputes,
            disputes,
            next_url,
            first_url,
        )
    ]
    for queue, title, explains, next_step in _QUEUES:
        paged = paged_queue == queue.value
        page = await queries.attention(queue, limit=PAGE_SIZE, cursor=cursor if paged else None)
        next_url, first_url = _links(base, queue.value, page, paged)
        sections.append(
            Section(
                queue.value,
                title,
                explains,
                _count(counts, queue.value),
                page,
                next_url,
                first_url,
                next_step=next_step,
                attention=queue is AttentionQueue.NEEDS_ATTENTION,
            )
        )
    paged = paged_queue == DELIVERIES
    deliveries = await queries.failed_deliveries(
        limit=PAGE_SIZE, cursor=cursor if paged else None, oldest_first=True
    )
    next_url, first_url = _links(base, DELIVERIES, deliveries, paged)
    sections.append(
        Section(
            DELIVERIES,
            "Failed deliveries to the store",
            "Events the store's webhook did not accept within the retry window. Once the "
            "store is answering again, Redeliver queues an event again (same webhook-id).",
            counts.failed_deliveries,
            deliveries,
            next_url,
            first_url,
        )
    )
    return sections


@router.get("/attention")
async def attention(
    request: Request,
    viewer: ViewerDep,
    queries: ConsoleQueriesDep,
    queue: str | None = None,
    cursor: str | None = None,
) -> Response:
    base = base_path(request)
    messages, status = [], 200
    try:
        if queue is not None and queue not in QUEUE_KEYS:
            raise InvalidInput(
                f"there is no queue {queue[:40]!r}; the queues are {', '.join(QUEUE_KEYS)}"
            )
        sections = await _sections(queries, base, queue, decode_cursor(cursor))
    except DomainError as error:
        # A page link edited by hand: every queue from its start, and why.
        messages, status = [error_message(error)], 422
        sections = await _sections(queries, base, None, None)
    return render(
        request,
        "attention.html",
        status=status,
        section="attention",
        messages=messages,
        sections=sections,
        can_redeliver=viewer.can(Role.OPS),
    )


@router.post("/attention/deliveries/{event_id}/redeliver")
async def redeliver(event_id: str, act: ActDep, queries: ConsoleQueriesDep) -> Response:
    async def call() -> Any:
        # The API's rule: redelivery is for ops (an admin has every role).
        act.viewer.require(Role.OPS)
        return await queries.redeliver(event_id, act.viewer.actor)

    return await act(
        call,
        done=lambda event: (
            f"Event {event.id} ({event.type}) is queued for delivery to the store again."
        ),
        back=f"/attention#{DELIVERIES}",
    )
