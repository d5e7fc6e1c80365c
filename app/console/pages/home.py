"""Home: how long each queue is (the viewer's own inbox first), today's
refunds by status, how long refunds take and how much of what was paid is
refunded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console import wording
from app.console.deps import ClockDep, ConsoleQueriesDep, OperationsDep, ViewerDep
from app.console.rendering import render
from app.domain.models import RefundStatus
from app.services.console_figures import WINDOWS_DAYS
from app.services.console_results import (
    RefundRate,
    TimeToRefund,
)

router = APIRouter()


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


def _tally(by_status: dict[str, int], since: datetime) -> Tally:
    counts = [
        (status, by_status[status.value]) for status in RefundStatus if by_status.get(status.value)
    ]
    return Tally(counts, sum(count for _, count in counts), since, more=False)


@router.get("/")
async def home(
    request: Request,
    viewer: ViewerDep,
    operations: OperationsDep,
    queries: ConsoleQueriesDep,
    clock: ClockDep,
) -> Response:
    open_counts, stale = await operations.open_counts()
    # One GROUP BY each, however many refunds there are.
    attention = await queries.attention_counts()
    flagged = attention.needs_attention
    now = clock.now()
    today = _tally(
        await queries.refunds_today(), now.replace(hour=0, minute=0, second=0, microsecond=0)
    )
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
        ),
        Queue(
            "Offline payout",
            open_counts.get(RefundStatus.OFFLINE_REQUIRED.value, 0),
            "/attention",
            "offline_required: ops pays out another way",
        ),
        Queue(
            "Open disputes",
            attention.open_disputes,
            "/attention#open_disputes",
            (
                f"chargebacks: {attention.overdue_disputes:,} past the evidence deadline"
                if attention.overdue_disputes
                else "chargebacks to answer before their evidence deadline"
            ),
        ),
    ]
    return render(
        request,
        "home.html",
        section="home",
        queues=queues,
        today=today,
        windows=WINDOWS_DAYS,
        speeds=_speeds(await queries.time_to_refund()),
        rates=_rates(await queries.refund_rate()),
        duration=wording.duration,
        percent=wording.percent,
    )
