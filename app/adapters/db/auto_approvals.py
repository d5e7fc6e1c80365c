"""The amount refunded without approval each day, per currency, against the
policy's daily limit."""

from __future__ import annotations

import asyncpg

# The day's row, created if missing, and locked with its total in one round
# trip (a conflicting insert that updates locks the row as FOR UPDATE does):
# refunds approved automatically at the same time are counted one after the
# other.
_LOCK = (
    "INSERT INTO auto_approval_totals AS t (currency, day, amount) VALUES ($1, $2, 0) "
    "ON CONFLICT (currency, day) DO UPDATE SET amount = t.amount RETURNING t.amount"
)
_ADD = "UPDATE auto_approval_totals SET amount = amount + $3 WHERE currency = $1 AND day = $2"
# The day's row created with `amount`, or `amount` added to it, only while the
# total stays at most the limit ($4). A conflicting row is locked either way
# (ON CONFLICT locks the row it finds even when WHERE declines the update), and
# the WHERE is checked against its newest committed version.
_ADD_WITHIN = (
    "INSERT INTO auto_approval_totals AS t (currency, day, amount) "
    "SELECT $1, $2, $3::bigint WHERE $3::bigint <= $4::bigint "
    "ON CONFLICT (currency, day) DO UPDATE SET amount = t.amount + excluded.amount "
    "WHERE t.amount + excluded.amount <= $4::bigint RETURNING t.amount"
)


class AutoApprovalTotals:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock_total(self, currency: str, day: str) -> int:
        amount: int = await self.conn.fetchval(_LOCK, currency, day)
        return amount

    async def add(self, currency: str, day: str, amount: int) -> None:
        await self.conn.execute(_ADD, currency, day, amount)

    async def add_within(self, currency: str, day: str, amount: int, limit: int) -> bool:
        return await self.conn.fetchval(_ADD_WITHIN, currency, day, amount, limit) is not None
