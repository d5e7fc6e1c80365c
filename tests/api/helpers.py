from __future__ import annotations

import asyncio
import itertools
from typing import Any

_counter = itertools.count(1)


def payment_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "pse_account": "fake_jp",
        "pse_payment_id": f"pay_{next(_counter)}",
        "order_id": "ORD-1001",
        "amount": 50000,
        "currency": "JPY",
        "captured_at": "2026-11-01T10:00:00Z",
        "payment_method": "card",
    }
    body.update(overrides)
    return body


async def register(api, **overrides: Any) -> dict[str, Any]:
    r = await api.client.post(
        "/v1/payments", json=payment_body(**overrides), headers=api.auth("store")
    )
    assert r.status_code == 201, r.text
    return r.json()


async def refund(
    api,
    payment_id: str,
    amount: int | None = 3000,
    *,
    key: str | None = None,
    who: str = "store",
    **extra: Any,
):
    body: dict[str, Any] = {"payment_id": payment_id, "reason": "requested_by_customer", **extra}
    if amount is not None:
        body["amount"] = amount
    headers = {**api.auth(who), "Idempotency-Key": key or f"idem-{next(_counter)}"}
    return await api.client.post("/v1/refunds", json=body, headers=headers)


async def get_refund(api, refund_id: str) -> dict[str, Any]:
    r = await api.client.get(f"/v1/refunds/{refund_id}", headers=api.auth("ops"))
    assert r.status_code == 200, r.text
    return r.json()


async def get_payment(api, payment_id: str) -> dict[str, Any]:
    r = await api.client.get(f"/v1/payments/{payment_id}", headers=api.auth("ops"))
    assert r.status_code == 200, r.text
    return r.json()


async def count_refunds(api) -> int:
    async with api.container.pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM refunds")


async def event_types(api, refund_id: str) -> list[str]:
    """The types of the refund's events for the store, in the order raised."""
    async with api.container.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type FROM events WHERE refund_id = $1 ORDER BY seq", refund_id
        )
        return [row["type"] for row in rows]


def assert_problem(response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    for field in ("type", "title", "detail"):
        assert body[field]
    return body


async def forward_events(api, who: str = "store", count: int = 1, **params: Any) -> list[dict]:
    """`GET /v1/events?after=…`: the forward feed shows an event once every
    older writing transaction in the database cluster has finished (in any
    of its databases: a test running beside this one counts), so wait
    briefly for `count` events; what it shows then, if fewer."""
    data: list[dict] = []
    for _ in range(250):
        r = await api.client.get("/v1/events", params=params, headers=api.auth(who))
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        if len(data) >= count:
            return data
        await asyncio.sleep(0.02)
    return data
