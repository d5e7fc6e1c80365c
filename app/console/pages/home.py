"""Home: how long each queue is, and today's refunds by status."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console.deps import ClockDep, OperationsDep, RefundsDep, ViewerDep
from app.console.rendering import render
from app.domain.models import RefundStatus
from app.services.refunds import RefundService

router = APIRouter()

# Lists are read a page at a time; past this many the page says "or more"
# rather than read on.
COUNT_CAP = 1000
_PAGE = 200


@dataclass(frozen=True, slots=True)
class Queue:
    label: str
    count: int
    path: str
    explains: str
    more: bool = False  # the count stopped at the cap


@dataclass(frozen=True, slots=True)
class Tally:
    counts: list[tuple[RefundStatus, int]]
    total: int
    since: datetime
    more: bool


async def _count_flagged(refunds: RefundService) -> tuple[int, bool]:
    flagged = await refunds.list(
        statuses=[],
        payment_id=None,
        created_from=None,
        created_to=None,
        stale=False,
        limit=COUNT_CAP + 1,
        before_id=None,
        needs_attention=True,
    )
    return min(len(flagged), COUNT_CAP), len(flagged) > COUNT_CAP


async def _today(refunds: RefundService, now: datetime) -> Tally:
    since = now.replace(hour=0, minute=0, second=0, microsecond=0)
    by_status: Counter[RefundStatus] = Counter()
    seen, before_id, more = 0, None, False
    while True:
        batch = await refunds.list(
            statuses=[],
            payment_id=None,
            created_from=since,
            created_to=None,
            stale=False,
            limit=_PAGE,
            before_id=before_id,
        )
        by_status.update(refund.status for refund in batch)
        seen += len(batch)
        if len(batch) < _PAGE:
            break
        if seen >= COUNT_CAP:
            more = True
            break
        before_id = batch[-1].id
    counts = [(status, by_status[status]) for status in RefundStatus if by_status[status]]
    return Tally(counts, seen, since, more)


@router.get("/")
async def home(
    request: Request,
    viewer: ViewerDep,
    refunds: RefundsDep,
    operations: OperationsDep,
    clock: ClockDep,
) -> Response:
    open_counts, stale = await operations.open_counts()
    flagged, flagged_more = await _count_flagged(refunds)
    queues = [
        Queue(
            "Waiting for approval",
            open_counts.get(RefundStatus.PENDING_APPROVAL.value, 0),
            "/approvals",
            "pending_approval: approvers decide",
        ),
        Queue("Stale", stale, "/attention", "not final and older than the SLA"),
        Queue(
            "Unknown at the PSE",
            open_counts.get(RefundStatus.UNKNOWN.value, 0),
            "/attention",
            "unknown: the service is finding out",
        ),
        Queue(
            "Needs attention",
            flagged,
            "/attention",
            "flagged for a person to look at",
            more=flagged_more,
        ),
        Queue(
            "Offline payout",
            open_counts.get(RefundStatus.OFFLINE_REQUIRED.value, 0),
            "/attention",
            "offline_required: ops pays out another way",
        ),
    ]
    return render(
        request,
        "home.html",
        section="home",
        queues=queues,
        today=await _today(refunds, clock.now()),
    )
