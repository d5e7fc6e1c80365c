"""Refunds with their status history and approvals.

A refund is read with its children in one statement (JSON aggregates), and
written by the unit of work's `save_refund` as one statement with its
payment's counters and its events, from the `Write`s here. Which history
entries and approvals are new is the refund's own record
(`Refund.stored_history`, `stored_approvals`), set when it is read or saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.adapters.db.claimer import LIVE_CLAIMERS
from app.adapters.db.payments import COLUMNS as PAYMENT_COLUMNS
from app.adapters.db.payments import SELECT as PAYMENT_SELECT
from app.adapters.db.payments import payment_from_record
from app.adapters.db.statements import Conditions, Write
from app.domain.models import (
    FINAL_STATUSES,
    Approval,
    Decision,
    Payment,
    Refund,
    RefundReason,
    RefundStatus,
    StatusChange,
)
from app.domain.money import Money, money
from app.domain.ports import RefundFilter
from app.domain.reconciliation import RefundSnapshot
from app.domain.records import RefundRow, SuccessTimes, Volume

_STATUSES = {status.value: status for status in RefundStatus}
_FINAL = [status.value for status in FINAL_STATUSES]
_OPEN = [status.value for status in RefundStatus if not status.is_final]
# Statuses in which a refund may be at its PSE: the worker checks them.
_CHECKED = [
    RefundStatus.APPROVED.value,
    RefundStatus.SUBMITTING.value,
    RefundStatus.UNKNOWN.value,
    RefundStatus.PENDING.value,
]

# The columns a change of a refund writes, in parameter order after the id.
_MUTABLE = (
    "status",
    "required_approvals",
    "offline",
    "offline_reason",
    "auto_approved",
    "pse_refund_id",
    "failure_code",
    "failure_message",
    "settlement_amount",
    "settlement_currency",
    "fx_difference",
    "fee_amount",
    "offline_reference",
    "offline_paid_at",
    "submit_attempts",
    "resolve_attempts",
    "next_check_at",
    "updated_at",
    "attention",
    "attention_at",
    "hold",
)
# The columns a refund is created with and never changes.
_FIXED = (
    "payment_id",
    "pse_account",
    "amount",
    "currency",
    "reason",
    "note",
    "metadata",
    "created_by",
    "created_at",
)
_COLUMNS = ("id", *_FIXED, *_MUTABLE)

# -- writes (composed by uow.save_refund) -------------------------------------

INSERT = Write(
    f"INSERT INTO refunds ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})",
    len(_COLUMNS),
)
UPDATE = Write(
    "UPDATE refunds SET "  # noqa: S608
    + ", ".join(f"{name} = ${i}" for i, name in enumerate(_MUTABLE, start=2))
    + " WHERE id = $1",
    1 + len(_MUTABLE),
)
# The same change, made only if the row still holds what was read of it: the
# mutable columns' values as read follow the new ones. For a change decided
# without the refund's lock; it returns the id when it wrote.
UPDATE_IF_UNCHANGED = Write(
    UPDATE.sql
    + f" AND ({', '.join(_MUTABLE)}) IS NOT DISTINCT FROM ("
    + ", ".join(f"${i}" for i in range(2 + len(_MUTABLE), 2 + 2 * len(_MUTABLE)))
    + ") RETURNING id",
    1 + 2 * len(_MUTABLE),
)
# New history entries, in order: the refund's id, then one array per column.
APPEND_HISTORY = Write(
    "INSERT INTO refund_status_history (refund_id, status, at, actor, detail) "
    "SELECT $1, h.status, h.at, h.actor, h.detail FROM unnest("
    "$2::text[], $3::timestamptz[], $4::text[], $5::text[]"
    ") WITH ORDINALITY AS h(status, at, actor, detail, n) ORDER BY h.n",
    5,
)
APPEND_APPROVALS = Write(
    "INSERT INTO refund_approvals (refund_id, approver_id, approver, level, decision, note, at) "
    "SELECT $1, a.approver_id, a.approver, a.level, a.decision, a.note, a.at FROM unnest("
    "$2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::timestamptz[]"
    ") WITH ORDINALITY AS a(approver_id, approver, level, decision, note, at, n) ORDER BY a.n",
    7,
)


def _mutable_values(refund: Refund) -> list[Any]:
    return [
        refund.status.value,
        list(refund.required_approvals),
        refund.offline,
        refund.offline_reason,
        refund.auto_approved,
        refund.pse_refund_id,
        refund.failure_code,
        refund.failure_message,
        refund.settlement_amount,
        refund.settlement_currency,
        refund.fx_difference,
        refund.fee_amount,
        refund.offline_reference,
        refund.offline_paid_at,
        refund.submit_attempts,
        refund.resolve_attempts,
        refund.next_check_at,
        refund.updated_at,
        refund.attention,
        refund.attention_at,
        refund.hold,
    ]


def insert_args(refund: Refund) -> list[Any]:
    """`INSERT`'s arguments."""
    return [
        refund.id,
        refund.payment_id,
        refund.pse_account,
        refund.amount.amount,
        refund.currency,
        refund.reason.value,
        refund.note,
        refund.metadata,
        refund.created_by,
        refund.created_at,
        *_mutable_values(refund),
    ]


