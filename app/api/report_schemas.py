"""Response models of the reports: settlement-file reconciliations, the FX
report and the audit trail (the refund lifecycle's models are in
app.api.schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ReconciliationLineOut(BaseModel):
    """One line of the settlement file, or one of our refunds its period lacks
    (missing_in_file), and what matching it found.

    A refund line's columns hold the file's refund and ours. A dispute line (a
    chargeback's money the PSE took back or gave back; outcome `dispute_*`)
    uses the same columns for the dispute: `pse_refund_id` is the file's
    dispute id, `reference` the file's id of the disputed payment, `refund_id`
    our dispute's id (`dsp_…`), `file_status` `withdrawn` or `reinstated`, and
    `our_amount` and `our_status` our dispute's. A dispute line changes nothing
    in our records."""

    line: int | None = Field(
        description="line in the file (1 is the header); null for missing_in_file"
    )
    outcome: str = Field(
        description="refund lines: matched; amount_mismatch; status_mismatch (the file's "
        "status contradicts ours); missing_in_service (the PSE settled a refund we do not "
        "know); missing_in_file (we hold it succeeded, the file's period does not have it). "
        "Dispute lines: dispute_matched (the file and our dispute agree); "
        "dispute_amount_mismatch (the file moved another amount than our dispute's); "
        "dispute_status_mismatch (the file reinstated the money of a dispute we hold as open "
        "or lost, or moved a dispute's money the same way twice); dispute_missing_in_service "
        "(the file moved money for a dispute we do not know: a withdrawal means the customer "
        "has the money back and the payment could still be refunded, paying them twice)"
    )
    pse_refund_id: str | None = Field(
        description="the PSE's refund id in the file; on a dispute line the file's dispute "
        "id (null when the file names only the payment)"
    )
    reference: str | None = Field(
        description="the file's reference of the refund; on a dispute line the file's id of "
        "the disputed payment (of the file's ids, the one our payment is registered under "
        "when we know it)"
    )
    refund_id: str | None = Field(
        description="our refund the line matched (rf_…); on a dispute line our dispute "
        "(dsp_…); null when we have none"
    )
    file_amount: int | None = Field(
        description="the file's amount in minor units (a dispute line's unsigned); null for "
        "missing_in_file"
    )
    file_status: str | None = Field(
        description="the file's status of the refund; on a dispute line which way the money "
        "moved: withdrawn (the PSE took the disputed amount back) or reinstated (it gave it "
        "back)"
    )
    our_amount: int | None = Field(
        description="our refund's amount in minor units, or on a dispute line our dispute's; "
        "null when we have none"
    )
    our_status: str | None = Field(
        description="our refund's status, or on a dispute line our dispute's (open, won, "
        "lost, closed); null when we have none"
    )
    currency: str | None
    settled_at: datetime | None
    fee: int | None
    settlement_amount: int | None
    settlement_currency: str | None
    detail: str | None


class ReconciliationRows(BaseModel):
    data: list[ReconciliationLineOut]
    next_cursor: str | None


RUN_EXAMPLE: dict[str, Any] = {
    "id": "rec_0193c1d2e3f4",
    "pse_account": "stripe_jp",
    "status": "completed",
    "filename": "settlement-2026-11.csv",
    "file_format": "generic",
    "rows_total": 4,
    "counts": {
        "matched": 1,
        "amount_mismatch": 1,
        "status_mismatch": 0,
        "missing_in_service": 1,
        "missing_in_file": 0,
        "dispute_matched": 1,
        "dispute_amount_mismatch": 0,
        "dispute_status_mismatch": 0,
        "dispute_missing_in_service": 0,
    },
    "adopted": 0,
    "range_from": "2026-11-01T00:00:00Z",
    "range_to": "2026-11-30T00:00:00Z",
    "error": None,
    "created_at": "2026-11-30T09:00:00Z",
    "completed_at": "2026-11-30T09:00:02Z",
}


class ReconciliationRunOut(BaseModel):
    """A reconciliation run as listed: its counts, without its lines."""

    id: str
    pse_account: str
    status: Literal["processing", "completed", "failed"]
    filename: str | None
    file_format: str | None
    rows_total: int
    counts: dict[str, int]
    adopted: int = Field(description="unknown/pending refunds the file proved settled")
    range_from: datetime | None
    range_to: datetime | None
    error: str | None
    created_at: datetime
    completed_at: datetime | None

    model_config = ConfigDict(json_schema_extra={"examples": [RUN_EXAMPLE]})


# A dispute line: the columns of a refund line, holding the dispute.
DISPUTE_LINE_EXAMPLE: dict[str, Any] = {
    "line": 4,
    "outcome": "dispute_matched",
    "pse_refund_id": "du_1Q2w3E4r5T6y7U8i",
    "reference": "ch_3Q9x2b4c5d6e7f8g",
    "refund_id": "dsp_0193c1d2e3f4a5b6c7d8e9f0",
    "file_amount": 5000,
    "file_status": "withdrawn",
    "our_amount": 5000,
    "our_status": "open",
    "currency": "JPY",
    "settled_at": "2026-11-27T09:00:00Z",
    "fee": 1500,
    "settlement_amount": None,
    "settlement_currency": None,
    "detail": "payment pay_0193c1d2e3f4a5b6",
}


class ReconciliationOut(ReconciliationRunOut):
    """A reconciliation run: a settlement file matched against our refunds
    (and its dispute lines against our disputes)."""

    rows: ReconciliationRows

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {**RUN_EXAMPLE, "rows": {"data": [DISPUTE_LINE_EXAMPLE], "next_cursor": None}}
            ]
        }
    )


class FxTotalOut(BaseModel):
    settlement_currency: str
    refunds: int
    refunds_with_actual_settlement: int
    fx_difference: int
    fees: int


class FxReportOut(BaseModel):
    """FX differences and fees of settled refunds, by settlement currency."""

    from_: datetime | None = Field(alias="from")
    to: datetime | None
    data: list[FxTotalOut]


class AuditRecordOut(BaseModel):
    """One record of the tamper-evident audit trail (secrets redacted)."""

    seq: int
    at: datetime
    kind: str = Field(
        description="api.request, pse.call, webhook.received, webhook.sent, refund.status, "
        "dispute.reported, key.created, key.revoked, approval.decision, audit.purged"
    )
    request_id: str | None
    refund_id: str | None
    payment_id: str | None
    actor: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "seq": 1042,
                    "at": "2026-11-27T08:00:00Z",
                    "kind": "refund.status",
                    "request_id": "5f0c6c1e2b7a4d3e9a1f0b2c3d4e5f60",
                    "refund_id": "rf_0193c1d2e3f4a5b6c7d8e9f0a1b2",
                    "payment_id": "pay_0193c1d2e3f4a5b6c7d8e9f0a1b2",
                    "actor": "approver1",
                    "data": {"from": "pending_approval", "to": "approved", "detail": "ok"},
                    "prev_hash": "9f2c…",
                    "hash": "4ab1…",
                }
            ]
        }
    )


class AuditPage(BaseModel):
    data: list[AuditRecordOut]
    next_cursor: str | None
