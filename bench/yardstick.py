"""The yardstick for bench/refunds.py: the least a refund request can cost here.

A minimal FastAPI app on a raw asyncpg pool (no ORM, no rules, no idempotency,
no events): `POST /refund` locks the payment, records a row in `yard_refunds`,
reserves the amount, commits, and answers a small JSON. Served the way the
service is (uvicorn, one worker, uvloop and httptools, no access log):

    YARDSTICK_DSN=postgresql://postgres@127.0.0.1:5432/<db> .venv/bin/python -m uvicorn \\
        bench.yardstick:app --port 8200 --log-level warning --no-access-log

The database must hold the service's `payments` table and the `yard_refunds`
table below (bench/refunds.py creates both in its scratch database).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

DDL = """
CREATE TABLE IF NOT EXISTS yard_refunds (
    id text PRIMARY KEY,
    payment_id text NOT NULL REFERENCES payments (id),
    amount bigint NOT NULL,
    currency text NOT NULL,
    reason text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

# As many connections as the service's pool may open (app.adapters.db.engine).
POOL_MIN = 10
POOL_MAX = 20


class RefundIn(BaseModel):
    payment_id: str = Field(min_length=1, max_length=40)
    amount: int = Field(gt=0)
    reason: str = "requested_by_customer"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(
        os.environ["YARDSTICK_DSN"], min_size=POOL_MIN, max_size=POOL_MAX
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(title="refund yardstick", lifespan=lifespan)


@app.post("/refund", status_code=201)
async def refund(body: RefundIn) -> dict[str, object]:
    refund_id = "yrf_" + secrets.token_hex(12)
    pool: asyncpg.Pool = app.state.pool
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT amount, refunded_amount, reserved_amount, currency"
            " FROM payments WHERE id = $1 FOR UPDATE",
            body.payment_id,
        )
        if row is None:
            raise HTTPException(404, "no such payment")
        if body.amount > row["amount"] - row["refunded_amount"] - row["reserved_amount"]:
            raise HTTPException(409, "amount exceeds the refundable amount")
        await conn.execute(
            "INSERT INTO yard_refunds (id, payment_id, amount, currency, reason)"
            " VALUES ($1, $2, $3, $4, $5)",
            refund_id,
            body.payment_id,
            body.amount,
            row["currency"],
            body.reason,
        )
        await conn.execute(
            "UPDATE payments SET reserved_amount = reserved_amount + $2, updated_at = now()"
            " WHERE id = $1",
            body.payment_id,
            body.amount,
        )
    return {
        "id": refund_id,
        "payment_id": body.payment_id,
        "amount": body.amount,
        "currency": row["currency"],
        "status": "approved",
    }