def update_args(refund: Refund) -> list[Any]:
    """`UPDATE`'s arguments."""
    return [refund.id, *_mutable_values(refund)]


def stored_values(read: Refund) -> list[Any]:
    """What `UPDATE_IF_UNCHANGED` compares the row with: the mutable columns
    of the refund as it was read."""
    return _mutable_values(read)


def history_args(refund: Refund) -> list[Any]:
    """`APPEND_HISTORY`'s arguments: the entries storage does not hold yet."""
    changes = refund.history[refund.stored_history :]
    return [
        refund.id,
        [change.status.value for change in changes],
        [change.at for change in changes],
        [change.actor for change in changes],
        [change.detail for change in changes],
    ]


def has_new_approvals(refund: Refund) -> bool:
    return len(refund.approvals) > refund.stored_approvals


def approvals_args(refund: Refund) -> list[Any]:
    """`APPEND_APPROVALS`'s arguments: the approvals storage does not hold yet."""
    new = refund.approvals[refund.stored_approvals :]
    return [
        refund.id,
        [a.approver_id for a in new],
        [a.approver for a in new],
        [a.level for a in new],
        [a.decision.value for a in new],
        [a.note for a in new],
        [a.at for a in new],
    ]


def mark_stored(refund: Refund) -> None:
    """Storage now holds every history entry and approval of `refund`."""
    refund.stored_history = len(refund.history)
    refund.stored_approvals = len(refund.approvals)


# -- reads ------------------------------------------------------------------

# A refund with its history and approvals, in one round trip. A refund that
# never needed an approval has none to look for.
_FIELDS = (
    f"{', '.join(f'r.{name}' for name in _COLUMNS)}, "  # noqa: S608
    "(SELECT json_agg(json_build_array(h.status, h.at, h.actor, h.detail) ORDER BY h.id) "
    " FROM refund_status_history h WHERE h.refund_id = r.id) AS history_rows, "
    "CASE WHEN r.required_approvals <> '[]'::jsonb THEN "
    "(SELECT json_agg(json_build_array(a.approver_id, a.approver, a.level, a.decision, a.note, "
    " a.at) ORDER BY a.id) FROM refund_approvals a WHERE a.refund_id = r.id) END "
    "AS approval_rows"
)
_SELECT = f"SELECT {_FIELDS} FROM refunds r"  # noqa: S608
_BY_ID = _SELECT + " WHERE r.id = $1"
_BY_ID_LOCKED = _BY_ID + " FOR UPDATE OF r"
# The payment of the account's refund with the PSE's refund id, else of the
# one our reference names (the first found by either index), locked, with that
# refund's id.
_PAYMENT_OF_MATCH_LOCKED = (
    PAYMENT_SELECT.replace("SELECT ", "SELECT m.matched_id, ", 1)  # noqa: S608
    + " JOIN (SELECT id AS matched_id, payment_id AS matched_payment FROM refunds"
    " WHERE pse_account = $1 AND ("
    "($2::text IS NOT NULL AND pse_refund_id = $2) OR ($3::text IS NOT NULL AND id = $3)) "
    "ORDER BY pse_refund_id IS NOT DISTINCT FROM $2 DESC LIMIT 1) m"
    " ON m.matched_payment = payments.id FOR UPDATE OF payments"
)
# The payment of a refund, locked, with that refund's id.
_PAYMENT_OF_REFUND_LOCKED = (
    PAYMENT_SELECT.replace("SELECT ", "SELECT $1::text AS matched_id, ", 1)  # noqa: S608
    + " WHERE id = (SELECT payment_id FROM refunds WHERE id = $1) FOR UPDATE"
)


