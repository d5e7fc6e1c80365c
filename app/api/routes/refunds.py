"""Refunds: request, decide, cancel, pay out offline, sync, read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from app.api.deps import (
    ApproverKey,
    Cursor,
    IdempotencyKeyHeader,
    IdempotentDep,
    Limit,
    Ops,
    Reader,
    RefundsDep,
    Store,
    StoreOrOps,
    SubmissionsDep,
    actor_of,
    approver_of,
    decode_cursor,
    idempotency_key_required,
    json_bytes,
    json_response,
    page,
    replayable,
)
from app.api.docs import AUTH, problems
from app.api.problems import domain_problem, request_id_of
from app.api.schemas import (
    AcknowledgeIn,
    CancelIn,
    DecisionIn,
    Instant,
    OfflinePayoutIn,
    Page,
    RefundIn,
    RefundOut,
    RejectIn,
    SearchText,
)
from app.domain.models import Refund, RefundStatus
from app.services.idempotency import IdempotencyClaim, KeyedRequest, request_fingerprint
from app.services.refunds import RefundAttempt, RequestRefund
from app.services.views import refund_view

router = APIRouter(prefix="/v1/refunds", tags=["refunds"])

RefundId = Annotated[str, "refund id"]
_STATE = (409, "`invalid_state`: not allowed in the refund's current status")
_IDEM = (409, "`idempotency_key_in_use`: the first request with this key is still running")
_REUSED = (422, "`idempotency_key_reused`: the key was used with another body")
_DISPUTED = (409, "`payment_disputed`: the payment has an open dispute")


def _answer(refund: Refund, status: int = 200) -> tuple[int, bytes]:
    return status, json_bytes(refund_view(refund))


@router.post(
    "",
    summary="Request a refund",
    status_code=201,
    response_model=RefundOut,
    responses=problems(
        (400, "`idempotency_key_required`: the Idempotency-Key header is missing"),
        *AUTH,
        (404, "`not_found`: no such payment"),
        (409, "`idempotency_key_in_use`: the key is contended; retry later"),
        (409, "`payment_disputed`: the payment has an open dispute; nothing created"),
        (422, "`amount_exceeds_refundable`: amount < 1 or above the refundable amount"),
        (422, "`amount_exceeds_limit`: above the policy's max_refund_amount"),
        (422, "`currency_mismatch`; `validation_error`"),
        _REUSED,
    ),
)
async def create_refund(
    body: RefundIn,
    request: Request,
    refunds: RefundsDep,
    key: Store,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Request a refund of a registered payment. **`Idempotency-Key` is required.**

    The rules are checked in this order, atomically with the reservation of
    the amount (two concurrent requests can never together exceed the payment):

    0. A payment with an open dispute takes no refund: 409 `payment_disputed`,
       nothing created.
    1. `amount` (omitted → the whole refundable amount) must be ≥ 1 and ≤ the
       refundable amount (`amount_exceeds_refundable`) and not above the
       policy's `max_refund_amount` (`amount_exceeds_limit`).
    2. Past the payment's `refund_deadline`, or for a cash method (konbini…),
       the refund needs an offline payout: status `offline_required`.
    3. Approval tiers, high-risk payments and the daily auto-approval limit may
       require approvals: status `pending_approval`.
    4. Otherwise the refund is approved and sent to the PSE right after this
       answer, which shows it `submitting` (approved and marked as sent in the
       same commit; `approved` while the service shuts down, for the worker to
       send); follow it with `GET /v1/refunds/{id}` or the event feed.

    The answer is 201 with the refund as recorded. The key's claim, the refund
    and the answer commit together: a repeat with the same key and body
    replays the answer with `Idempotent-Replayed: true` (a repeat sent while
    the first is still running waits for it, then replays its answer).
    """
    if idempotency_key is None:
        raise idempotency_key_required()
    keyed = KeyedRequest(
        key.id,
        idempotency_key,
        request.method,
        request.url.path,
        request_fingerprint(request.method, request.url.path, await request.body()),
    )
    command = RequestRefund(
        payment_id=body.payment_id,
        amount=body.amount,
        currency=body.currency,
        reason=body.reason,
        note=body.note,
        metadata=body.metadata,
    )

    def render(attempt: RefundAttempt) -> tuple[int, bytes]:
        if attempt.refund is not None:
            return _answer(attempt.refund, 201)
        assert attempt.error is not None
        return domain_problem(attempt.error, request_id_of(request))

    kept, replayed = await refunds.request_once(command, actor_of(key), keyed, render)
    return replayable(kept.status, kept.body, replayed=replayed)


