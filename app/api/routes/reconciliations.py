"""Settlement-file reconciliation and the FX report (ops, finance)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from starlette.responses import Response, StreamingResponse

from app.api.deps import (
    Cursor,
    JobsDep,
    Limit,
    Ops,
    ReconciliationsDep,
    decode_cursor,
    decode_number_cursor,
    json_response,
    page,
)
from app.api.docs import AUTH, problems
from app.api.problems import ApiError
from app.api.report_schemas import FxReportOut, ReconciliationOut, ReconciliationRunOut
from app.api.schemas import Currency, Instant, Page
from app.domain.cards import refuse_card_number
from app.domain.reconciliation import OUTCOMES
from app.domain.records import Reconciliation
from app.services.views import reconciliation_line_view, rfc3339

router = APIRouter(tags=["reconciliation"])


def _view(rec: Reconciliation) -> dict[str, Any]:
    return {
        "id": rec.id,
        "pse_account": rec.pse_account,
        "status": rec.status,
        "filename": rec.filename,
        "file_format": rec.file_format,
        "rows_total": rec.rows_total,
        "counts": rec.counts,
        "adopted": rec.adopted,
        "range_from": rfc3339(rec.range_from),
        "range_to": rfc3339(rec.range_to),
        "error": rec.error,
        "created_at": rfc3339(rec.created_at),
        "completed_at": rfc3339(rec.completed_at),
    }


@router.post(
    "/v1/reconciliations",
    summary="Reconcile a settlement file",
    status_code=202,
    responses={
        202: {
            "description": "Accepted: processing in the background",
            "content": {
                "application/json": {"example": {"id": "rec_0193c1d2e3f4", "status": "processing"}}
            },
        },
        **problems(
            *AUTH,
            (404, "`not_found`: a PSE account outside the key's scope"),
            (413, "`payload_too_large`"),
            (422, "`unknown_pse_account`, `card_data_forbidden`"),
        ),
    },
)
async def create_reconciliation(
    reconciliations: ReconciliationsDep,
    jobs: JobsDep,
    key: Ops,
    file: Annotated[UploadFile, File(description="the settlement file (CSV)")],
    pse_account: Annotated[str, Form(min_length=1, max_length=64)],
) -> Response:
    """Upload a PSE settlement file (multipart: `file`, `pse_account`). The file
    is processed in the background; follow it at `GET /v1/reconciliations/{id}`.

    Formats: the generic CSV (header `pse_refund_id,reference,type,amount,currency,
    status,settled_at,fee,settlement_amount,settlement_currency`, amounts in minor
    units; rows of `type` `dispute` (a chargeback's money taken back) and
    `dispute_reversal` (given back) name their dispute and payment in the optional
    columns `pse_dispute_id` and `pse_payment_id`) and Stripe's itemized balance /
    payout reconciliation exports (their `dispute` and `dispute_reversal` lines). A
    malformed file ends `failed` with an error naming its line, and changes
    nothing. A key scoped to PSE accounts reconciles and reads only the runs of
    its accounts (404 for any other). A file name holding a card number is
    refused (422 `card_data_forbidden`): the name is stored with the run."""
    refuse_card_number(file.filename, "the file's name")
    reconciliation = await reconciliations.accept(
        pse_account, file.filename, key.id, file.read, jobs
    )
    return json_response(202, {"id": reconciliation.id, "status": reconciliation.status})


@router.get(
    "/v1/reconciliations",
    summary="List reconciliations",
    response_model=Page[ReconciliationRunOut],
    responses=problems(*AUTH, 422),
)
async def list_reconciliations(
    reconciliations: ReconciliationsDep,
    _key: Ops,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Past reconciliation runs, newest first, each with its `status` and
    `counts` (its lines are at `GET /v1/reconciliations/{id}`)."""
    runs = await reconciliations.list(limit=limit + 1, before_id=decode_cursor(cursor))
    return json_response(200, page(runs, limit, _view))


@router.get(
    "/v1/reconciliations/{reconciliation_id}",
    summary="A reconciliation, its counts and its lines",
    response_model=ReconciliationOut,
    responses=problems(*AUTH, 404, 422),
)
async def get_reconciliation(
    reconciliation_id: str,
    reconciliations: ReconciliationsDep,
    _key: Ops,
    outcome: Annotated[
        str | None, Query(description=f"only lines of: {', '.join(o.value for o in OUTCOMES)}")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """`status` (processing, completed, failed), the `counts` of every outcome,
    and the lines behind them, paged (`rows.next_cursor`).

    Refund lines: matched, amount_mismatch, status_mismatch, missing_in_service
    (the PSE settled a refund we do not know) and missing_in_file (we hold it
    succeeded; the file's period does not have it).

    Dispute lines (a chargeback's money the PSE took back, or reinstated):
    dispute_matched (the file and our dispute agree), dispute_amount_mismatch
    (another amount than our dispute's), dispute_status_mismatch (money
    reinstated for a dispute we hold as open or lost, or moved the same way
    twice) and dispute_missing_in_service (a dispute we do not know: after a
    withdrawal the payment could still be refunded, paying the customer twice).
    A dispute line uses the row's columns for the dispute: `pse_refund_id` is
    the file's dispute id, `reference` the file's payment id, `refund_id` our
    dispute's id (`dsp_…`), `file_status` `withdrawn` or `reinstated`, and
    `our_amount`, `our_status` our dispute's. It changes nothing."""
    if outcome is not None and outcome not in {o.value for o in OUTCOMES}:
        raise ApiError(422, "validation_error", "Unknown outcome", f"no outcome {outcome}")
    rec = await reconciliations.get(reconciliation_id)
    lines = await reconciliations.lines(
        reconciliation_id, outcome=outcome, limit=limit + 1, after_id=decode_number_cursor(cursor)
    )
    more = len(lines) > limit
    lines = lines[:limit]
    return json_response(
        200,
        {
            **_view(rec),
            "rows": {
                "data": [reconciliation_line_view(line) for line in lines],
                "next_cursor": str(lines[-1].id) if more and lines else None,
            },
        },
    )


@router.get(
    "/v1/reconciliations/{reconciliation_id}/report.csv",
    summary="The reconciliation as CSV",
    responses={
        200: {"content": {"text/csv": {}}, "description": "every line with its outcome"},
        **problems(*AUTH, 404),
    },
)
async def reconciliation_report(
    reconciliation_id: str, reconciliations: ReconciliationsDep, _key: Ops
) -> Response:
    """Every line of the reconciliation with its outcome, for a spreadsheet: the
    columns of the lines at `GET /v1/reconciliations/{id}`, a dispute line's
    holding its dispute as they do there."""
    rows = await reconciliations.report_csv(reconciliation_id)
    return StreamingResponse(
        rows,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{reconciliation_id}.csv"'},
    )


@router.get(
    "/v1/reports/fx",
    summary="FX differences and fees",
    response_model=FxReportOut,
    responses=problems(*AUTH, 422),
)
async def fx_report(
    reconciliations: ReconciliationsDep,
    _key: Ops,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Annotated[Instant | None, Query()] = None,
    currency: Annotated[Currency | None, Query(description="a settlement currency")] = None,
) -> Response:
    """Per settlement currency, for refunds created in [from, to): how many,
    the sum of FX differences (actual settled amount - amount at the payment's
    rate, in minor units; only refunds whose actual settlement the PSE
    reported count) and the sum of PSE refund fees."""
    totals = await reconciliations.fx_report(from_, to, currency)
    return json_response(
        200,
        {
            "from": rfc3339(from_),
            "to": rfc3339(to),
            "data": [
                {
                    "settlement_currency": t.settlement_currency,
                    "refunds": t.refunds,
                    "refunds_with_actual_settlement": t.refunds_with_actual_settlement,
                    "fx_difference": t.fx_difference,
                    "fees": t.fees,
                }
                for t in totals
            ],
        },
    )