def _then_the_refund(payment_locked: str) -> str:
    """The payment `payment_locked` locks (in a CTE, run before any refund is
    locked), then its refund `matched_id`, locked, with its history and
    approvals: one round trip.

    The statement's snapshot is taken before it waits for the payment's lock.
    The refund row itself is read as the last writer left it (PostgreSQL
    locks the newest version), but its history and approvals are read with
    that snapshot. Every writer of a refund holds its payment's lock and
    writes the refund's row with its children, so they can only be stale when
    the refund's newest row is not the one of the snapshot: `fresh` says
    whether it is (the same creating transaction), and when it is not the
    refund is read again, by a statement of its own, under the locks held."""
    return (
        f"WITH p AS MATERIALIZED ({payment_locked}) "  # noqa: S608
        f"SELECT {', '.join(f'p.{name} AS p_{name}' for name in PAYMENT_COLUMNS)}, {_FIELDS}, "
        "r.xmin = (SELECT o.xmin FROM refunds o WHERE o.id = r.id) AS fresh "
        "FROM p JOIN refunds r ON r.id = p.matched_id FOR UPDATE OF r"
    )


_MATCH_LOCKED = _then_the_refund(_PAYMENT_OF_MATCH_LOCKED)
_WITH_PAYMENT_LOCKED = _then_the_refund(_PAYMENT_OF_REFUND_LOCKED)
_PAYMENT_ID = "SELECT payment_id FROM refunds WHERE id = $1"
# Every refund of a payment, locked: read once the payment's lock is held (as
# above), in id order.
_OF_PAYMENT_LOCKED = _SELECT + " WHERE r.payment_id = $1 ORDER BY r.id FOR UPDATE OF r"
_STALE_UNFLAGGED = (
    "SELECT r.id FROM refunds r "
    "WHERE r.status <> ALL($1::text[]) AND r.created_at < $2 "
    "AND NOT EXISTS (SELECT 1 FROM events e WHERE e.refund_id = r.id "
    "AND e.type = 'refund.needs_attention' AND e.detail LIKE 'stale:%') "
    "ORDER BY r.created_at LIMIT $3"
)
# SKIP LOCKED lets several workers claim at once without waiting on, or
# taking, each other's rows; the lease (a later next_check_at) keeps them off
# these refunds once the short claiming transaction commits, and claimed_by
# names the claimer (its advisory lock key, see claimer.py). A refund whose
# claimer's lock is gone (its process died) is taken again at once, lease or
# not; one whose checks ended (next_check_at NULL) is not.
_CLAIM_DUE = (
    f"WITH live AS MATERIALIZED ({LIVE_CLAIMERS}), "  # noqa: S608
    "claimed AS ("
    " SELECT id, next_check_at FROM refunds"
    " WHERE status = ANY($1::text[]) AND (next_check_at <= $2"
    "  OR (claimed_by IS NOT NULL AND next_check_at IS NOT NULL"
    "      AND claimed_by NOT IN (SELECT key FROM live)))"
    " ORDER BY next_check_at LIMIT $3 FOR UPDATE SKIP LOCKED), "
    "leased AS (UPDATE refunds SET next_check_at = $4, claimed_by = $5"
    " WHERE id IN (SELECT id FROM claimed)) "
    "SELECT id FROM claimed ORDER BY next_check_at"
)
# A check is over: the claim is let go of, unless another claimer has taken
# it meanwhile (this one having lost its lock).
_RELEASE = "UPDATE refunds SET claimed_by = NULL WHERE id = ANY($1::text[]) AND claimed_by = $2"
_OPEN_COUNTS = (
    "SELECT status, count(*) AS refunds, count(*) FILTER (WHERE created_at < $2) AS stale "
    "FROM refunds WHERE status = ANY($1::text[]) GROUP BY status"
)
# A scoped key's variant of a statement over refunds: only its PSE accounts'.
_OPEN_COUNTS_IN = _OPEN_COUNTS.replace(" GROUP BY", " AND pse_account = ANY($3::text[]) GROUP BY")
# Array parameters: one statement shape whatever the batch's size (an IN list
# of thousands of values would be a new statement, and slow to plan, each time).
_FOR_SETTLEMENT = (
    "SELECT id, pse_refund_id, amount, currency, status FROM refunds "
    "WHERE pse_account = $1 AND (pse_refund_id = ANY($2::text[]) OR id = ANY($3::text[]))"
)