@router.get(
    "/{refund_id}",
    summary="Get a refund",
    response_model=RefundOut,
    responses=problems(*AUTH, 404),
)
async def get_refund(refund_id: RefundId, refunds: RefundsDep, _key: Reader) -> Response:
    """The refund with its approvals and full status history. A key scoped to
    PSE accounts gets 404 for a refund of another account, here and on every
    action, as for an unknown id."""
    return json_response(200, refund_view(await refunds.get(refund_id)))


@router.get(
    "",
    summary="List refunds",
    response_model=Page[RefundOut],
    responses=problems(*AUTH, 422),
)
async def list_refunds(
    refunds: RefundsDep,
    _key: Reader,
    status: Annotated[
        list[RefundStatus] | None,
        Query(description="one or more statuses (repeat the parameter)"),
    ] = None,
    payment_id: Annotated[SearchText, Query(max_length=40)] = None,
    created_from: Annotated[Instant | None, Query()] = None,
    created_to: Annotated[Instant | None, Query()] = None,
    stale: Annotated[
        bool,
        Query(description="only refunds not final and older than the SLA (oldest first)"),
    ] = False,
    needs_attention: Annotated[
        bool,
        Query(
            description="only refunds flagged with `refund.needs_attention` and not yet "
            "acknowledged, final ones included (oldest first)"
        ),
    ] = False,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Refunds, newest first. `stale=true` lists refunds that are not final and
    older than `stale_after_hours` (default 24 h), oldest first: the list ops
    must clear before customers open chargebacks. `needs_attention=true` lists
    the refunds flagged for a person (an event contradicting a final status, a
    PSE refund carrying our reference, a doubled refund at the PSE, a stale
    refund…) until ops acknowledge them, oldest first. A key scoped to PSE
    accounts lists only their refunds."""
    items = await refunds.list(
        statuses=status or [],
        payment_id=payment_id,
        created_from=created_from,
        created_to=created_to,
        stale=stale,
        needs_attention=needs_attention,
        limit=limit + 1,
        before_id=decode_cursor(cursor),
    )
    return json_response(200, page(items, limit, refund_view))


@router.post(
    "/{refund_id}/approve",
    summary="Approve a refund",
    response_model=RefundOut,
    responses=problems(
        *AUTH,
        (403, "`self_approval_forbidden`: the key created this refund"),
        (403, "`approval_level_insufficient`: the open approvals need a higher level"),
        404,
        (409, "`already_decided`: this approver already decided"),
        _STATE,
        (409, "`payment_disputed`: the refund is held while its payment has an open dispute"),
        _IDEM,
        _REUSED,
    ),
)
async def approve_refund(
    refund_id: RefundId,
    request: Request,
    refunds: RefundsDep,
    idem: IdempotentDep,
    key: ApproverKey,
    body: Annotated[DecisionIn | None, Body()] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Add this approver's approval. When every required approval is in, the
    refund becomes `approved` and is sent to the PSE (or `offline_required`
    when it is past the refund window). A refund held because its payment has
    an open dispute (`hold`) cannot be approved: 409 `payment_disputed`."""

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        note = body.note if body else None
        return _answer(await refunds.approve(refund_id, approver_of(key), note))

    return await idem(key, idempotency_key, handler)


@router.post(
    "/{refund_id}/reject",
    summary="Reject a refund",
    response_model=RefundOut,
    responses=problems(
        *AUTH,
        (403, "`self_approval_forbidden`; `approval_level_insufficient`"),
        404,
        (409, "`already_decided`"),
        _STATE,
        _IDEM,
        (422, "`validation_error`: a note is required"),
        _REUSED,
    ),
)
async def reject_refund(
    refund_id: RefundId,
    body: RejectIn,
    request: Request,
    refunds: RefundsDep,
    idem: IdempotentDep,
    key: ApproverKey,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Reject the refund (final). A note is required. Rejecting needs the highest
    level the refund requires."""

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        return _answer(await refunds.reject(refund_id, approver_of(key), body.note))

    return await idem(key, idempotency_key, handler)


@router.post(
    "/{refund_id}/cancel",
    summary="Cancel a refund",
    response_model=RefundOut,
    responses=problems(*AUTH, 404, _STATE, _IDEM, _REUSED),
)
async def cancel_refund(
    refund_id: RefundId,
    request: Request,
    refunds: RefundsDep,
    idem: IdempotentDep,
    key: StoreOrOps,
    body: Annotated[CancelIn | None, Body()] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Cancel a refund that was not yet sent to the PSE (`pending_approval`,
    `approved` or `offline_required`); otherwise 409 `invalid_state`."""

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        note = body.note if body else None
        return _answer(await refunds.cancel(refund_id, actor_of(key), note))

    return await idem(key, idempotency_key, handler)


@router.post(
    "/{refund_id}/offline-payout",
    summary="Record an offline payout",
    response_model=RefundOut,
    responses=problems(
        *AUTH,
        404,
        _STATE,
        (409, "`payment_disputed`: the refund is held while its payment has an open dispute"),
        _IDEM,
        _REUSED,
    ),
)
async def offline_payout(
    refund_id: RefundId,
    body: OfflinePayoutIn,
    request: Request,
    refunds: RefundsDep,
    idem: IdempotentDep,
    key: Ops,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Record that ops paid an `offline_required` refund another way (bank
    transfer…): it becomes `offline_paid`, with the payout reference. Not
    while it is held by an open dispute on its payment: 409 `payment_disputed`."""

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        refund = await refunds.offline_payout(
            refund_id, actor_of(key), body.reference, body.paid_at
        )
        return _answer(refund)

    return await idem(key, idempotency_key, handler)


@router.post(
    "/{refund_id}/acknowledge",
    summary="Acknowledge a refund flagged for attention",
    response_model=RefundOut,
    responses=problems(
        *AUTH,
        404,
        (409, "`invalid_state`: the refund is not flagged"),
        _IDEM,
        (422, "`validation_error`: a note is required"),
        _REUSED,
    ),
)
async def acknowledge_refund(
    refund_id: RefundId,
    body: AcknowledgeIn,
    request: Request,
    refunds: RefundsDep,
    idem: IdempotentDep,
    key: Ops,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Say that a person has looked at a refund flagged with
    `refund.needs_attention`: it leaves `GET /v1/refunds?needs_attention=true`.
    The status does not change; the note and what it was flagged for go to the
    audit log. A later flag puts it back on the list."""

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        return _answer(await refunds.acknowledge(refund_id, actor_of(key), body.note))

    return await idem(key, idempotency_key, handler)


@router.post(
    "/{refund_id}/sync",
    summary="Ask the PSE now",
    response_model=RefundOut,
    responses=problems(*AUTH, 404, _IDEM, _REUSED),
)
async def sync_refund(
    refund_id: RefundId,
    request: Request,
    refunds: RefundsDep,
    submissions: SubmissionsDep,
    idem: IdempotentDep,
    key: Ops,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Ask the PSE what it has for this refund and apply the truth. An
    `approved` refund is sent; an `unknown` one the PSE proves it does not have
    is sent again with its original idempotency key. Final refunds are
    returned unchanged."""

    async def handler(_claim: IdempotencyClaim | None) -> tuple[int, bytes]:
        await refunds.get(refund_id)  # 404 before any PSE call
        return _answer(await submissions.resolve(refund_id))

    return await idem(key, idempotency_key, handler)
