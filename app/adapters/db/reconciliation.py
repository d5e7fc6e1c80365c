"""Reconciliation runs, their lines (a million for a large settlement file),
and the FX report read from the refunds they settle.

Also what matching a file's dispute lines reads of our disputes
(`settlement_disputes`); every other read of disputes is the disputes
repository's."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from app.adapters.db.statements import Conditions, rows_affected
from app.domain.disputes import DisputeStatus
from app.domain.models import RefundStatus
from app.domain.money import Money
from app.domain.reconciliation import Outcome, ReconciliationStatus
from app.domain.reconciliation_disputes import DisputeSnapshot, KnownDisputes
from app.domain.records import FxTotal, Reconciliation, ReconciliationLine

_COLUMNS = (
    "id",
    "pse_account",
    "status",
    "created_at",
    "filename",
    "file_format",
    "rows_total",
    "counts",
    "range_from",
    "range_to",
    "adopted",
    "error",
    "created_by",
    "completed_at",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM reconciliations"  # noqa: S608
_INSERT = (
    f"INSERT INTO reconciliations ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})"
)
_UPDATE = (
    "UPDATE reconciliations SET "  # noqa: S608
    + ", ".join(f"{name} = ${i}" for i, name in enumerate(_COLUMNS[1:], start=2))
    + " WHERE id = $1"
)
_GET = _SELECT + " WHERE id = $1"
_FAIL_STALLED = (
    "UPDATE reconciliations SET status = $3, error = $4, completed_at = $5 "
    "WHERE status = $1 AND created_at < $2"
)
_STALLED_ERROR = "interrupted (the process running it stopped); upload the file again"

# The columns of a line in ReconciliationLine's field order, its id last.
_LINE_COLUMNS = (
    "reconciliation_id",
    "line",
    "outcome",
    "pse_refund_id",
    "reference",
    "refund_id",
    "file_amount",
    "file_status",
    "our_amount",
    "our_status",
    "currency",
    "settled_at",
    "fee",
    "settlement_amount",
    "settlement_currency",
    "detail",
)
assert (*_LINE_COLUMNS, "id") == ReconciliationLine._fields
_LINE_WIDTH = len(_LINE_COLUMNS)
_LINES = f"SELECT {', '.join(_LINE_COLUMNS)}, id FROM reconciliation_rows"  # noqa: S608
_DELETE_LINES = "DELETE FROM reconciliation_rows WHERE reconciliation_id = $1"
# NOT EXISTS plans as an anti-join; NOT IN over a million lines would not.
_ADD_MISSING_IN_FILE = (
    "INSERT INTO reconciliation_rows (reconciliation_id, outcome, pse_refund_id, reference, "
    "refund_id, our_amount, our_status, currency, detail) "
    "SELECT $1::text, $5::text, r.pse_refund_id, r.id, r.id, r.amount, r.status, r.currency, "
    "$6::text "
    "FROM refunds r WHERE r.pse_account = $2 AND r.status = $7 "
    "AND r.updated_at >= $3 AND r.updated_at <= $4 "
    "AND NOT EXISTS (SELECT 1 FROM reconciliation_rows rr "
    " WHERE rr.reconciliation_id = $1::text AND rr.refund_id = r.id)"
)
_MISSING_IN_FILE_DETAIL = "we hold it as succeeded; the file does not have it"
# Each matched refund's fee and actual settled amount from the file, hence its
# FX difference against the amount at the payment's rate.
_APPLY_SETTLED_FIGURES = (
    "UPDATE refunds r SET fee_amount = coalesce(rr.fee, r.fee_amount), "
    "fx_difference = CASE WHEN rr.settlement_amount IS NOT NULL "
    " AND rr.settlement_currency = r.settlement_currency AND r.settlement_amount IS NOT NULL "
    " THEN rr.settlement_amount - r.settlement_amount ELSE r.fx_difference END "
    "FROM reconciliation_rows rr "
    "WHERE rr.reconciliation_id = $1 AND rr.refund_id = r.id AND rr.outcome = $2 "
    "AND (rr.fee IS NOT NULL OR rr.settlement_amount IS NOT NULL)"
)
_FX_STATUSES = [RefundStatus.SUCCEEDED.value, RefundStatus.PENDING.value]

# The disputes a batch of dispute lines names, by the PSE's dispute id or by
# the PSE's id of their payment (unique per account: uq_disputes_pse_account,
# uq_payments_pse).
_SETTLEMENT_DISPUTES = (
    "SELECT d.id, d.pse_dispute_id, d.payment_id, p.pse_payment_id, d.amount, d.currency, "
    "d.status, d.opened_at FROM disputes d JOIN payments p ON p.id = d.payment_id "
    "WHERE d.pse_account = $1 AND (d.pse_dispute_id = ANY($2::text[]) OR d.payment_id IN "
    "(SELECT id FROM payments WHERE pse_account = $1 AND pse_payment_id = ANY($3::text[])))"
)
_SETTLEMENT_PAYMENTS = (
    "SELECT pse_payment_id, id FROM payments "
    "WHERE pse_account = $1 AND pse_payment_id = ANY($2::text[])"
)


def reconciliation_from_record(record: asyncpg.Record) -> Reconciliation:
    return Reconciliation(
        id=record["id"],
        pse_account=record["pse_account"],
        status=record["status"],
        created_at=record["created_at"],
        filename=record["filename"],
        file_format=record["file_format"],
        rows_total=record["rows_total"],
        counts=dict(record["counts"] or {}),
        range_from=record["range_from"],
        range_to=record["range_to"],
        adopted=record["adopted"],
        error=record["error"],
        created_by=record["created_by"],
        completed_at=record["completed_at"],
    )


def _values(r: Reconciliation) -> list[object]:
    """The columns after the id, in `_COLUMNS`' order."""
    return [
        r.pse_account,
        r.status,
        r.created_at,
        r.filename,
        r.file_format,
        r.rows_total,
        r.counts,
        r.range_from,
        r.range_to,
        r.adopted,
        r.error,
        r.created_by,
        r.completed_at,
    ]


class ReconciliationRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def add(self, reconciliation: Reconciliation) -> None:
        await self.conn.execute(_INSERT, reconciliation.id, *_values(reconciliation))

    async def get(self, reconciliation_id: str) -> Reconciliation | None:
        record = await self.conn.fetchrow(_GET, reconciliation_id)
        return reconciliation_from_record(record) if record else None

    async def update(self, reconciliation: Reconciliation) -> None:
        await self.conn.execute(_UPDATE, reconciliation.id, *_values(reconciliation))

    async def fail_stalled(self, started_before: datetime, now: datetime) -> int:
        """Runs still `processing` long after they began: their process stopped."""
        status = await self.conn.execute(
            _FAIL_STALLED,
            ReconciliationStatus.PROCESSING.value,
            started_before,
            ReconciliationStatus.FAILED.value,
            _STALLED_ERROR,
            now,
        )
        return rows_affected(status)

    async def add_lines(self, lines: Sequence[ReconciliationLine]) -> None:
        if not lines:
            return
        # COPY: a million lines in seconds, where INSERTs would take minutes.
        await self.conn.copy_records_to_table(
            "reconciliation_rows",
            records=[line[:_LINE_WIDTH] for line in lines],
            columns=list(_LINE_COLUMNS),
        )

    async def lines(
        self, reconciliation_id: str, *, outcome: str | None, limit: int, after_id: int | None
    ) -> list[ReconciliationLine]:
        where = Conditions()
        where.add("reconciliation_id = {}", reconciliation_id)
        if outcome is not None:
            where.add("outcome = {}", outcome)
        if after_id is not None:
            where.add("id > {}", after_id)
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{_LINES}{where.where()} ORDER BY id LIMIT {limit_at}", *where.args, limit
        )
        return [ReconciliationLine(*record) for record in records]

    async def delete_lines(self, reconciliation_id: str) -> None:
        await self.conn.execute(_DELETE_LINES, reconciliation_id)

    async def add_missing_in_file(
        self,
        reconciliation_id: str,
        pse_account: str,
        succeeded_from: datetime,
        succeeded_to: datetime,
    ) -> int:
        """Refunds of the account we hold as succeeded within the file's period
        that no line of the file matched."""
        status = await self.conn.execute(
            _ADD_MISSING_IN_FILE,
            reconciliation_id,
            pse_account,
            succeeded_from,
            succeeded_to,
            Outcome.MISSING_IN_FILE.value,
            _MISSING_IN_FILE_DETAIL,
            RefundStatus.SUCCEEDED.value,
        )
        return rows_affected(status)

    async def apply_settled_figures(self, reconciliation_id: str) -> int:
        """Record each matched refund's fee and actual settled amount (hence its FX
        difference against the payment's rate) from the file."""
        status = await self.conn.execute(
            _APPLY_SETTLED_FIGURES, reconciliation_id, Outcome.MATCHED.value
        )
        return rows_affected(status)

    async def fx_totals(
        self,
        created_from: datetime | None,
        created_to: datetime | None,
        currency: str | None,
        accounts: Sequence[str] | None = None,
    ) -> list[FxTotal]:
        where = Conditions()
        where.add("status = ANY({}::text[])", _FX_STATUSES)
        where.add("settlement_currency IS NOT NULL")
        if accounts is not None:
            where.add("pse_account = ANY({}::text[])", list(accounts))
        if created_from is not None:
            where.add("created_at >= {}", created_from)
        if created_to is not None:
            where.add("created_at < {}", created_to)
        if currency is not None:
            where.add("settlement_currency = {}", currency)
        records = await self.conn.fetch(
            "SELECT settlement_currency, count(*) AS refunds, "  # noqa: S608
            "coalesce(sum(fx_difference), 0) AS fx, coalesce(sum(fee_amount), 0) AS fees, "
            f"count(fx_difference) AS with_actual FROM refunds{where.where()} "
            "GROUP BY settlement_currency ORDER BY settlement_currency",
            *where.args,
        )
        return [
            FxTotal(
                r["settlement_currency"],
                r["refunds"],
                int(r["fx"]),
                int(r["fees"]),
                r["with_actual"],
            )
            for r in records
        ]

    async def list(
        self, *, limit: int, before_id: str | None, accounts: Sequence[str] | None = None
    ) -> list[Reconciliation]:
        """Runs newest first (ids sort by creation time)."""
        where = Conditions()
        if accounts is not None:
            where.add("pse_account = ANY({}::text[])", list(accounts))
        if before_id is not None:
            where.add("id < {}", before_id)
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{_SELECT}{where.where()} ORDER BY id DESC LIMIT {limit_at}", *where.args, limit
        )
        return [reconciliation_from_record(record) for record in records]

    async def settlement_disputes(
        self, pse_account: str, pse_dispute_ids: Sequence[str], pse_payment_ids: Sequence[str]
    ) -> KnownDisputes:
        """Our disputes of the account that dispute lines name, by the PSE's
        dispute id or their payment's PSE id, and the payments so named."""
        payments: dict[str, str] = {}
        if pse_payment_ids:
            records = await self.conn.fetch(
                _SETTLEMENT_PAYMENTS, pse_account, list(set(pse_payment_ids))
            )
            payments = {r["pse_payment_id"]: r["id"] for r in records}
        records = await self.conn.fetch(
            _SETTLEMENT_DISPUTES,
            pse_account,
            list(set(pse_dispute_ids)),
            list(set(pse_payment_ids)),
        )
        disputes = [
            DisputeSnapshot(
                r["id"],
                r["pse_dispute_id"],
                r["payment_id"],
                r["pse_payment_id"],
                Money(r["amount"], r["currency"]),
                DisputeStatus(r["status"]),
                r["opened_at"],
            )
            for r in records
        ]
        return KnownDisputes(disputes, payments)