# Open refunds, with the statuses written out: the partial index of open
# refunds (migration 0007) serves only a query that names the same list (a
# status added later must be added to that index too).
_IS_OPEN = "r.status IN (" + ", ".join(f"'{status}'" for status in _OPEN) + ")"
_PAYMENTS_OF_ORDER = "ARRAY(SELECT p.id FROM payments p WHERE p.order_id = {})"
_ROWS = (
    "SELECT r.id, r.created_at, r.payment_id, p.order_id, r.pse_account, r.amount, r.currency, "
    "r.status, r.reason, r.pse_refund_id, r.failure_code, r.updated_at, r.attention "
    "FROM refunds r JOIN payments p ON p.id = r.payment_id"
)
# The status is written out, not a parameter: that is what lets the planner
# use the partial index of refunds awaiting approval.
_AWAITING_APPROVAL = (
    _SELECT + " WHERE r.status = 'pending_approval' AND r.id > $1 ORDER BY r.id LIMIT $2"
)
_AWAITING_APPROVAL_IN = (
    _SELECT + " WHERE r.status = 'pending_approval' AND r.id > $1 "
    "AND r.pse_account = ANY($3::text[]) ORDER BY r.id LIMIT $2"
)
_FLAGGED_COUNT = "SELECT count(*) FROM refunds WHERE attention IS NOT NULL"
_FLAGGED_COUNT_IN = _FLAGGED_COUNT + " AND pse_account = ANY($1::text[])"
_COUNT_BY_STATUS = (
    "SELECT status, count(*) AS refunds FROM refunds "
    "WHERE created_at >= $1 AND created_at < $2 GROUP BY status"
)
_COUNT_BY_STATUS_IN = _COUNT_BY_STATUS.replace(
    " GROUP BY", " AND pse_account = ANY($3::text[]) GROUP BY"
)
_VOLUME = (
    "SELECT currency, count(*) AS refunds, sum(amount) AS amount FROM refunds "
    "WHERE created_at >= $1 AND status = ANY($2::text[]) "
    "GROUP BY currency ORDER BY currency"
)
_VOLUME_IN = _VOLUME.replace(" GROUP BY", " AND pse_account = ANY($3::text[]) GROUP BY")
# A final status never moves, so a refund has at most one `succeeded` entry;
# the partial index of those entries finds the window's.
_SUCCESS_TIMES = (
    "SELECT r.pse_account, count(*) AS refunds, "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM h.at - r.created_at)) "
    "AS median, "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM h.at - r.created_at)) "
    "AS p95 "
    "FROM refund_status_history h JOIN refunds r ON r.id = h.refund_id "
    "WHERE h.status = 'succeeded' AND h.at >= $1 "
    "GROUP BY r.pse_account ORDER BY r.pse_account"
)
_SUCCESS_TIMES_IN = _SUCCESS_TIMES.replace(
    " GROUP BY", " AND r.pse_account = ANY($2::text[]) GROUP BY"
)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def refund_from_record(record: asyncpg.Record) -> Refund:
    """A refund from a row of `_SELECT`, with what storage holds of it noted."""
    history = [
        StatusChange(_STATUSES[status], _instant(at), actor, detail)
        for status, at, actor, detail in record["history_rows"] or ()
    ]
    approvals = [
        Approval(approver_id, approver, level, Decision(decision), note, _instant(at))
        for approver_id, approver, level, decision, note, at in record["approval_rows"] or ()
    ]
    return Refund(
        id=record["id"],
        payment_id=record["payment_id"],
        pse_account=record["pse_account"],
        amount=Money(record["amount"], record["currency"]),
        status=_STATUSES[record["status"]],
        reason=RefundReason(record["reason"]),
        note=record["note"],
        metadata=dict(record["metadata"] or {}),
        required_approvals=list(record["required_approvals"] or []),
        offline=record["offline"],
        offline_reason=record["offline_reason"],
        auto_approved=record["auto_approved"],
        created_by=record["created_by"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
        approvals=approvals,
        history=history,
        pse_refund_id=record["pse_refund_id"],
        failure_code=record["failure_code"],
        failure_message=record["failure_message"],
        settlement_amount=record["settlement_amount"],
        settlement_currency=record["settlement_currency"],
        fx_difference=record["fx_difference"],
        fee_amount=record["fee_amount"],
        offline_reference=record["offline_reference"],
        offline_paid_at=record["offline_paid_at"],
        submit_attempts=record["submit_attempts"],
        resolve_attempts=record["resolve_attempts"],
        next_check_at=record["next_check_at"],
        attention=record["attention"],
        attention_at=record["attention_at"],
        hold=record["hold"],
        stored_history=len(history),
        stored_approvals=len(approvals),
    )


class RefundRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def get(self, refund_id: str, *, for_update: bool = False) -> Refund | None:
        record = await self.conn.fetchrow(_BY_ID_LOCKED if for_update else _BY_ID, refund_id)
        return refund_from_record(record) if record else None

    async def lock_with_payment(self, refund_id: str) -> tuple[Payment, Refund] | None:
        """The refund and its payment, both locked: the payment first."""
        return await self._locked_pair(_WITH_PAYMENT_LOCKED, refund_id)

    async def _locked_pair(self, statement: str, *args: object) -> tuple[Payment, Refund] | None:
        record = await self.conn.fetchrow(statement, *args)
        if record is None:
            return None
        payment = payment_from_record({name: record[f"p_{name}"] for name in PAYMENT_COLUMNS})
        if record["fresh"]:
            return payment, refund_from_record(record)
        # A writer of the refund committed while this waited for the payment:
        # its children are read again, by a statement that sees them.
        again = await self.conn.fetchrow(_BY_ID, record["id"])
        return payment, refund_from_record(again)

    async def lock_of_payment(self, payment_id: str) -> list[Refund]:
        """Every refund of the payment, locked. Call with the payment locked:
        the payment first, as every writer of refunds takes them."""
        records = await self.conn.fetch(_OF_PAYMENT_LOCKED, payment_id)
        return [refund_from_record(record) for record in records]

    async def payment_id_of(self, refund_id: str) -> str | None:
        found: str | None = await self.conn.fetchval(_PAYMENT_ID, refund_id)
        return found

    async def lock_matching(
        self, pse_account: str, pse_refund_id: str | None, reference: str | None
    ) -> tuple[Payment, Refund] | None:
        """The account's refund with the PSE's refund id, else the one
        `reference` names, and its payment: both locked, the payment first."""
        return await self._locked_pair(
            _MATCH_LOCKED, pse_account, pse_refund_id or None, reference or None
        )

    async def stale_unflagged(self, created_before: datetime, limit: int) -> list[str]:
        """Open refunds older than the SLA that have not yet raised `needs_attention`
        for being stale."""
        records = await self.conn.fetch(_STALE_UNFLAGGED, _FINAL, created_before, limit)
        return [record["id"] for record in records]

    async def claim_due(
        self, now: datetime, lease_until: datetime, limit: int, claimer: int | None = None
    ) -> list[str]:
        """Refunds due for a self-check, or claimed by a claimer no longer alive,
        leased to the caller until `lease_until` and marked as `claimer`'s."""
        records = await self.conn.fetch(_CLAIM_DUE, _CHECKED, now, limit, lease_until, claimer)
        return [record["id"] for record in records]

    async def release_claims(self, refund_ids: Sequence[str], claimer: int) -> None:
        """`claimer`'s checks of these refunds are over."""
        await self.conn.execute(_RELEASE, list(refund_ids), claimer)

    async def open_counts(
        self, stale_before: datetime, accounts: Sequence[str] | None = None
    ) -> tuple[dict[str, int], int]:
        """Refunds not final, by status, and how many of them are stale."""
        counts = dict.fromkeys(_OPEN, 0)
        stale = 0
        if accounts is None:
            records = await self.conn.fetch(_OPEN_COUNTS, _OPEN, stale_before)
        else:
            records = await self.conn.fetch(_OPEN_COUNTS_IN, _OPEN, stale_before, list(accounts))
        for record in records:
            counts[record["status"]] = record["refunds"]
            stale += record["stale"]
        return counts, stale

    async def find_for_settlement(
        self, pse_account: str, pse_refund_ids: Sequence[str], references: Sequence[str]
    ) -> list[RefundSnapshot]:
        """What a batch of settlement lines needs of our refunds, and nothing more."""
        if not pse_refund_ids and not references:
            return []
        records = await self.conn.fetch(
            _FOR_SETTLEMENT, pse_account, list(pse_refund_ids), list(references)
        )
        return [
            RefundSnapshot(id_, pse_id, money(amount, currency), _STATUSES[status])
            for id_, pse_id, amount, currency, status in records
        ]

    async def rows(
        self, flt: RefundFilter, *, limit: int, before_id: str | None
    ) -> list[RefundRow]:
        """`list`'s refunds in its order, as rows with their payment's order id:
        what a list page or an export needs, without history or approvals."""
        where, order = _filtered(flt, before_id)
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{_ROWS}{where.where()} ORDER BY r.id {order} LIMIT {limit_at}", *where.args, limit
        )
        return [RefundRow(*record) for record in records]

    async def awaiting_approval(
        self, *, limit: int, after_id: str | None, accounts: Sequence[str] | None = None
    ) -> list[Refund]:
        """Refunds in `pending_approval`, oldest first (ids sort by creation)."""
        if accounts is None:
            records = await self.conn.fetch(_AWAITING_APPROVAL, after_id or "", limit)
        else:
            records = await self.conn.fetch(
                _AWAITING_APPROVAL_IN, after_id or "", limit, list(accounts)
            )
        return [refund_from_record(record) for record in records]

    async def flagged_count(self, accounts: Sequence[str] | None = None) -> int:
        """Refunds flagged for a person and not yet acknowledged."""
        if accounts is None:
            found: int = await self.conn.fetchval(_FLAGGED_COUNT)
        else:
            found = await self.conn.fetchval(_FLAGGED_COUNT_IN, list(accounts))
        return found

    async def count_by_status(
        self,
        created_from: datetime,
        created_to: datetime,
        accounts: Sequence[str] | None = None,
    ) -> dict[str, int]:
        """Refunds requested in [from, to), by their status now."""
        if accounts is None:
            records = await self.conn.fetch(_COUNT_BY_STATUS, created_from, created_to)
        else:
            records = await self.conn.fetch(
                _COUNT_BY_STATUS_IN, created_from, created_to, list(accounts)
            )
        return {record["status"]: record["refunds"] for record in records}

    async def volume(
        self,
        created_since: datetime,
        statuses: Sequence[RefundStatus],
        accounts: Sequence[str] | None = None,
    ) -> list[Volume]:
        listed = [s.value for s in statuses]
        if accounts is None:
            records = await self.conn.fetch(_VOLUME, created_since, listed)
        else:
            records = await self.conn.fetch(_VOLUME_IN, created_since, listed, list(accounts))
        return [Volume(r["currency"], r["refunds"], int(r["amount"])) for r in records]

    async def success_times(
        self, succeeded_since: datetime, accounts: Sequence[str] | None = None
    ) -> list[SuccessTimes]:
        if accounts is None:
            records = await self.conn.fetch(_SUCCESS_TIMES, succeeded_since)
        else:
            records = await self.conn.fetch(_SUCCESS_TIMES_IN, succeeded_since, list(accounts))
        return [
            SuccessTimes(r["pse_account"], r["refunds"], float(r["median"]), float(r["p95"]))
            for r in records
        ]

    async def list(self, flt: RefundFilter, *, limit: int, before_id: str | None) -> list[Refund]:
        where, order = _filtered(flt, before_id)
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{_SELECT}{where.where()} ORDER BY r.id {order} LIMIT {limit_at}", *where.args, limit
        )
        return [refund_from_record(record) for record in records]


