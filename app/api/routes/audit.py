"""The audit trail, for ops and admins (and, through them, a regulator or an acquirer)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from app.api.deps import (
    AuditDep,
    Cursor,
    Limit,
    decode_number_cursor,
    json_response,
    require,
)
from app.api.docs import AUTH, problems
from app.api.report_schemas import AuditPage
from app.api.schemas import Instant, SearchText
from app.domain.records import ApiKey, Role
from app.services.views import audit_view

router = APIRouter(tags=["audit"])

OpsOrAdmin = Annotated[ApiKey, Depends(require(Role.OPS, Role.ADMIN))]


@router.get(
    "/v1/audit",
    summary="Search the audit trail",
    response_model=AuditPage,
    responses=problems(*AUTH, 422),
)
async def search_audit(
    audit: AuditDep,
    key: OpsOrAdmin,
    refund_id: Annotated[SearchText, Query(max_length=40)] = None,
    payment_id: Annotated[SearchText, Query(max_length=40)] = None,
    request_id: Annotated[SearchText, Query(max_length=128)] = None,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Annotated[Instant | None, Query()] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Every API request and response, PSE call, webhook received and sent, refund
    state change, key created or revoked and approval decision, newest first,
    with secrets and card numbers redacted. Each record carries the hash of the
    one before it; `pse-refunds audit verify` checks the whole chain.

    A key scoped to PSE accounts reads only the records of a refund or a
    payment of those accounts (not those of keys, sign-ins or reconciliation
    runs, which name neither)."""
    before = decode_number_cursor(cursor)
    records = await audit.search(
        refund_id=refund_id,
        payment_id=payment_id,
        request_id=request_id,
        at_from=from_,
        at_to=to,
        limit=limit + 1,
        before_seq=before,
        scope=key.accounts,
    )
    more = len(records) > limit
    records = records[:limit]
    return json_response(
        200,
        {
            "data": [audit_view(r) for r in records],
            "next_cursor": str(records[-1].seq) if more and records else None,
        },
    )
