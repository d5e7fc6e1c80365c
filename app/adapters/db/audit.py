"""The audit trail: append-only records in a hash chain, and the chain's head.

The table refuses UPDATE, DELETE and TRUNCATE (triggers of migration 0004)
except inside a purge, which says so for its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime

import asyncpg

from app.adapters.db.payments import of_accounts
from app.adapters.db.statements import Conditions, Write, in_one_round_trip, rows_affected
from app.domain.audit import AuditEntry, AuditRecord, seal

_COLUMNS = (
    "seq",
    "at",
    "kind",
    "request_id",
    "refund_id",
    "payment_id",
    "actor",
    "body",
    "prev_hash",
    "hash",
)
# Records are written and read column by column, in their fields' order.
assert tuple(f.name for f in fields(AuditRecord)) == _COLUMNS
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM audit_log"  # noqa: S608

# The head is locked before anything is sealed: appends from every process
# are serialised, one short transaction per batch.
_LOCK_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE"
_TYPES = ("bigint", "timestamptz", *["text"] * 8)
# The sealed records from arrays, and the head moved past them: one statement.
_APPEND = in_one_round_trip(
    Write(
        f"INSERT INTO audit_log ({', '.join(_COLUMNS)}) SELECT * FROM unnest("  # noqa: S608
        + ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_TYPES, start=1))
        + ")",
        len(_COLUMNS),
    ),
    Write("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", 2),
)
_HEAD = "SELECT seq, hash, anchor_seq, anchor_hash FROM audit_head WHERE id = 1"
_AFTER = _SELECT + " WHERE seq > $1 ORDER BY seq LIMIT $2"
# The newest record older than the cut-off that may go: every record before
# the first one to keep (all of them when none is recent enough).
_LAST_TO_PURGE = (
    "SELECT seq, hash FROM audit_log WHERE seq < coalesce("
    "(SELECT min(seq) FROM audit_log WHERE at >= $1), (SELECT max(seq) + 1 FROM audit_log)) "
    "ORDER BY seq DESC LIMIT 1"
)
_ALLOW_PURGE = "SET LOCAL pse_refunds.audit_purge = 'on'"
_PURGE = "DELETE FROM audit_log WHERE seq <= $1"
_ANCHOR = "UPDATE audit_head SET anchor_seq = $1, anchor_hash = $2, purged_at = $3 WHERE id = 1"


# A clause for Conditions.add: its braces are doubled.
_NOT_A_READ = (
    "(kind <> 'api.request' OR (body::jsonb #>> '{{data,method}}') NOT IN ('GET', 'HEAD'))"
)


# A scoped key's records: those of a refund or a payment, every one they name
# being of its PSE accounts (three clauses for Conditions, the last two
# taking the accounts).
_OF_SOMETHING = "(refund_id IS NOT NULL OR payment_id IS NOT NULL)"
_REFUND_OF_ACCOUNTS = (
    "(refund_id IS NULL OR EXISTS (SELECT 1 FROM refunds scope_r "
    "WHERE scope_r.id = audit_log.refund_id AND scope_r.pse_account = ANY({}::text[])))"
)
_PAYMENT_OF_ACCOUNTS = f"(payment_id IS NULL OR {of_accounts('audit_log.payment_id')})"


def audit_from_record(record: asyncpg.Record) -> AuditRecord:
    return AuditRecord(*record)


class AuditRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def append(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Seal entries after the chain's head, under the head's lock."""
        head = await self.conn.fetchrow(_LOCK_HEAD)
        seq, prev = head["seq"], head["hash"]
        records = []
        for entry in entries:
            seq += 1
            record = seal(entry, seq, prev)
            records.append(record)
            prev = record.hash
        columns = ([getattr(r, name) for r in records] for name in _COLUMNS)
        await self.conn.execute(_APPEND, *columns, seq, prev)
        return records

    async def head(self) -> tuple[int, str, int, str]:
        record = await self.conn.fetchrow(_HEAD)
        return record["seq"], record["hash"], record["anchor_seq"], record["anchor_hash"]

    async def after(self, seq: int, limit: int) -> list[AuditRecord]:
        return [audit_from_record(r) for r in await self.conn.fetch(_AFTER, seq, limit)]

    async def search(
        self,
        *,
        refund_id: str | None,
        payment_id: str | None,
        request_id: str | None,
        at_from: datetime | None,
        at_to: datetime | None,
        limit: int,
        before_seq: int | None,
        oldest_first: bool = False,
        after_seq: int | None = None,
        without_kinds: Sequence[str] = (),
        without_reads: bool = False,
        accounts: Sequence[str] | None = None,
    ) -> list[AuditRecord]:
        where = Conditions()
        if accounts is not None:
            where.add(_OF_SOMETHING)
            where.add(_REFUND_OF_ACCOUNTS, list(accounts))
            where.add(_PAYMENT_OF_ACCOUNTS, list(accounts))
        if refund_id is not None:
            where.add("refund_id = {}", refund_id)
        if payment_id is not None:
            where.add("payment_id = {}", payment_id)
        if request_id is not None:
            where.add("request_id = {}", request_id)
        if at_from is not None:
            where.add("at >= {}", at_from)
        if at_to is not None:
            where.add("at < {}", at_to)
        if before_seq is not None:
            where.add("seq < {}", before_seq)
        if after_seq is not None:
            where.add("seq > {}", after_seq)
        if without_kinds:
            where.add("kind <> ALL({}::text[])", list(without_kinds))
        if without_reads:
            # Parsed only for the API requests among the rows the other
            # conditions (and their index) already narrowed.
            where.add(_NOT_A_READ)
        order = "ASC" if oldest_first else "DESC"
        limit_at = where.next_parameter()
        records = await self.conn.fetch(
            f"{_SELECT}{where.where()} ORDER BY seq {order} LIMIT {limit_at}", *where.args, limit
        )
        return [audit_from_record(record) for record in records]

    async def purge(self, older_than: datetime, now: datetime) -> int:
        """Remove the oldest records, all older than `older_than`, keeping the
        chain verifiable: the head remembers the last removed record's hash."""
        await self.conn.execute(_LOCK_HEAD)
        last = await self.conn.fetchrow(_LAST_TO_PURGE, older_than)
        if last is None:
            return 0
        await self.conn.execute(_ALLOW_PURGE)
        removed = rows_affected(await self.conn.execute(_PURGE, last["seq"]))
        await self.conn.execute(_ANCHOR, last["seq"], last["hash"], now)
        return removed
