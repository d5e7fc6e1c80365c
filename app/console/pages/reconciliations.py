"""Reconciliations: upload a settlement file, follow its run, read its
differences by outcome, download its report; and the FX report.

The upload goes through the same service call as the API's
`POST /v1/reconciliations` (ops or admin); every signed-in key may read the
runs and the reports.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.responses import Response, StreamingResponse

from app.console import inputs
from app.console.actions import redirect
from app.console.deps import (
    ActDep,
    ClockDep,
    ConsoleDep,
    ConsoleQueriesDep,
    JobsDep,
    ReconciliationsDep,
    ViewerDep,
)
from app.console.formatting import error_message
from app.console.paging import decode_cursor, encode_cursor, link
from app.console.rendering import render
from app.console.security import base_path
from app.domain.cards import refuse_card_number
from app.domain.console import Flash
from app.domain.errors import DomainError, InvalidInput
from app.domain.reconciliation import AGREEING, OUTCOMES, ReconciliationStatus
from app.domain.records import Reconciliation, Role

router = APIRouter()

RUNS_PAGE_SIZE = 20
LINES_PAGE_SIZE = 50
# How often a run still processing reloads itself (with JavaScript), and for
# how long: the worker fails a run whose process died after an hour, and
# without a worker nothing would end the reloading.
RELOAD_SECONDS = 2
RELOAD_FOR = timedelta(minutes=65)

# What each outcome means, for the people reading a run.
OUTCOME_MEANING = {
    "matched": "The file and our refund agree.",
    "amount_mismatch": "The file settled another amount than our refund's.",
    "status_mismatch": "The file's status contradicts ours.",
    "missing_in_service": "The PSE settled a refund we do not know.",
    "missing_in_file": "We hold it succeeded; the file's period does not have it.",
    "dispute_matched": "A dispute's money taken back (or reinstated): the file and our "
    "dispute agree.",
    "dispute_amount_mismatch": "The file moved another amount for the dispute than ours.",
    "dispute_status_mismatch": "The file reinstated the money of a dispute we hold as open or "
    "lost, or moved a dispute's money the same way twice.",
    "dispute_missing_in_service": "The PSE took money back (or reinstated it) for a dispute we "
    "do not know: its payment could still be refunded, and paid twice.",
}


def _differences(run: Reconciliation) -> int:
    return sum(count for outcome, count in run.counts.items() if outcome not in AGREEING)


def _matched(run: Reconciliation) -> int:
    return sum(run.counts.get(outcome.value, 0) for outcome in AGREEING)


def _fx_typed(request: Request) -> dict[str, str]:
    """The FX report's filters as typed (shown back in its form)."""
    params = request.query_params
    typed = {
        name: (params.get(name) or "").strip()[: inputs.MAX_FIELD_LENGTH + 1]
        for name in ("fx_from", "fx_to", "fx_currency")
    }
    typed["fx_currency"] = typed["fx_currency"].upper()
    return typed


def _fx_filters(typed: dict[str, str]) -> dict[str, Any]:
    """The FX report's filters as its query reads them; InvalidInput naming a wrong one."""
    created_from = inputs.instant(inputs.text(typed["fx_from"], "From"), "From")
    created_to = inputs.instant(inputs.text(typed["fx_to"], "To"), "To", end=True)
    if created_from and created_to and created_from > created_to:
        raise InvalidInput("the FX report's period ends before it starts")
    return {
        "created_from": created_from,
        "created_to": created_to,
        "currency": inputs.currency(inputs.text(typed["fx_currency"], "The settlement currency")),
    }


@router.get("/reconciliations")
async def reconciliations(
    request: Request,
    viewer: ViewerDep,
    queries: ConsoleQueriesDep,
    cursor: str | None = None,
) -> Response:
    # Reconciliation data is the ops role's, as through the API.
    viewer.require(Role.OPS)
    base = base_path(request)
    messages = []
    status = 200
    try:
        runs = await queries.reconciliations(limit=RUNS_PAGE_SIZE, cursor=decode_cursor(cursor))
    except DomainError as error:
        messages.append(error_message(error))
        status = 422
        runs = await queries.reconciliations(limit=RUNS_PAGE_SIZE)
        cursor = None
    fx_typed = _fx_typed(request)
    fx = None
    try:
        fx = await queries.fx_report(**_fx_filters(fx_typed))
    except DomainError as error:
        messages.append(error_message(error))
        status = 422
        fx_typed = {name: inputs.echoed(value) for name, value in fx_typed.items()}
    next_url = None
    if runs.next_cursor is not None:
        next_url = link(f"{base}/reconciliations", [("cursor", encode_cursor(runs.next_cursor))])
    return render(
        request,
        "reconciliations.html",
        status=status,
        section="reconciliations",
        title="Reconciliations",
        messages=messages,
        can_upload=viewer.can(Role.OPS),
        accounts=queries.pse_accounts(),
        runs=runs.items,
        next_url=next_url,
        first_url=f"{base}/reconciliations" if cursor else None,
        differences=_differences,
        matched=_matched,
        fx=fx,
        fx_typed=fx_typed,
        fx_filtered=any(fx_typed.values()),
    )


