"""One refund: everything known about it, its timeline, and the buttons its
status and the viewer's role allow (`ConsoleQueries.refund_detail`).

Each button posts to an address of the refund mirroring the API's
(`/refunds/{id}/approve`, `/reject`, `/cancel`, `/sync`, `/offline-payout`,
`/acknowledge`) and runs the same service call as the API, with the API's
roles. A form whose input the service refuses (a rejection without its note)
is shown again with what was typed; otherwise the person is sent back to the
page the form was on, with the outcome as its message.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from app.console import inputs, wording
from app.console.actions import Act, redirect
from app.console.deps import (
    ActDep,
    ConsoleDep,
    ConsoleQueriesDep,
    RefundsDep,
    SubmissionsDep,
    ViewerDep,
)
from app.console.pages import approvals
from app.console.rendering import render
from app.console.viewer import Viewer
from app.domain.console import Flash
from app.domain.errors import InvalidInput, NotFound
from app.domain.models import Refund, RefundStatus
from app.domain.records import Role
from app.domain.times import RANGE, in_range
from app.services.console import ConsoleService
from app.services.console_queries import ConsoleQueries
from app.services.console_results import (
    RefundAction,
    RefundDetail,
)
from app.services.timeline import (
    TimelineEntry,
    TimelineKind,
)

router = APIRouter()

# As the API's request bodies allow.
NOTE_MAX = 1000
REFERENCE_MAX = 255

# How a refused action answers when its form is shown again.
_STATUS_BY_CODE = {
    "validation_error": 422,
    "forbidden": 403,
    "self_approval_forbidden": 403,
    "approval_level_insufficient": 403,
    "not_found": 404,
    "invalid_state": 409,
    "already_decided": 409,
    "payment_disputed": 409,
}

TIMELINE_LABELS = {
    TimelineKind.STATUS: "Status",
    TimelineKind.APPROVAL: "Approval",
    TimelineKind.PSE_CALL: "PSE call",
    TimelineKind.PSE_WEBHOOK: "PSE webhook",
    TimelineKind.STORE_EVENT: "Store event",
    TimelineKind.STORE_DELIVERY: "Delivery to the store",
    TimelineKind.API_REQUEST: "API request",
    TimelineKind.NOTE: "Note",
    TimelineKind.DISPUTE: "Dispute",
}
# Details shown as blocks of text (bodies, headers), the rest as short values.
_BLOCK_DETAILS = ("request_body", "response_body", "headers", "refund", "metadata")


@dataclass(frozen=True, slots=True)
class Typed:
    """A form of the refund page sent back: which one, its values, why refused."""

    form: str  # "decide" | "cancel" | "offline_payout" | "acknowledge"
    values: dict[str, str]
    error: Flash


@dataclass(frozen=True, slots=True)
class Line:
    """One entry of the timeline, ready to show."""

    entry: TimelineEntry
    label: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    blocks: list[tuple[str, str]] = field(default_factory=list)


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str):
        # A body is JSON more often than not: indented, it can be read.
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                return json.dumps(json.loads(stripped), indent=2, ensure_ascii=False)
            except ValueError:
                return value
        return value
    return str(value)


def _line(entry: TimelineEntry) -> Line:
    facts, blocks = [], []
    for name, value in entry.details.items():
        if value is None or value == "" or value == {} or value == []:
            continue
        label = name.replace("_", " ")
        if name in _BLOCK_DETAILS or isinstance(value, dict | list):
            blocks.append((label, _shown(value)))
        else:
            facts.append((label, _shown(value)))
    return Line(entry, TIMELINE_LABELS.get(entry.kind, entry.kind.value), facts, blocks)


async def show(
    request: Request,
    viewer: Viewer,
    queries: ConsoleQueries,
    refund_id: str,
    *,
    status: int = 200,
    typed: Typed | None = None,
) -> Response:
    try:
        detail: RefundDetail = await queries.refund_detail(refund_id, viewer.key)
    except NotFound:
        text = (
            f"There is no refund {refund_id[:60]!r}. Check the id, or find the refund "
            "on the Refunds page."
        )
        return render(
            request,
            "error.html",
            status=404,
            title="No such refund",
            messages=[Flash("error", text, "not_found")],
        )
    refund = detail.refund
    level = viewer.key.effective_approval_level
    why_not = None
    if detail.decision_block is not None:
        why_not = wording.decision_block(detail.decision_block, refund, viewer.key.id, level)
    actions = detail.actions
    no_reject = None
    if RefundAction.APPROVE in actions and RefundAction.REJECT not in actions:
        no_reject = wording.cannot_reject(refund, level)
    values = typed.values if typed else {}
    held = wording.held(refund) if detail.hold is not None else None
    return render(
        request,
        "refund.html",
        status=status,
        section="refunds",
        title=f"Refund {refund.id}",
        messages=[typed.error] if typed else [],
        detail=detail,
        refund=refund,
        payment=detail.payment,
        actions={action.value for action in actions},
        why_not=why_not,
        no_reject=no_reject,
        held=held,
        hold=detail.hold,
        disputes=detail.disputes,
        open_disputes=detail.open_disputes,
        reasons=[wording.approval_reason(r, refund.currency) for r in detail.approval_reasons],
        required=wording.slots(refund.required_approvals),
        still_open=wording.slots(refund.open_slots) if refund.open_slots else "",
        decisions=sorted(refund.approvals, key=lambda a: a.at),
        created_by=refund.history[0].actor if refund.history else refund.created_by,
        lines=[_line(entry) for entry in detail.timeline.entries],
        truncated=detail.timeline.truncated,
        typed=typed,
        values=values,
        invalid=typed.form if typed else "",
        hidden=[("from", "refund")],
    )


@router.get("/refunds/{refund_id}")
async def refund_page(
    refund_id: str, request: Request, viewer: ViewerDep, queries: ConsoleQueriesDep
) -> Response:
    return await show(request, viewer, queries, refund_id)


# -- actions ------------------------------------------------------------------------

Note = Annotated[str, Form(max_length=NOTE_MAX * 4)]
Back = Annotated[str, Form(max_length=20, alias="from")]
Cursor = Annotated[str, Form(max_length=400)]


def _note(note: str, *, required: str | None = None) -> str | None:
    """The note as the services take it: None when empty, refused when
    `required` (why it is) and empty, too long, not storable, or holding a
    card number."""
    return inputs.free_text(note, "the note", NOTE_MAX, required=required)


def _back(refund_id: str, source: str, cursor: str, blocked_cursor: str) -> str:
    """The page the form was on: the approvals inbox or the refund. Built
    here, never taken from the form."""
    if source == "approvals":
        return approvals.Cursors(cursor, blocked_cursor).path()
    return f"/refunds/{refund_id}"


def _approved(refund: Refund) -> str:
    if refund.status is RefundStatus.PENDING_APPROVAL:
        return f"Refund {refund.id} approved. It still needs {wording.slots(refund.open_slots)}."
    if refund.status is RefundStatus.OFFLINE_REQUIRED:
        return f"Refund {refund.id} approved: it is to be paid out offline."
    return f"Refund {refund.id} approved: every required approval is in, it goes to the PSE."


async def _run_or_show(
    request: Request,
    act: Act,
    console: ConsoleService,
    call: Callable[[], Awaitable[Refund]],
    *,
    done: Callable[[Refund], str],
    back: str,
    again: Callable[[Flash], Awaitable[Response]],
) -> Response:
    """The service call; done, the message and back to the page; refused, the
    form again (`again`) with what was typed and why."""
    outcome = await act.attempt(call)
    if outcome.error is None:
        assert outcome.value is not None
        await console.flash(act.viewer.session, Flash("ok", done(outcome.value)))
        return redirect(request, back)
    return await again(outcome.error)


def _status_of(error: Flash) -> int:
    return _STATUS_BY_CODE.get(error.code or "", 422)


async def _decide(
    request: Request,
    refund_id: str,
    act: Act,
    console: ConsoleService,
    queries: ConsoleQueries,
    *,
    decision: Callable[[], Awaitable[Refund]],
    done: Callable[[Refund], str],
    note: str,
    source: str,
    cursor: str,
    blocked_cursor: str,
) -> Response:
    """Approve or reject, from the approvals inbox or the refund's page: a
    refusal shows that page again with the note in its form."""

    async def again(error: Flash) -> Response:
        if source == "approvals":
            return await approvals.show(
                request,
                act.viewer,
                queries,
                approvals.Cursors(cursor, blocked_cursor),
                status=_status_of(error),
                typed=approvals.Typed(refund_id, inputs.echoed(note), error),
            )
        typed = Typed("decide", {"note": inputs.echoed(note)}, error)
        return await show(
            request, act.viewer, queries, refund_id, status=_status_of(error), typed=typed
        )

    return await _run_or_show(
        request,
        act,
        console,
        decision,
        done=done,
        back=_back(refund_id, source, cursor, blocked_cursor),
        again=again,
    )


@router.post("/refunds/{refund_id}/approve")
async def approve(
    refund_id: str,
    request: Request,
    act: ActDep,
    console: ConsoleDep,
    queries: ConsoleQueriesDep,
    refunds: RefundsDep,
    note: Note = "",
    source: Back = "refund",
    cursor: Cursor = "",
    blocked_cursor: Cursor = "",
) -> Response:
    async def call() -> Refund:
        act.viewer.require(Role.APPROVER)
        return await refunds.approve(refund_id, act.viewer.approver, _note(note))

    return await _decide(
        request,
        refund_id,
        act,
        console,
        queries,
        decision=call,
        done=_approved,
        note=note,
        source=source,
        cursor=cursor,
        blocked_cursor=blocked_cursor,
    )


@router.post("/refunds/{refund_id}/reject")
async def reject(
    refund_id: str,
    request: Request,
    act: ActDep,
    console: ConsoleDep,
    queries: ConsoleQueriesDep,
    refunds: RefundsDep,
    note: Note = "",
    source: Back = "refund",
    cursor: Cursor = "",
    blocked_cursor: Cursor = "",
) -> Response:
    async def call() -> Refund:
        act.viewer.require(Role.APPROVER)
        approver = act.viewer.approver
        reason = _note(note, required="a rejection needs a note: write why the refund is rejected")
        assert reason is not None
        return await refunds.reject(refund_id, approver, reason)

    return await _decide(
        request,
        refund_id,
        act,
        console,
        queries,
        decision=call,
        done=lambda refund: f"Refund {refund.id} rejected.",
        note=note,
        source=source,
        cursor=cursor,
        blocked_cursor=blocked_cursor,
    )


def _again(
    request: Request, act: Act, queries: ConsoleQueries, refund_id: str, form: str, **values: str
) -> Callable[[Flash], Awaitable[Response]]:
    async def again(error: Flash) -> Response:
        typed = Typed(form, {name: inputs.echoed(value) for name, value in values.items()}, error)
        return await show(
            request, act.viewer, queries, refund_id, status=_status_of(error), typed=typed
        )

    return again


@router.post("/refunds/{refund_id}/cancel")
async def cancel(
    refund_id: str,
    request: Request,
    act: ActDep,
    console: ConsoleDep,
    queries: ConsoleQueriesDep,
    refunds: RefundsDep,
    note: Note = "",
) -> Response:
    async def call() -> Refund:
        # As the API: the store that asked, or ops.
        act.viewer.require(Role.STORE, Role.OPS)
        return await refunds.cancel(refund_id, act.viewer.actor, _note(note))

    return await _run_or_show(
        request,
        act,
        console,
        call,
        done=lambda refund: f"Refund {refund.id} canceled.",
        back=f"/refunds/{refund_id}",
        again=_again(request, act, queries, refund_id, "cancel", cancel_note=note),
    )


@router.post("/refunds/{refund_id}/sync")
async def sync(
    refund_id: str,
    act: ActDep,
    refunds: RefundsDep,
    submissions: SubmissionsDep,
) -> Response:
    async def call() -> Refund:
        act.viewer.require(Role.OPS)
        await refunds.get(refund_id)  # not found before any PSE call
        return await submissions.resolve(refund_id)

    return await act(
        call,
        done=lambda refund: f"Asked the PSE about refund {refund.id}: it is {refund.status}.",
        back=f"/refunds/{refund_id}",
    )


def _paid_at(value: str) -> datetime:
    """The paid-at day of the form, as the instant the service records: its
    start, in UTC."""
    value = value.strip()
    if not value:
        raise InvalidInput("the paid-at date is required: the day the payout was made")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"the paid-at date must be a day such as 2026-11-27, not {value[:40]!r}"
        ) from None
    if not in_range(day):
        raise InvalidInput(f"the paid-at date must be {RANGE}")
    return datetime.combine(day, time(), tzinfo=UTC)


@router.post("/refunds/{refund_id}/offline-payout")
async def offline_payout(
    refund_id: str,
    request: Request,
    act: ActDep,
    console: ConsoleDep,
    queries: ConsoleQueriesDep,
    refunds: RefundsDep,
    reference: Annotated[str, Form(max_length=REFERENCE_MAX * 4)] = "",
    paid_on: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    async def call() -> Refund:
        act.viewer.require(Role.OPS)
        ref = inputs.free_text(
            reference,
            "the reference",
            REFERENCE_MAX,
            required="the payout reference is required: the bank transfer's or other",
        )
        assert ref is not None
        return await refunds.offline_payout(refund_id, act.viewer.actor, ref, _paid_at(paid_on))

    return await _run_or_show(
        request,
        act,
        console,
        call,
        done=lambda refund: (
            f"Offline payout of refund {refund.id} recorded (reference {refund.offline_reference})."
        ),
        back=f"/refunds/{refund_id}",
        again=_again(
            request, act, queries, refund_id, "offline_payout", reference=reference, paid_on=paid_on
        ),
    )


@router.post("/refunds/{refund_id}/acknowledge")
async def acknowledge(
    refund_id: str,
    request: Request,
    act: ActDep,
    console: ConsoleDep,
    queries: ConsoleQueriesDep,
    refunds: RefundsDep,
    note: Note = "",
) -> Response:
    async def call() -> Refund:
        act.viewer.require(Role.OPS)
        said = _note(note, required="an acknowledgement needs a note: write what you found")
        assert said is not None
        return await refunds.acknowledge(refund_id, act.viewer.actor, said)

    return await _run_or_show(
        request,
        act,
        console,
        call,
        done=lambda refund: f"Refund {refund.id} acknowledged: it leaves the attention list.",
        back=f"/refunds/{refund_id}",
        again=_again(request, act, queries, refund_id, "acknowledge", ack_note=note),
    )
