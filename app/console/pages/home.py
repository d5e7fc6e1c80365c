"""Home: how long each queue is (the viewer's own inbox first), today's
refunds by status, how long refunds take and how much of what was paid is
refunded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console import wording
from app.console.deps import ClockDep, ConsoleQueriesDep, OperationsDep, RefundsDep, ViewerDep
from app.console.rendering import render
from app.domain.models import RefundStatus
from app.services.console_queries import WINDOWS_DAYS, RefundRate, TimeToRefund
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


@dataclass(frozen=True, slots=True)
class Speed:
    """Time to refund of one PSE account, by window (days); a window without
    a succeeded refund is missing."""

    pse_account: str
    by_window: dict[int, TimeToRefund]


@dataclass(frozen=True, slots=True)
class Rate:
    """The refund rate of one currency, by window (days)."""

    currency: str
    by_window: dict[int, RefundRate]


def _speeds(times: list[TimeToRefund]) -> list[Speed]:
    accounts: dict[str, dict[int, TimeToRefund]] = {}
    for found in times:
        accounts.setdefault(found.pse_account, {})[found.window_days] = found
    return [Speed(account, accounts[account]) for account in sorted(accounts)]


def _rates(rates: list[RefundRate]) -> list[Rate]:
    currencies: dict[str, dict[int, RefundRate]] = {}
    for found in rates:
        currencies.setdefault(found.currency, {})[found.window_days] = found
    return [Rate(currency, currencies[currency]) for currency in sorted(currencies)]


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
    queries: ConsoleQueriesDep,
    clock: ClockDep,
) -> Response:
    open_counts, stale = await operations.open_counts()
    flagged, flagged_more = await _count_flagged(refunds)
    mine: list[Queue] = []
    if viewer.key.effective_approval_level is not None:
        approvals = await queries.approval_counts(viewer.key)
        mine.append(Queue("Waiting for you", approvals.inbox, "/approvals", "yours to decide"))
    queues = [
        *mine,
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
        windows=WINDOWS_DAYS,
        speeds=_speeds(await queries.time_to_refund()),
        rates=_rates(await queries.refund_rate()),
        duration=wording.duration,
        percent=wording.percent,
    )
