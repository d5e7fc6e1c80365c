"""The same-protocol yardstick for bench/refunds.py: the refund protocol with the least code.

bench/yardstick.py does one transaction of three statements. This one does the
work the service does for a refund (DESIGN.md, "The refund, in phases"), in
the plainest code there is: FastAPI, a raw asyncpg pool, one statement per
step, and httpx for the PSE. No ORM, no domain objects, no rules beyond the
refundable amount, no retries.

`POST /refund` with an `Idempotency-Key` header:

1. Transaction 1: claim the key (insert into `pyard_idempotency`; on a
   conflict, which waits for the first request's commit, replay its stored
   answer with `Idempotent-Replayed: true`, or 422 if the body differs), lock
   the payment (`SELECT ... FOR UPDATE`), check the refundable amount, insert
   the refund (`approved`), its status history row, an outbox event row and an
   audit row, reserve the amount (update the payment), keep the answer
   (update the idempotency row). Commit. Answer 201 (404 / 422 answers are
   kept and replayed too).
2. After the answer (a Starlette background task): transaction 2 marks the
   refund `submitting` (+ history row) and commits; then the PSE is called
   with the refund's own idempotency key (httpx, the same sandbox PSE double
   bench/refunds.py starts, the same request the service's sandbox adapter
   sends); transaction 3 writes the result (status, PSE id), its history row,
   the payment's counters (only a final result moves them), an outbox event
   and an audit row, and commits.

The idempotency claim is per key (the service scopes it per API key as well;
this app checks no API key). Its own small schema (`DDL` below: primary keys,
foreign keys, one unique key) sits beside the service's `payments` table,
which it locks and updates like the service and bench/yardstick.py. Served
the way the service is (uvicorn, one worker, uvloop and httptools, no access
log). bench/refunds.py starts it by itself (`--only protocol` runs it alone);
by hand, against a database holding `payments` and these tables:

    PROTOCOL_YARDSTICK_DSN=postgresql://postgres@127.0.0.1:5432/<db> \\
    PROTOCOL_YARDSTICK_PSE_URL=http://127.0.0.1:8900 \\
    .venv/bin/python -m uvicorn bench.protocol_yardstick:app --port 8201 \\
        --log-level warning --no-access-log

`PROTOCOL_YARDSTICK_PSE_KEY` is the Bearer key sent to the PSE (default
`sk_bench_sandbox`, the key bench/refunds.py gives the sandbox). Or:

    .venv/bin/python bench/protocol_yardstick.py --dsn postgresql://… \
        --pse-url http://127.0.0.1:8900 [--port 8201] [--pse-key …]
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import httpx
from fastapi import FastAPI, Header, Request
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.responses import Response

DDL = """
CREATE TABLE IF NOT EXISTS pyard_idempotency (
    key text PRIMARY KEY,
    request_hash bytea NOT NULL,
    response_status int,
    response_body bytea,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pyard_refunds (
    id text PRIMARY KEY,
    payment_id text NOT NULL REFERENCES payments (id),
    amount bigint NOT NULL,
    currency text NOT NULL,
    reason text NOT NULL,
    status text NOT NULL,
    pse_idempotency_key text NOT NULL UNIQUE,
    pse_refund_id text,
    submit_attempts int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS pyard_history (
    id bigserial PRIMARY KEY,
    refund_id text NOT NULL REFERENCES pyard_refunds (id),
    status text NOT NULL,
    at timestamptz NOT NULL,
    actor text NOT NULL
);
CREATE TABLE IF NOT EXISTS pyard_outbox (
    id bigserial PRIMARY KEY,
    refund_id text NOT NULL REFERENCES pyard_refunds (id),
    type text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS pyard_audit (
    id bigserial PRIMARY KEY,
    action text NOT NULL,
    actor text NOT NULL,
    detail jsonb NOT NULL,
    at timestamptz NOT NULL
)
"""

# As many connections as the service's pool may open (app.adapters.db.engine),
# and the service's PSE client limits (app/bootstrap.py).
POOL_MIN = 10
POOL_MAX = 20
PSE_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
PSE_TIMEOUT_SECONDS = 10.0
PSE_STATUSES = ("pending", "succeeded", "failed")


class RefundIn(BaseModel):
    payment_id: str = Field(min_length=1, max_length=40)
    amount: int = Field(gt=0)
    reason: str = "requested_by_customer"


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _problem(status: int, code: str, detail: str) -> tuple[int, bytes]:
    return status, _json({"type": "about:blank", "status": status, "code": code, "detail": detail})


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """No RESET round trip on each release, as the service's pool: nothing here
    sets session state, and every transaction ends before its release."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(
        os.environ["PROTOCOL_YARDSTICK_DSN"],
        min_size=POOL_MIN,
        max_size=POOL_MAX,
        reset=_keep_session,
    )
    app.state.pse = httpx.AsyncClient(
        base_url=os.environ["PROTOCOL_YARDSTICK_PSE_URL"],
        limits=PSE_LIMITS,
        timeout=PSE_TIMEOUT_SECONDS,
        headers={
            "User-Agent": "protocol-yardstick/0.1",
            "Authorization": "Bearer "
            + os.environ.get("PROTOCOL_YARDSTICK_PSE_KEY", "sk_bench_sandbox"),
        },
    )
    try:
        yield
    finally:
        await app.state.pse.aclose()
        await app.state.pool.close()


app = FastAPI(title="refund protocol yardstick", lifespan=lifespan)


@app.post("/refund", status_code=201)
async def refund(
    body: RefundIn,
    request: Request,
    idempotency_key: str | None = Header(default=None, max_length=255),
) -> Response:
    if not idempotency_key:
        status, answer = _problem(400, "idempotency_key_required", "Idempotency-Key is required")
        return Response(answer, status, media_type="application/json")
    digest = hashlib.sha256(await request.body()).digest()
    pool: asyncpg.Pool = app.state.pool
    now = datetime.now(UTC)
    refund_id = "prf_" + secrets.token_hex(12)
    submit: BackgroundTask | None = None
    async with pool.acquire() as conn, conn.transaction():
        claimed = await conn.fetchval(
            "INSERT INTO pyard_idempotency (key, request_hash) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING true",
            idempotency_key,
            digest,
        )
        if not claimed:
            kept = await conn.fetchrow(
                "SELECT request_hash, response_status, response_body"
                " FROM pyard_idempotency WHERE key = $1",
                idempotency_key,
            )
            if kept["request_hash"] != digest:
                status, answer = _problem(
                    422, "idempotency_key_reused", "the key was used with another body"
                )
                return Response(answer, status, media_type="application/json")
            return Response(
                kept["response_body"],
                kept["response_status"],
                media_type="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
        payment = await conn.fetchrow(
            "SELECT pse_payment_id, amount, refunded_amount, reserved_amount, currency"
            " FROM payments WHERE id = $1 FOR UPDATE",
            body.payment_id,
        )
        if payment is None:
            status, answer = _problem(404, "not_found", "no such payment")
        elif body.amount > (
            payment["amount"] - payment["refunded_amount"] - payment["reserved_amount"]
        ):
            status, answer = _problem(
                422, "amount_exceeds_refundable", "amount exceeds the refundable amount"
            )
        else:
            pse_key = "pyk_" + secrets.token_hex(16)
            await conn.execute(
                "INSERT INTO pyard_refunds (id, payment_id, amount, currency, reason, status,"
                " pse_idempotency_key, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, 'approved', $6, $7, $7)",
                refund_id,
                body.payment_id,
                body.amount,
                payment["currency"],
                body.reason,
                pse_key,
                now,
            )
            await conn.execute(
                "INSERT INTO pyard_history (refund_id, status, at, actor)"
                " VALUES ($1, 'approved', $2, 'api')",
                refund_id,
                now,
            )
            view = {
                "id": refund_id,
                "payment_id": body.payment_id,
                "amount": body.amount,
                "currency": payment["currency"],
                "status": "approved",
                "reason": body.reason,
                "created_at": now.isoformat(),
            }
            await conn.execute(
                "INSERT INTO pyard_outbox (refund_id, type, payload, created_at)"
                " VALUES ($1, 'refund.created', $2, $3)",
                refund_id,
                json.dumps(view),
                now,
            )
            await conn.execute(
                "INSERT INTO pyard_audit (action, actor, detail, at)"
                " VALUES ('refund.requested', 'api', $1, $2)",
                json.dumps({"refund_id": refund_id, "amount": body.amount}),
                now,
            )
            await conn.execute(
                "UPDATE payments SET reserved_amount = reserved_amount + $2, updated_at = $3"
                " WHERE id = $1",
                body.payment_id,
                body.amount,
                now,
            )
            status, answer = 201, _json(view)
            submit = BackgroundTask(
                submit_refund,
                refund_id,
                pse_key,
                {
                    "payment_id": payment["pse_payment_id"],
                    "amount": body.amount,
                    "currency": payment["currency"],
                    "reference": refund_id,
                    "reason": body.reason,
                    "metadata": {},
                },
                body.payment_id,
                body.amount,
            )
        await conn.execute(
            "UPDATE pyard_idempotency SET response_status = $2, response_body = $3 WHERE key = $1",
            idempotency_key,
            status,
            answer,
        )
    return Response(answer, status, media_type="application/json", background=submit)


async def submit_refund(
    refund_id: str, pse_key: str, pse_body: dict[str, object], payment_id: str, amount: int
) -> None:
    """Transactions 2 and 3, with the PSE call between them and no transaction open."""
    pool: asyncpg.Pool = app.state.pool
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        moved = await conn.execute(
            "UPDATE pyard_refunds SET status = 'submitting', submit_attempts = submit_attempts + 1,"
            " updated_at = $2 WHERE id = $1 AND status = 'approved'",
            refund_id,
            now,
        )
        if moved != "UPDATE 1":
            return
        await conn.execute(
            "INSERT INTO pyard_history (refund_id, status, at, actor)"
            " VALUES ($1, 'submitting', $2, 'system')",
            refund_id,
            now,
        )
    pse_refund_id = None
    try:
        answer = await app.state.pse.post(
            "/v1/refunds", headers={"Idempotency-Key": pse_key}, json=pse_body
        )
        if answer.status_code in (200, 201):
            seen = answer.json()
            status = seen.get("status") if seen.get("status") in PSE_STATUSES else "unknown"
            pse_refund_id = seen.get("id")
        elif answer.status_code in (400, 401):
            status = "rejected"  # the PSE says it made no refund
        else:
            status = "unknown"  # 409, 429, 5xx: it may hold one; the service's worker would ask
    except (httpx.HTTPError, ValueError):
        status = "unknown"
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        moved = await conn.execute(
            "UPDATE pyard_refunds SET status = $2, pse_refund_id = $3, updated_at = $4"
            " WHERE id = $1 AND status = 'submitting'",
            refund_id,
            status,
            pse_refund_id,
            now,
        )
        if moved != "UPDATE 1":
            return
        await conn.execute(
            "INSERT INTO pyard_history (refund_id, status, at, actor) VALUES ($1, $2, $3, 'pse')",
            refund_id,
            status,
            now,
        )
        if status in ("succeeded", "failed", "rejected"):
            await conn.execute(
                "UPDATE payments SET refunded_amount = refunded_amount + $2,"
                " reserved_amount = reserved_amount - $3, updated_at = $4 WHERE id = $1",
                payment_id,
                amount if status == "succeeded" else 0,
                amount,
                now,
            )
        await conn.execute(
            "INSERT INTO pyard_outbox (refund_id, type, payload, created_at)"
            " VALUES ($1, $2, $3, $4)",
            refund_id,
            f"refund.{status}",
            json.dumps({"id": refund_id, "status": status, "pse_refund_id": pse_refund_id}),
            now,
        )
        await conn.execute(
            "INSERT INTO pyard_audit (action, actor, detail, at)"
            " VALUES ('refund.pse_result', 'pse', $1, $2)",
            json.dumps({"refund_id": refund_id, "status": status}),
            now,
        )


def main() -> None:
    """Serve this app alone, as bench/refunds.py does (uvicorn, one worker, uvloop,
    httptools, no access log)."""
    import argparse
    import sys
    from pathlib import Path

    import uvicorn

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=8201)
    parser.add_argument("--dsn", required=True, help="the database (PROTOCOL_YARDSTICK_DSN)")
    parser.add_argument("--pse-url", required=True, help="the PSE (PROTOCOL_YARDSTICK_PSE_URL)")
    parser.add_argument("--pse-key", default="sk_bench_sandbox", help="its Bearer key")
    args = parser.parse_args()
    os.environ["PROTOCOL_YARDSTICK_DSN"] = args.dsn
    os.environ["PROTOCOL_YARDSTICK_PSE_URL"] = args.pse_url
    os.environ["PROTOCOL_YARDSTICK_PSE_KEY"] = args.pse_key
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    uvicorn.run(
        "bench.protocol_yardstick:app",
        host="127.0.0.1",
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
