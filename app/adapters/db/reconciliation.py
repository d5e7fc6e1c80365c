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
from app.domain.reconciliation import (
    ADOPTABLE,
    JudgedBatch,
    Outcome,
    ReconciliationStatus,
    SettledStatus,
    SettlementRow,
)
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
# A run's lines have ids above its `first_line_id` (the sequence's next value
# when the run was created; the column's default) and up to `last_line_id`,
# which closes the range once the run ends (null while it runs): a run's
# lines are read as a range of the primary key, with no index of their own.
_MAX_LINE_ID = 2**63 - 1
# The last line of a run that ends: its range's end (an empty range without lines).
_LAST_LINE_ID = (
    "(SELECT coalesce(max(rr.id), reconciliations.first_line_id) FROM reconciliation_rows rr "
    "WHERE rr.reconciliation_id = reconciliations.id "
    "AND rr.id >= reconciliations.first_line_id)"
)
_ENDED = tuple(s.value for s in (ReconciliationStatus.COMPLETED, ReconciliationStatus.FAILED))
_STATUS_AT = _COLUMNS.index("status") + 1
_UPDATE = (
    "UPDATE reconciliations SET "  # noqa: S608
    + ", ".join(f"{name} = ${i}" for i, name in enumerate(_COLUMNS[1:], start=2))
    + f", last_line_id = CASE WHEN ${_STATUS_AT}::varchar IN {_ENDED} THEN {_LAST_LINE_ID} END"
    + " WHERE id = $1"
)
_GET = _SELECT + " WHERE id = $1"
_FAIL_STALLED = (
    "UPDATE reconciliations SET status = $3, error = $4, completed_at = $5, "  # noqa: S608
    f"last_line_id = {_LAST_LINE_ID} WHERE status = $1 AND created_at < $2"
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
# The table's columns in order, as its row type (which carries a batch's lines) has them.
TABLE_COLUMNS = ("id", *_LINE_COLUMNS)
_LINE_WIDTH = len(_LINE_COLUMNS)
_LINES = f"SELECT {', '.join(_LINE_COLUMNS)}, id FROM reconciliation_rows"  # noqa: S608


def _of_run(run: str, alias: str = "") -> str:
    """The lines of the run whose id is the parameter `run`: its range of ids."""
    column = f"{alias}." if alias else ""
    return (
        f"{column}reconciliation_id = {run} "  # noqa: S608 - our own columns and parameters
        f"AND {column}id >= (SELECT first_line_id FROM reconciliations WHERE id = {run}) "
        f"AND {column}id <= coalesce((SELECT last_line_id FROM reconciliations "
        f"WHERE id = {run}), {_MAX_LINE_ID})"
    )


_DELETE_LINES = f"DELETE FROM reconciliation_rows WHERE {_of_run('$1')}"  # noqa: S608
# A page of a run's lines, of one outcome or all, in id order.
_LINES_OF_RUN = f"{_LINES} WHERE {_of_run('$1')} AND id > $2 {{outcome}}ORDER BY id LIMIT $3"
# NOT EXISTS plans as an anti-join; NOT IN over a million lines would not.
_ADD_MISSING_IN_FILE = (
    "INSERT INTO reconciliation_rows (reconciliation_id, outcome, pse_refund_id, reference, "  # noqa: S608
    "refund_id, our_amount, our_status, currency, detail) "
    "SELECT $1::text, $5::text, r.pse_refund_id, r.id, r.id, r.amount, r.status, r.currency, "
    "$6::text "
    "FROM refunds r WHERE r.pse_account = $2 AND r.status = $7 "
    "AND r.updated_at >= $3 AND r.updated_at <= $4 "
    "AND NOT EXISTS (SELECT 1 FROM reconciliation_rows rr "
    f" WHERE {_of_run('$1::text', 'rr')} AND rr.refund_id = r.id)"
)
_ANTI_JOIN_MEMORY = "SET LOCAL work_mem = '64MB'"
_MISSING_IN_FILE_DETAIL = "we hold it as succeeded; the file does not have it"
# Each matched refund's fee and actual settled amount from the file, hence its
# FX difference against the amount at the payment's rate.
_APPLY_SETTLED_FIGURES = (
    "UPDATE refunds r SET fee_amount = coalesce(rr.fee, r.fee_amount), "  # noqa: S608
    "fx_difference = CASE WHEN rr.settlement_amount IS NOT NULL "
    " AND rr.settlement_currency = r.settlement_currency AND r.settlement_amount IS NOT NULL "
    " THEN rr.settlement_amount - r.settlement_amount ELSE r.fx_difference END "
    "FROM reconciliation_rows rr "
    f"WHERE {_of_run('$1', 'rr')} AND rr.refund_id = r.id AND rr.outcome = $2 "
    "AND (rr.fee IS NOT NULL OR rr.settlement_amount IS NOT NULL)"
)
# One batch of a file's refund lines matched, judged and stored in one
# statement, as `app.domain.reconciliation.judge` judges them (the unit tests
# hold the two to the same verdicts): each line finds our refund of the
# account by the PSE's id, else by our id in `reference`. The lines go in in
# file order (ids follow it), dispute lines (judged beforehand) among them.
# What comes back: the lines per outcome, the batch's settlement times, and
# the lines whose uncertain refund the file proves settled.
_O = {outcome.name: f"'{outcome.value}'" for outcome in Outcome}
# A batch's refund lines are copied (COPY, binary) into a temporary table of
# the connection's own, in `SettlementRow`'s field order, then judged from it.
_BATCH = "reconciliation_batch"
_BATCH_COLUMNS = (
    "line",
    "pse_refund_id",
    "reference",
    "file_amount",
    "currency",
    "file_status",
    "settled_at",
    "fee",
    "settlement_amount",
    "settlement_currency",
)
assert len(_BATCH_COLUMNS) == len(SettlementRow._fields)
_CREATE_BATCH = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_BATCH} (line integer, pse_refund_id text, "
    "reference text, file_amount bigint, currency text, file_status text, "
    "settled_at timestamptz, fee bigint, settlement_amount bigint, settlement_currency text) "
    "ON COMMIT DELETE ROWS"
)
# The judging statement's cost estimate for a batch would start a JIT
# compilation for each batch, which costs more than running it.
_NO_JIT = "SET LOCAL jit = off"
_EMPTY_BATCH = f"TRUNCATE {_BATCH}"
_JUDGED_REFUND_LINES = (
    "SELECT $1::text AS reconciliation_id, s.line, o.outcome, s.pse_refund_id, s.reference, "  # noqa: S608
    "f.id AS refund_id, s.file_amount, s.file_status, "
    "f.amount AS our_amount, f.status AS our_status, s.currency, s.settled_at, s.fee, "
    "s.settlement_amount, s.settlement_currency, "
    f"CASE WHEN o.outcome = {_O['MISSING_IN_SERVICE']} THEN 'no refund of ours has this id' "
    f"WHEN o.outcome = {_O['AMOUNT_MISMATCH']} THEN 'file ' || s.file_amount || ' ' "
    " || s.currency || ', ours ' || f.amount || ' ' || f.currency "
    f"WHEN o.outcome = {_O['STATUS_MISMATCH']} THEN 'file ' || s.file_status || ', ours ' "
    " || f.status "
    "WHEN s.file_status <> f.status THEN 'was ' || f.status || '; settled by the file' "
    "END AS detail "
    f"FROM {_BATCH} AS s "
    "LEFT JOIN LATERAL (SELECT id, amount, currency, status FROM refunds "
    " WHERE pse_account = $2 AND pse_refund_id = s.pse_refund_id LIMIT 1) p ON true "
    "LEFT JOIN LATERAL (SELECT id, amount, currency, status FROM refunds "
    " WHERE p.id IS NULL AND pse_account = $2 AND id = s.reference LIMIT 1) q ON true "
    "CROSS JOIN LATERAL (SELECT coalesce(p.id, q.id) AS id, coalesce(p.amount, q.amount) AS amount,"
    " coalesce(p.currency, q.currency) AS currency, coalesce(p.status, q.status) AS status) f "
    "CROSS JOIN LATERAL (SELECT CASE "
    f" WHEN f.id IS NULL THEN {_O['MISSING_IN_SERVICE']} "
    f" WHEN s.file_amount <> f.amount OR s.currency <> f.currency THEN {_O['AMOUNT_MISMATCH']} "
    f" WHEN s.file_status = f.status THEN {_O['MATCHED']} "
    f" WHEN s.file_status = '{SettledStatus.SUCCEEDED.value}' AND f.status = ANY($3::text[]) "
    f" THEN {_O['MATCHED']} ELSE {_O['STATUS_MISMATCH']} END AS outcome) o"
)
_JUDGED_DISPUTE_LINES = (
    f"SELECT $1::text, {', '.join('d.' + c for c in _LINE_COLUMNS[1:])} "  # noqa: S608
    "FROM unnest($5::reconciliation_rows[]) AS d"
)


