"""Approvals: the refunds waiting for the signed-in approver, oldest first,
with Approve and Reject on each; below, those it cannot decide and why.

Which refunds an approver may decide is the domain's rule (read through
`ConsoleQueries`); this page only words it. The buttons post to the refund's
own actions (`refund_detail`), which bring the person back here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console import wording
from app.console.deps import ConsoleQueriesDep, ViewerDep
from app.console.paging import decode_cursor, encode_cursor, link
from app.console.rendering import render
from app.console.security import base_path
from app.console.viewer import Viewer
from app.domain.console import Flash
from app.services.console_queries import ConsoleQueries
from app.services.console_results import (
    ApprovalItem,
    Page,
)

router = APIRouter()

PAGE_SIZE = 20


@dataclass(frozen=True, slots=True)
class Typed:
    """A decision form sent back to the person: the refund it was for, what
    they typed and why it was refused."""

    refund_id: str
    note: str
    error: Flash


@dataclass(frozen=True, slots=True)
class Card:
    """One refund awaiting approval, worded for the viewer."""

    item: ApprovalItem
    reasons: list[str]
    required: str
    still_open: str
    # In the list of refunds the viewer cannot decide: why, as a sentence.
    why_not: str | None = None
    # In the inbox, when the viewer may approve but not veto: why not.
    no_reject: str | None = None

    @property
    def refund_id(self) -> str:
        return self.item.refund.id


@dataclass(frozen=True, slots=True)
class Cursors:
    """Where each list of the page starts (cursors as the page links carry them)."""

    inbox: str = ""
    blocked: str = ""

    def hidden(self) -> list[tuple[str, str]]:
        """The fields a decision form carries to come back to this very page."""
        return [("from", "approvals"), ("cursor", self.inbox), ("blocked_cursor", self.blocked)]

    def path(self) -> str:
        return link("/approvals", [("cursor", self.inbox), ("blocked_cursor", self.blocked)])


def _card(item: ApprovalItem, viewer: Viewer) -> Card:
    refund = item.refund
    level = viewer.key.effective_approval_level
    why_not = None
    if item.blocked is not None:
        why_not = wording.decision_block(item.blocked, refund, viewer.key.id, level)
    no_reject = None
    if item.blocked is None and not item.can_reject:
        no_reject = wording.cannot_reject(refund, level)
    return Card(
        item=item,
        reasons=[wording.approval_reason(r, refund.currency) for r in item.reasons],
        required=wording.slots(refund.required_approvals),
        still_open=wording.slots(item.open_slots) if item.open_slots else "nothing",
        why_not=why_not,
        no_reject=no_reject,
    )


def _next(request: Request, cursors: Cursors, page: Page[ApprovalItem], *, blocked: bool) -> str:
    if page.next_cursor is None:
        return ""
    following = encode_cursor(page.next_cursor)
    moved = Cursors(cursors.inbox, following) if blocked else Cursors(following, cursors.blocked)
    return base_path(request) + moved.path()


async def show(
    request: Request,
    viewer: Viewer,
    queries: ConsoleQueries,
    cursors: Cursors,
    *,
    status: int = 200,
    typed: Typed | None = None,
) -> Response:
    """The page; with `typed`, the decision form that was refused, filled in
    again with its message (and the message at the top as well)."""
    messages = []
    if typed:
        # The page lists many refunds: the message at the top says which one.
        error = typed.error
        text = f"Refund {typed.refund_id} was not changed. {error.text}"
        messages.append(Flash(error.kind, text, error.code))
    if viewer.key.effective_approval_level is None:
        return render(
            request,
            "approvals.html",
            status=status,
            section="approvals",
            title="Approvals",
            messages=messages,
            approver=False,
        )
    key = viewer.key
    inbox = await queries.approvals_inbox(key, limit=PAGE_SIZE, cursor=decode_cursor(cursors.inbox))
    blocked = await queries.approvals_blocked(
        key, limit=PAGE_SIZE, cursor=decode_cursor(cursors.blocked)
    )
    counts = await queries.approval_counts(key)
    base = base_path(request)
    return render(
        request,
        "approvals.html",
        status=status,
        section="approvals",
        title="Approvals",
        messages=messages,
        approver=True,
        level=key.effective_approval_level,
        counts=counts,
        inbox=[_card(item, viewer) for item in inbox.items],
        blocked=[_card(item, viewer) for item in blocked.items],
        inbox_next=_next(request, cursors, inbox, blocked=False),
        blocked_next=_next(request, cursors, blocked, blocked=True),
        inbox_first=base + Cursors("", cursors.blocked).path() if cursors.inbox else "",
        blocked_first=base + Cursors(cursors.inbox, "").path() if cursors.blocked else "",
        hidden=cursors.hidden(),
        typed=typed,
    )


@router.get("/approvals")
async def approvals(
    request: Request,
    viewer: ViewerDep,
    queries: ConsoleQueriesDep,
    cursor: str = "",
    blocked_cursor: str = "",
) -> Response:
    return await show(request, viewer, queries, Cursors(cursor, blocked_cursor))