@router.post("/reconciliations")
async def upload(
    request: Request,
    act: ActDep,
    console: ConsoleDep,
    reconciliations: ReconciliationsDep,
    jobs: JobsDep,
    pse_account: Annotated[str, Form(max_length=64)] = "",
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """Start a run on the uploaded file and show its page (processing, until
    it ends); a refusal comes back to the upload form with its sentence."""

    async def call() -> Reconciliation:
        act.viewer.require(Role.OPS)
        if not pse_account:
            raise InvalidInput("choose the PSE account the settlement file comes from")
        if file is None or (not file.filename and not file.size):
            raise InvalidInput("choose the settlement file to upload")
        refuse_card_number(file.filename, "the file's name")
        if not file.size:
            raise InvalidInput(f"the file {file.filename!r} is empty")
        return await reconciliations.accept(
            pse_account, file.filename, act.viewer.key.id, file.read, jobs
        )

    outcome = await act.attempt(call)
    if outcome.value is None:
        assert outcome.error is not None
        await console.flash(act.viewer.session, outcome.error)
        return redirect(request, "/reconciliations")
    run = outcome.value
    name = f" {run.filename}" if run.filename else ""
    await console.flash(
        act.viewer.session, Flash("ok", f"The file{name} was received: run {run.id} has started.")
    )
    return redirect(request, f"/reconciliations/{run.id}")


@router.get("/reconciliations/{reconciliation_id}")
async def run_page(
    reconciliation_id: str,
    request: Request,
    viewer: ViewerDep,
    queries: ConsoleQueriesDep,
    clock: ClockDep,
    outcome: str | None = None,
    cursor: str | None = None,
) -> Response:
    viewer.require(Role.OPS)
    base = base_path(request)
    here = f"{base}/reconciliations/{reconciliation_id}"
    messages = []
    status = 200
    outcome = outcome or None
    try:
        lines_after = decode_cursor(cursor)
        detail = await queries.reconciliation(
            reconciliation_id, outcome=outcome, limit=LINES_PAGE_SIZE, cursor=lines_after
        )
    except InvalidInput as error:
        # An outcome or page link edited by hand: every line from the start,
        # and why. (A run that does not exist is the error page's 404.)
        messages.append(error_message(error))
        status = 422
        outcome = cursor = None
        detail = await queries.reconciliation(reconciliation_id, limit=LINES_PAGE_SIZE)
    next_url = None
    if detail.lines.next_cursor is not None:
        next_url = link(
            here,
            [("outcome", outcome or ""), ("cursor", encode_cursor(detail.lines.next_cursor))],
        )
    run = detail.run
    processing = run.status == ReconciliationStatus.PROCESSING.value
    age = clock.now() - run.created_at
    return render(
        request,
        "reconciliation.html",
        status=status,
        section="reconciliations",
        title=f"Reconciliation {run.id}",
        messages=messages,
        run=run,
        lines=detail.lines.items,
        disputes=detail.disputes,
        is_dispute_line=detail.is_dispute_line,
        outcome=outcome,
        outcomes=[(name.value, run.counts.get(name.value, 0)) for name in OUTCOMES],
        meaning=OUTCOME_MEANING,
        differences=_differences(run),
        processing=processing,
        reload_seconds=RELOAD_SECONDS if processing and age < RELOAD_FOR else None,
        here=here,
        reload_url=link(here, [("outcome", outcome or "")]),
        next_url=next_url,
        first_url=link(here, [("outcome", outcome or "")]) if cursor else None,
    )


@router.get("/reconciliations/{reconciliation_id}/report.csv")
async def report(
    reconciliation_id: str, viewer: ViewerDep, reconciliations: ReconciliationsDep
) -> Response:
    """The API's report (`GET /v1/reconciliations/{id}/report.csv`), from the
    same service call: every line with its outcome."""
    viewer.require(Role.OPS)
    lines = await reconciliations.report_csv(reconciliation_id)
    return StreamingResponse(
        lines,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{reconciliation_id}.csv"'},
    )