def _store_judged(lines: str) -> str:
    return (
        f"WITH stored AS (INSERT INTO reconciliation_rows (id, {', '.join(_LINE_COLUMNS)}) "  # noqa: S608
        f"SELECT ($4::bigint[])[row_number() OVER (ORDER BY line)], * FROM ({lines}) l "
        "ORDER BY line "
        "RETURNING id, outcome, settled_at, file_status, our_status) "
        "SELECT outcome, count(*) AS lines, min(settled_at) AS first, max(settled_at) AS last, "
        f"array_agg(id ORDER BY id) FILTER (WHERE outcome = {_O['MATCHED']} "
        f" AND file_status = '{SettledStatus.SUCCEEDED.value}' AND our_status = ANY($3::text[])) "
        "AS adopt FROM stored GROUP BY outcome"
    )


_STORE_REFUND_LINES = _store_judged(_JUDGED_REFUND_LINES)
_STORE_MIXED_LINES = _store_judged(f"{_JUDGED_REFUND_LINES} UNION ALL {_JUDGED_DISPUTE_LINES}")
_ADOPTABLE = sorted(status.value for status in ADOPTABLE)
# Ids for a batch's lines, in order: batches stored side by side keep file order.
_RESERVE_LINE_IDS = (
    "SELECT array_agg(nextval('reconciliation_rows_id_seq')) FROM generate_series(1, $1)"
)
_LINES_BY_ID = _LINES + " WHERE id = ANY($1::bigint[]) ORDER BY id"
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
        # The temporary table of a batch of lines, once this transaction used it.
        self._batch_ready = False

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

    async def add_judged_lines(
        self,
        reconciliation_id: str,
        pse_account: str,
        rows: Sequence[SettlementRow],
        judged: Sequence[ReconciliationLine] = (),
        line_ids: Sequence[int] | None = None,
    ) -> JudgedBatch:
        """Match a batch of refund lines against the account's refunds, judge
        them and store their outcome lines, with `judged` (dispute lines,
        judged already) among them in file order: one statement. The lines
        take `line_ids` (from `reserve_line_ids`, one per line) in file
        order, else ids of their own."""
        if not rows and not judged:
            return JudgedBatch({}, None, None, [])
        if not self._batch_ready:
            # Empty at the start of a transaction (ON COMMIT DELETE ROWS).
            await self.conn.execute(f"{_CREATE_BATCH}; {_NO_JIT}")
            self._batch_ready = True
        else:
            await self.conn.execute(_EMPTY_BATCH)
        if rows:
            await self.conn.copy_records_to_table(_BATCH, records=rows, columns=_BATCH_COLUMNS)
        args: list[object] = [
            reconciliation_id,
            pse_account,
            _ADOPTABLE,
            line_ids
            if line_ids is not None
            else await self.reserve_line_ids(len(rows) + len(judged)),
        ]
        if judged:
            args.append([(None, *line[:_LINE_WIDTH]) for line in judged])
        found = await self.conn.fetch(_STORE_MIXED_LINES if judged else _STORE_REFUND_LINES, *args)
        firsts = [r["first"] for r in found if r["first"] is not None]
        lasts = [r["last"] for r in found if r["last"] is not None]
        return JudgedBatch(
            {r["outcome"]: r["lines"] for r in found},
            min(firsts, default=None),
            max(lasts, default=None),
            sorted(i for r in found for i in r["adopt"] or ()),
        )

    async def reserve_line_ids(self, count: int) -> list[int]:
        """`count` ids for lines, increasing: lines given them later keep this order."""
        ids: list[int] | None = await self.conn.fetchval(_RESERVE_LINE_IDS, count)
        return ids or []

    async def lines_by_id(self, line_ids: Sequence[int]) -> list[ReconciliationLine]:
        """The lines of these ids, in id order."""
        if not line_ids:
            return []
        records = await self.conn.fetch(_LINES_BY_ID, list(line_ids))
        return [ReconciliationLine(*record) for record in records]

    async def lines(
        self, reconciliation_id: str, *, outcome: str | None, limit: int, after_id: int | None
    ) -> list[ReconciliationLine]:
        """A page of the run's lines in id order, after `after_id`, of one outcome or all."""
        literal = ""
        if outcome is not None:
            # Written as a literal (`_O`): the index of the lines that are not
            # `matched` is used only when the query shows it applies.
            known = next((o for o in Outcome if o.value == outcome), None)
            if known is None:
                raise ValueError(f"no outcome {outcome!r}")
            literal = f"AND outcome = {_O[known.name]} "
        records = await self.conn.fetch(
            _LINES_OF_RUN.format(outcome=literal),
            reconciliation_id,
            after_id if after_id is not None else 0,
            limit,
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
        # An anti-join of a million lines against a million refunds: its hash
        # table fits in this much, where the default spills it to disk in batches.
        await self.conn.execute(_ANTI_JOIN_MEMORY)
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
