"""The amount refunded without approval each day, per currency, against the
policy's daily limit."""

from __future__ import annotations

import asyncpg

# The day's row is created if missing, then locked: refunds approved
# automatically at the same time are counted one after the other.
_CREATE = (
    "INSERT INTO auto_approval_totals (currency, day, amount) VALUES ($1, $2, 0) "
    "ON CONFLICT DO NOTHING"
)
_LOCK = "SELECT amount FROM auto_approval_totals WHERE currency = $1 AND day = $2 FOR UPDATE"
_ADD = "UPDATE auto_approval_totals SET amount = amount + $3 WHERE currency = $1 AND day = $2"


class AutoApprovalTotals:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock_total(self, currency: str, day: str) -> int:
        await self.conn.execute(_CREATE, currency, day)
        amount = await self.conn.fetchval(_LOCK, currency, day)
        return int(amount or 0)

    async def add(self, currency: str, day: str, amount: int) -> None:
        await self.conn.execute(_ADD, currency, day, amount)
