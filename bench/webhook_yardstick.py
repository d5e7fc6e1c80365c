"""The same-protocol yardstick for bench/webhooks.py: webhook ingestion in the least code.

The work the service does for a PSE webhook (DESIGN.md, phase 4), in the
plainest code there is: FastAPI, a raw asyncpg pool, one statement per step.
`POST /webhooks/{pse_account}`:

1. verify the Standard Webhooks signature (`standardwebhooks.Webhook.verify`:
   HMAC-SHA256 over "id.timestamp.body", the five-minute tolerance) with the
   one secret of `WEBHOOK_YARDSTICK_SECRET`; 401 if it fails;
2. one transaction: store the raw event (insert, unique on account + event id;
   a repeated id answers `duplicate` and changes nothing), lock the refund by
   its PSE id (`SELECT ... FOR UPDATE`), move it if the move is allowed
   (`pending` to `succeeded` or `failed`; a final status never moves:
   `conflict`), with its status history row, the payment's counters, an
   outbox event and an audit row (the service audits each webhook too), and
   mark the event with its outcome. Commit.
3. Answer 200 `{"received", "event_id", "duplicate", "status"}` as the service
   does (`status`: applied, conflict, unmatched or ignored).

Its own small schema (`DDL` below: primary keys, foreign keys, the unique keys
the protocol needs), seeded from the service's `payments` and `refunds` by
`SEED_FROM_SERVICE`, so both ingest the same events against the same refunds
without touching each other's rows. Served the way the service is (uvicorn,
one worker, uvloop and httptools, no access log); bench/webhooks.py starts it
by itself after the service, in the same run. By hand:

    WEBHOOK_YARDSTICK_DSN=postgresql://postgres@127.0.0.1:5432/<db> \\
    WEBHOOK_YARDSTICK_SECRET=whsec_... \\
    .venv/bin/python -m uvicorn bench.webhook_yardstick:app --port 8202 \\
        --log-level warning --no-access-log

or `.venv/bin/python bench/webhook_yardstick.py --dsn postgresql://… --secret whsec_…
[--port 8202]`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.responses import Response

DDL = """
CREATE TABLE IF NOT EXISTS wyard_payments (
    id text PRIMARY KEY,
    amount bigint NOT NULL,
    refunded_amount bigint NOT NULL,
    reserved_amount bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS wyard_refunds (
    id text PRIMARY KEY,
    payment_id text NOT NULL REFERENCES wyard_payments (id),
    pse_account text NOT NULL,
    pse_refund_id text,
    amount bigint NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (pse_account, pse_refund_id)
);
CREATE TABLE IF NOT EXISTS wyard_events (
    id bigserial PRIMARY KEY,
    pse_account text NOT NULL,
    event_id text NOT NULL,
    type text NOT NULL,
    body text NOT NULL,
    status text NOT NULL,
    refund_id text REFERENCES wyard_refunds (id),
    received_at timestamptz NOT NULL,
    UNIQUE (pse_account, event_id)
);
CREATE TABLE IF NOT EXISTS wyard_history (
    id bigserial PRIMARY KEY,
    refund_id text NOT NULL REFERENCES wyard_refunds (id),
    status text NOT NULL,
    at timestamptz NOT NULL,
    actor text NOT NULL
);
CREATE TABLE IF NOT EXISTS wyard_outbox (
    id bigserial PRIMARY KEY,
    refund_id text NOT NULL REFERENCES wyard_refunds (id),
    type text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS wyard_audit (
    id bigserial PRIMARY KEY,
    action text NOT NULL,
    actor text NOT NULL,
    detail jsonb NOT NULL,
    at timestamptz NOT NULL
)
"""

# The yardstick's copy of the service's payments and refunds (run once, after seeding).
SEED_FROM_SERVICE = """
INSERT INTO wyard_payments (id, amount, refunded_amount, reserved_amount)
    SELECT id, amount, refunded_amount, reserved_amount FROM payments;
INSERT INTO wyard_refunds (id, payment_id, pse_account, pse_refund_id, amount, currency,
                           status, updated_at)
    SELECT id, payment_id, pse_account, pse_refund_id, amount, currency, status, updated_at
    FROM refunds;
ANALYZE wyard_payments, wyard_refunds
"""

# As many connections as the service's pool may open (app.adapters.db.engine).
POOL_MIN = 10
POOL_MAX = 20
FINAL = ("succeeded", "failed")
# What each PSE status does to the payment: (refunded, reserved) added.
COUNTERS = {"succeeded": (1, -1), "failed": (0, -1)}


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """No RESET round trip on each release, as the service's pool: nothing here
    sets session state, and every transaction ends before its release."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.verifier = Webhook(os.environ["WEBHOOK_YARDSTICK_SECRET"])
    app.state.pool = await asyncpg.create_pool(
        os.environ["WEBHOOK_YARDSTICK_DSN"],
        min_size=POOL_MIN,
        max_size=POOL_MAX,
        reset=_keep_session,
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(title="webhook yardstick", lifespan=lifespan)


def _answer(status: int, value: dict[str, object]) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status, media_type="application/json")


@app.post("/webhooks/{pse_account}")
async def webhook(pse_account: str, request: Request) -> Response:
    body = await request.body()
    try:
        event = app.state.verifier.verify(body, request.headers)
    except (WebhookVerificationError, ValueError):
        return _answer(401, {"code": "invalid_signature"})
    if not isinstance(event, dict) or event.get("id") != request.headers.get("webhook-id"):
        return _answer(400, {"code": "invalid_webhook_body"})
    event_id = event["id"]
    data: dict[str, Any] = event["data"] if isinstance(event.get("data"), dict) else {}
    seen = data.get("status")
    now = datetime.now(UTC)
    pool: asyncpg.Pool = app.state.pool
    async with pool.acquire() as conn, conn.transaction():
        stored = await conn.fetchval(
            "INSERT INTO wyard_events (pse_account, event_id, type, body, status, received_at)"
            " VALUES ($1, $2, $3, $4, 'received', $5) ON CONFLICT DO NOTHING RETURNING id",
            pse_account,
            event_id,
            str(event.get("type")),
            body.decode(),
            now,
        )
        if stored is None:
            return _answer(
                200, {"received": True, "event_id": event_id, "duplicate": True, "status": None}
            )
        refund = await conn.fetchrow(
            "SELECT id, payment_id, amount, status FROM wyard_refunds"
            " WHERE pse_account = $1 AND pse_refund_id = $2 FOR UPDATE",
            pse_account,
            data.get("id"),
        )
        refund_id = refund["id"] if refund is not None else None
        if refund is None:
            status = "unmatched"
        elif seen not in ("pending", *FINAL):
            status = "ignored"
        elif seen == refund["status"]:
            status = "applied"  # already there: nothing moves
        elif refund["status"] in FINAL or seen == "pending":
            status = "conflict"  # a final status never moves, nor goes back
        else:
            status = "applied"
            await conn.execute(
                "UPDATE wyard_refunds SET status = $2, updated_at = $3 WHERE id = $1",
                refund_id,
                seen,
                now,
            )
            await conn.execute(
                "INSERT INTO wyard_history (refund_id, status, at, actor) VALUES ($1, $2, $3, $4)",
                refund_id,
                seen,
                now,
                f"pse:{pse_account} webhook",
            )
            refunded, reserved = COUNTERS[seen]
            await conn.execute(
                "UPDATE wyard_payments SET refunded_amount = refunded_amount + $2,"
                " reserved_amount = reserved_amount + $3 WHERE id = $1",
                refund["payment_id"],
                refunded * refund["amount"],
                reserved * refund["amount"],
            )
            await conn.execute(
                "INSERT INTO wyard_outbox (refund_id, type, payload, created_at)"
                " VALUES ($1, $2, $3, $4)",
                refund_id,
                f"refund.{seen}",
                json.dumps({"id": refund_id, "status": seen, "pse_refund_id": data.get("id")}),
                now,
            )
        await conn.execute(
            "INSERT INTO wyard_audit (action, actor, detail, at)"
            " VALUES ('webhook.received', $1, $2, $3)",
            f"pse:{pse_account}",
            json.dumps({"event_id": event_id, "status": status, "body": body.decode()}),
            now,
        )
        await conn.execute(
            "UPDATE wyard_events SET status = $2, refund_id = $3 WHERE id = $1",
            stored,
            status,
            refund_id,
        )
    return _answer(
        200, {"received": True, "event_id": event_id, "duplicate": False, "status": status}
    )


def main() -> None:
    """Serve this app alone, as bench/webhooks.py does (uvicorn, one worker, uvloop,
    httptools, no access log)."""
    import argparse
    import sys
    from pathlib import Path

    import uvicorn

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=8202)
    parser.add_argument("--dsn", required=True, help="the database (WEBHOOK_YARDSTICK_DSN)")
    parser.add_argument("--secret", required=True, help="whsec_... (WEBHOOK_YARDSTICK_SECRET)")
    args = parser.parse_args()
    os.environ["WEBHOOK_YARDSTICK_DSN"] = args.dsn
    os.environ["WEBHOOK_YARDSTICK_SECRET"] = args.secret
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    uvicorn.run(
        "bench.webhook_yardstick:app",
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