def _filtered(flt: RefundFilter, before_id: str | None) -> tuple[Conditions, str]:
    """The WHERE clause of `flt` (and of the cursor), and the order it pages in."""
    where = Conditions()
    if flt.statuses:
        # Written out rather than an array parameter: with the statuses in its
        # text, even the generic plan of the prepared statement knows how rare
        # each one is (over an array parameter it guesses that most refunds
        # match and walks the primary key until the page is full). They are
        # RefundStatus values, never input.
        listed = sorted({RefundStatus(status).value for status in flt.statuses})
        where.add("r.status IN (" + ", ".join(f"'{status}'" for status in listed) + ")")
    if flt.payment_id is not None:
        where.add("r.payment_id = {}", flt.payment_id)
    if flt.payment_or_order_id is not None:
        # One array of payment ids, so both ways in use the payment_id index
        # (an OR of two conditions would not).
        where.add(
            f"r.payment_id = ANY(array_append({_PAYMENTS_OF_ORDER}, {{}}::text))",
            flt.payment_or_order_id,
            flt.payment_or_order_id,
        )
    if flt.pse_account is not None:
        where.add("r.pse_account = {}", flt.pse_account)
    if flt.accounts is not None:
        where.add("r.pse_account = ANY({}::text[])", list(flt.accounts))
    if flt.currency is not None:
        where.add("r.currency = {}", flt.currency)
    if flt.amount_min is not None:
        where.add("r.amount >= {}", flt.amount_min)
    if flt.amount_max is not None:
        where.add("r.amount <= {}", flt.amount_max)
    if flt.created_from is not None:
        where.add("r.created_at >= {}", flt.created_from)
    if flt.created_to is not None:
        where.add("r.created_at < {}", flt.created_to)
    if flt.open_before is not None:
        where.add(f"r.created_at < {{}} AND {_IS_OPEN}", flt.open_before)
    if flt.needs_attention:
        where.add("r.attention IS NOT NULL")
    if before_id is not None:
        where.add("r.id > {}" if flt.oldest_first else "r.id < {}", before_id)
    return where, "ASC" if flt.oldest_first else "DESC"
