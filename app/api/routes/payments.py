"""Payments: the captured transactions refunds are made against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app.api.deps import (
    Cursor,
    DisputesDep,
    IdempotencyKeyHeader,
    IdempotentDep,
    Limit,
    PaymentsDep,
    Reader,
    Store,
    StoreOrOps,
    actor_of,
    decode_cursor,
    json_bytes,
    json_response,
    page,
)
from app.api.docs import AUTH, problems
from app.api.schemas import DisputeIn, DisputeOut, Page, PaymentIn, PaymentOut, SearchText
from app.domain.disputes import DisputeStatus
from app.domain.models import Payment, RiskLevel
from app.services.disputes import ReportDispute
from app.services.idempotency import IdempotencyClaim
from app.services.payments import PaymentService, RegisterPayment
from app.services.views import dispute_view, payment_view

router = APIRouter(prefix="/v1/payments", tags=["payments"])


@router.post(
    "",
    summary="Register a captured payment",
    status_code=201,
    response_model=PaymentOut,
    responses={
        200: {"model": PaymentOut, "description": "Already registered with the same fields"},
        **problems(
            *AUTH,
            (
                409,
                "`payment_conflict`: registered before with different fields; "
                "`idempotency_key_in_use`",
            ),
            (422, "`unknown_pse_account`; `validation_error`; `idempotency_key_reused`"),
        ),
    },
)
async def register_payment(
    body: PaymentIn,
    request: Request,
    payments: PaymentsDep,
    idem: IdempotentDep,
    key: Store,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Register a payment captured at a PSE, so refunds can be made against it.

    Registering the same `(pse_account, pse_payment_id)` again with the same
    fields answers 200 with the existing payment; with different fields, 409
    `payment_conflict`. `settlement_currency`/`settlement_rate` default to the
    payment's currency at rate 1; `settlement_rate` (plain decimal digits, at
    most 12 before and 12 after the point) serves FX reporting only and never
    changes the approvals a refund needs — tiers of another currency are
    compared through the operator's `[policy.rates]`.

    `captured_at` is RFC 3339 text no more than 5 minutes ahead of the
    service's clock; text that cannot be stored (NUL, lone surrogates) is 422
    `validation_error`.

    A key scoped to PSE accounts registers payments of those accounts only:
    any other `pse_account` is 422 `unknown_pse_account`, worded as for an
    account that is not configured. Its reads see only its accounts' payments
    (404 for others).
    """

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        payment, created = await payments.register(
            RegisterPayment(
                pse_account=body.pse_account,
                pse_payment_id=body.pse_payment_id,
                order_id=body.order_id,
                amount=body.amount,
                currency=body.currency,
                captured_at=body.captured_at,
                payment_method=body.payment_method,
                risk_level=RiskLevel(body.risk_level),
                settlement_currency=body.settlement_currency,
                settlement_rate=body.settlement_rate,
            ),
            created_by=key.id,
        )
        view = payment_view(payment, payments.deadline(payment))
        return (201 if created else 200), json_bytes(view)

    return await idem(key, idempotency_key, handler)


def _view(payments: PaymentService) -> Callable[[Payment], dict[str, Any]]:
    return lambda p: payment_view(p, payments.deadline(p))


@router.get(
    "/{payment_id}",
    summary="Get a payment",
    response_model=PaymentOut,
    responses=problems(*AUTH, 404),
)
async def get_payment(payment_id: str, payments: PaymentsDep, _key: Reader) -> Response:
    """The payment with its refunded, reserved, disputed and refundable amounts,
    its open disputes and its refund deadline."""
    payment: Payment = await payments.get(payment_id)
    return json_response(200, payment_view(payment, payments.deadline(payment)))


@router.get(
    "",
    summary="List payments",
    response_model=Page[PaymentOut],
    responses=problems(*AUTH, 422),
)
async def list_payments(
    payments: PaymentsDep,
    _key: Reader,
    order_id: Annotated[SearchText, Query(max_length=255)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Payments, newest first; filter by the store's `order_id`."""
    items = await payments.list(order_id=order_id, limit=limit + 1, before_id=decode_cursor(cursor))
    return json_response(200, page(items, limit, _view(payments)))


@router.get(
    "/{payment_id}/disputes",
    summary="List a payment's disputes",
    response_model=Page[DisputeOut],
    responses=problems(*AUTH, 404, 422),
)
async def list_disputes(
    payment_id: str,
    disputes: DisputesDep,
    _key: Reader,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """The payment's disputes (chargebacks), newest first, open and ended
    alike. A key scoped to PSE accounts gets 404 for another account's
    payment, as for an unknown one."""
    items = await disputes.list(payment_id, limit=limit + 1, before_id=decode_cursor(cursor))
    return json_response(200, page(items, limit, dispute_view))


@router.post(
    "/{payment_id}/disputes",
    summary="Report a dispute on a payment",
    status_code=201,
    response_model=DisputeOut,
    responses={
        200: {"model": DisputeOut, "description": "A dispute reported before, updated"},
        **problems(
            *AUTH,
            (404, "`not_found`: no such payment"),
            (409, "`idempotency_key_in_use`: the first request with this key is still running"),
            (
                422,
                "`validation_error`: a currency other than the payment's, an amount above "
                "it, a `pse_dispute_id` of another payment, or an invalid body; "
                "`idempotency_key_reused`",
            ),
        ),
    },
)
async def report_dispute(
    payment_id: str,
    body: DisputeIn,
    request: Request,
    disputes: DisputesDep,
    idem: IdempotentDep,
    key: StoreOrOps,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Record a dispute (chargeback) the PSE opened on the payment, or what
    became of one recorded before (the same `pse_dispute_id`: 200, its status
    moved; a new one: 201). PSE webhooks record disputes by themselves where
    the adapter reads them; this is for the others, and for people.

    While a dispute is open, the payment takes no new refund (409
    `payment_disputed`). Opening one holds the payment's refunds not yet sent
    to the PSE (`hold`: `payment_disputed`, an approved one back to
    `pending_approval`) or cancels them (`[policy] on_dispute = "cancel"`);
    those already sent are flagged for attention. Won or closed, the holds
    are released once no dispute is open (an approved refund goes on to the
    PSE); lost, its amount counts toward the payment like a refund
    (`disputed_amount`) and the held refunds are canceled.

    Statuses only move forward: `open` → `won` | `lost` | `closed`, and `lost`
    → `won` (funds reinstated). Events `payment.dispute_opened` and
    `payment.dispute_closed` go to the store like refund events."""

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        change = await disputes.report(
            payment_id,
            ReportDispute(
                pse_dispute_id=body.pse_dispute_id,
                status=DisputeStatus(body.status),
                amount=body.amount,
                currency=body.currency,
                reason=body.reason,
                evidence_due_by=body.evidence_due_by,
            ),
            actor_of(key),
        )
        return (201 if change.created else 200), json_bytes(dispute_view(change.dispute))

    return await idem(key, idempotency_key, handler)
