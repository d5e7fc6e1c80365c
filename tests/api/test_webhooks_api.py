from __future__ import annotations

import json
import re

import httpx
import pytest
from starlette.routing import Route

from app.adapters.db.uow import PgUnitOfWork
from app.api.app import create_app
from app.api.routes.webhooks import WebhookLane
from app.domain.pse import Unanswered
from tests.api.helpers import assert_problem, get_payment, get_refund, refund, register

SIGNED = {"x-fake-signature": "ok", "content-type": "application/json"}


def event(
    event_id: str,
    pse_refund_id: str,
    state: str,
    reference: str | None = None,
    *,
    payment: str | None = None,
    amount: int | None = None,
    currency: str = "JPY",
) -> bytes:
    refund: dict = {"id": pse_refund_id, "state": state, "reference": reference}
    if payment is not None:
        refund["payment"] = payment
    if amount is not None:
        refund |= {"amount": amount, "currency": currency}
    return json.dumps({"id": event_id, "type": f"refund.{state}", "refund": refund}).encode()


async def stored_events(api) -> list[dict]:
    async with api.container.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM pse_webhook_events ORDER BY id")
        return [dict(row) for row in rows]


async def sent_refund(api) -> tuple[dict, dict]:
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    return payment, await get_refund(api, created["id"])


async def test_a_signed_webhook_moves_a_pending_refund_to_succeeded(api):
    payment, pending = await sent_refund(api)
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=event("evt_1", pending["pse_refund_id"], "succeeded"),
        headers=SIGNED,
    )
    assert r.status_code == 200
    assert r.json() == {
        "received": True,
        "event_id": "evt_1",
        "duplicate": False,
        "status": "applied",
    }
    now = await get_refund(api, pending["id"])
    assert now["status"] == "succeeded"
    assert now["status_history"][-1]["actor"] == "pse:fake_jp webhook"
    paid = await get_payment(api, payment["id"])
    assert paid["refunded_amount"] == 3000 and paid["reserved_amount"] == 0


async def test_a_bad_signature_is_refused_and_nothing_is_stored(api):
    _, pending = await sent_refund(api)
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=event("evt_1", pending["pse_refund_id"], "succeeded"),
        headers={"x-fake-signature": "forged"},
    )
    assert_problem(r, 400, "invalid_signature")
    assert await stored_events(api) == []
    assert (await get_refund(api, pending["id"]))["status"] == "pending"


async def test_an_unknown_account_is_not_found(api):
    r = await api.client.post("/v1/webhooks/nope", content=b"{}", headers=SIGNED)
    assert_problem(r, 404, "not_found")


async def test_a_body_that_is_not_an_event_is_a_client_error(api):
    r = await api.client.post("/v1/webhooks/fake_jp", content=b"not json", headers=SIGNED)
    assert_problem(r, 400, "invalid_webhook_payload")


async def test_a_repeated_event_is_acknowledged_and_applied_once(api):
    _, pending = await sent_refund(api)
    body = event("evt_dup", pending["pse_refund_id"], "succeeded")
    first = await api.client.post("/v1/webhooks/fake_jp", content=body, headers=SIGNED)
    again = await api.client.post("/v1/webhooks/fake_jp", content=body, headers=SIGNED)
    assert first.json()["duplicate"] is False
    assert again.status_code == 200 and again.json()["duplicate"] is True
    history = (await get_refund(api, pending["id"]))["status_history"]
    assert [h["status"] for h in history].count("succeeded") == 1
    assert len(await stored_events(api)) == 1


async def test_a_repeat_of_any_outcome_is_a_duplicate_that_changes_nothing(api):
    """Each kind of event is stored with its outcome in the transaction that
    decides it; its repeat is answered `duplicate` and writes nothing: no
    second row, no history, no event to the store, no attention raised."""
    payment, pending = await sent_refund(api)
    pid = pending["pse_refund_id"]
    other = await register(api)
    bodies = {
        "applied": event("e_ok", pid, "succeeded"),
        "conflict": event("e_late", pid, "failed"),
        "mismatched": event(
            "e_mis", "re_B", "failed", reference=pending["id"], payment=other["pse_payment_id"]
        ),
        "unmatched": event("e_none", "re_nobody", "succeeded"),
        "ignored": json.dumps({"id": "e_ign", "type": "charge.captured", "refund": None}).encode(),
    }
    for status, body in bodies.items():
        first = await api.client.post("/v1/webhooks/fake_jp", content=body, headers=SIGNED)
        assert (first.json()["duplicate"], first.json()["status"]) == (False, status)

    async def written() -> tuple:
        async with api.container.pool.acquire() as conn:
            return (
                [
                    tuple(r)
                    for r in await conn.fetch(
                        "SELECT event_id, status, refund_id, applied_at FROM pse_webhook_events"
                        " ORDER BY id"
                    )
                ],
                await conn.fetchval("SELECT count(*) FROM refund_status_history"),
                await conn.fetchval("SELECT count(*) FROM events"),
                await conn.fetchval("SELECT attention FROM refunds WHERE id = $1", pending["id"]),
            )

    before = await written()
    assert [row[1] for row in before[0]] == list(bodies)
    for body in bodies.values():
        again = await api.client.post("/v1/webhooks/fake_jp", content=body, headers=SIGNED)
        assert again.status_code == 200
        assert (again.json()["duplicate"], again.json()["status"]) == (True, None)
    assert await written() == before
    assert (await get_payment(api, payment["id"]))["refunded_amount"] == 3000


async def test_a_late_failure_never_moves_a_succeeded_refund_and_raises_attention(api):
    payment, pending = await sent_refund(api)
    pid = pending["pse_refund_id"]
    await api.client.post(
        "/v1/webhooks/fake_jp", content=event("e1", pid, "succeeded"), headers=SIGNED
    )
    r = await api.client.post(
        "/v1/webhooks/fake_jp", content=event("e2", pid, "failed"), headers=SIGNED
    )
    assert r.json()["status"] == "conflict"
    assert (await get_refund(api, pending["id"]))["status"] == "succeeded"
    assert (await get_payment(api, payment["id"]))["refunded_amount"] == 3000
    async with api.container.pool.acquire() as conn:
        rows = await conn.fetch("SELECT type FROM events WHERE refund_id = $1", pending["id"])
    types = [row["type"] for row in rows]
    assert "refund.needs_attention" in types


async def test_an_event_that_arrives_before_the_refund_is_known_is_kept_and_applied_later(api):
    api.gateway.next_results.append(Unanswered("timeout"))
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    assert (await get_refund(api, created["id"]))["status"] == "unknown"
    # The PSE did make it; its webhook names only its own id, which we do not know yet.
    r = await api.client.post(
        "/v1/webhooks/fake_jp", content=event("e_early", "fre_77", "succeeded"), headers=SIGNED
    )
    assert r.json()["status"] == "unmatched"
    assert (await get_refund(api, created["id"]))["status"] == "unknown"
    # The refund's resolution learns the PSE id: the waiting event is applied.
    from app.domain.pse import (
        Accepted,
        PseRefund,
        PseRefundState,
    )

    api.gateway.lookup_results.append(
        Accepted(PseRefund("fre_77", PseRefundState.PENDING, reference=created["id"]))
    )
    await api.client.post(f"/v1/refunds/{created['id']}/sync", headers=api.auth("ops"))
    assert (await get_refund(api, created["id"]))["status"] == "succeeded"
    assert [e["status"] for e in await stored_events(api)] == ["applied"]


async def test_an_event_naming_our_reference_is_matched_before_we_know_the_pse_id(api):
    api.gateway.next_results.append(Unanswered("timeout"))
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=event(
            "e_ref",
            "fre_5",
            "succeeded",
            reference=created["id"],
            payment=payment["pse_payment_id"],
            amount=3000,
        ),
        headers=SIGNED,
    )
    assert r.json()["status"] == "applied"
    now = await get_refund(api, created["id"])
    assert now["status"] == "succeeded" and now["pse_refund_id"] == "fre_5"


async def needs_attention_events(api, refund_id: str) -> list[dict]:
    r = await api.client.get("/v1/events?type=refund.needs_attention", headers=api.auth("store"))
    return [e for e in r.json()["data"] if e["refund_id"] == refund_id]


async def test_another_pse_refund_carrying_our_reference_changes_nothing_and_is_flagged(api):
    # Ours is pending as PSE refund fre_1; a signed event about another PSE
    # refund (another payment, amount 1) names our refund in its metadata.
    payment, pending = await sent_refund(api)
    other = await register(api)
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=event(
            "e_other",
            "re_B",
            "failed",
            reference=pending["id"],
            payment=other["pse_payment_id"],
            amount=1,
        ),
        headers=SIGNED,
    )
    assert r.status_code == 200 and r.json()["status"] == "mismatched"
    now = await get_refund(api, pending["id"])
    assert now["status"] == "pending" and now["pse_refund_id"] == pending["pse_refund_id"]
    still = await get_payment(api, payment["id"])
    assert still["reserved_amount"] == 3000 and still["refundable_amount"] == 47000
    [flag] = await needs_attention_events(api, pending["id"])
    assert "re_B" in flag["detail"]
    [stored] = await stored_events(api)
    assert (stored["status"], stored["refund_id"]) == ("mismatched", pending["id"])
    # The freed amount the forged failure would have given is not there to refund.
    over = await refund(api, payment["id"], 47001)
    assert_problem(over, 422, "amount_exceeds_refundable")
    # Ops find it in the attention list, with the reason, until they acknowledge it.
    listed = await api.client.get("/v1/refunds?needs_attention=true", headers=api.auth("ops"))
    [flagged] = listed.json()["data"]
    assert flagged["id"] == pending["id"] and "re_B" in flagged["attention"]["detail"]


async def test_a_contradiction_of_a_final_status_stays_on_the_attention_list_until_acknowledged(
    api,
):
    _, pending = await sent_refund(api)
    for event_id, state in (("e_ok", "succeeded"), ("e_late", "failed")):
        await api.client.post(
            "/v1/webhooks/fake_jp",
            content=event(event_id, pending["pse_refund_id"], state),
            headers=SIGNED,
        )
    now = await get_refund(api, pending["id"])
    assert now["status"] == "succeeded"
    assert "failed" in now["attention"]["detail"]
    listed = await api.client.get("/v1/refunds?needs_attention=true", headers=api.auth("ops"))
    assert [r["id"] for r in listed.json()["data"]] == [pending["id"]]
    # The store may not clear it; ops must say what they found.
    r = await api.client.post(
        f"/v1/refunds/{pending['id']}/acknowledge", json={"note": "x"}, headers=api.auth("store")
    )
    assert_problem(r, 403, "forbidden")
    r = await api.client.post(
        f"/v1/refunds/{pending['id']}/acknowledge", json={}, headers=api.auth("ops")
    )
    assert_problem(r, 422, "validation_error")
    r = await api.client.post(
        f"/v1/refunds/{pending['id']}/acknowledge",
        json={"note": "PSE confirmed: the card was closed, paid by bank transfer"},
        headers=api.auth("ops"),
    )
    assert r.status_code == 200 and r.json()["attention"] is None
    assert r.json()["status"] == "succeeded"
    listed = await api.client.get("/v1/refunds?needs_attention=true", headers=api.auth("ops"))
    assert listed.json()["data"] == []
    again = await api.client.post(
        f"/v1/refunds/{pending['id']}/acknowledge", json={"note": "again"}, headers=api.auth("ops")
    )
    assert_problem(again, 409, "invalid_state")


@pytest.mark.parametrize(
    ("case", "payment_of", "amount", "currency"),
    [
        ("another payment", "other", 3000, "JPY"),
        ("another amount", "ours", 2999, "JPY"),
        ("another currency", "ours", 3000, "USD"),
        ("no amount", "ours", None, "JPY"),
        ("no payment", None, 3000, "JPY"),
    ],
)
async def test_a_reference_alone_settles_ours_only_when_payment_currency_and_amount_agree(
    api, case, payment_of, amount, currency
):
    api.gateway.next_results.append(Unanswered("timeout"))
    payment = await register(api)
    other = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    assert (await get_refund(api, created["id"]))["status"] == "unknown"
    pse_payment = {"ours": payment, "other": other}.get(payment_of, {}).get("pse_payment_id")
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=event(
            "e_ref",
            "re_X",
            "failed",
            reference=created["id"],
            payment=pse_payment,
            amount=amount,
            currency=currency,
        ),
        headers=SIGNED,
    )
    assert r.json()["status"] == "mismatched", case
    now = await get_refund(api, created["id"])
    assert now["status"] == "unknown" and now["pse_refund_id"] is None
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 3000
    assert len(await needs_attention_events(api, created["id"])) == 1


async def test_other_event_types_are_stored_and_ignored(api):
    body = json.dumps({"id": "evt_x", "type": "charge.captured", "refund": None}).encode()
    r = await api.client.post("/v1/webhooks/fake_jp", content=body, headers=SIGNED)
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert [e["status"] for e in await stored_events(api)] == ["ignored"]


async def test_an_event_whose_application_fails_is_kept_for_the_worker(api, monkeypatch):
    payment, pending = await sent_refund(api)

    async def broken_save(_self, *_args, **_kwargs):
        raise RuntimeError("the refund row could not be written")

    with monkeypatch.context() as patched:
        patched.setattr(PgUnitOfWork, "save_refund", broken_save)
        r = await api.client.post(
            "/v1/webhooks/fake_jp",
            content=event("evt_later", pending["pse_refund_id"], "succeeded"),
            headers=SIGNED,
        )
    # The PSE is told it was received: the raw event is stored, nothing applied.
    assert r.status_code == 200
    assert r.json()["status"] == "received"
    [stored] = await stored_events(api)
    assert (stored["event_id"], stored["status"]) == ("evt_later", "received")
    assert (await get_refund(api, pending["id"]))["status"] == "pending"
    # The worker's pass over stuck events applies it.
    api.clock.advance(seconds=120)
    await api.container.worker.run_once()
    [stored] = await stored_events(api)
    assert stored["status"] == "applied"
    assert (await get_refund(api, pending["id"]))["status"] == "succeeded"
    assert (await get_payment(api, payment["id"]))["refunded_amount"] == 3000


async def test_the_webhook_lane_answers_exactly_as_the_documented_route(make_api):
    """`POST /v1/webhooks/{account}` is served by a route of its own, ahead of
    the framework's: the same requests to an app without it (the documented
    route alone) get the same status, headers and body, and store the same.
    Each side has a refund and event ids of its own (`a`, `b`)."""
    api = await make_api()
    routes = api.client._transport.app.router.routes  # type: ignore[attr-defined]
    assert isinstance(routes[0], Route) and isinstance(routes[0].app, WebhookLane)
    bare = create_app(api.container)
    bare.router.routes[:] = [
        r for r in bare.router.routes if not isinstance(getattr(r, "app", None), WebhookLane)
    ]
    documented = httpx.AsyncClient(transport=httpx.ASGITransport(app=bare), base_url="http://t")
    pse_ids = {side: (await sent_refund(api))[1]["pse_refund_id"] for side in "ab"}

    def requests(side: str) -> list[tuple[str, str, bytes]]:
        ours = pse_ids[side]
        return [
            ("POST", "/v1/webhooks/fake_jp", event(f"evt_{side}1", ours, "succeeded")),
            ("POST", "/v1/webhooks/fake_jp", event(f"evt_{side}1", ours, "succeeded")),
            ("POST", "/v1/webhooks/fake_jp", event(f"evt_{side}2", ours, "failed")),
            ("POST", "/v1/webhooks/fake_jp", event(f"evt_{side}3", f"re_nobody_{side}", "failed")),
            ("POST", "/v1/webhooks/fake_jp", b"not json"),
            ("POST", "/v1/webhooks/nope", b"{}"),
            ("GET", "/v1/webhooks/fake_jp", b""),
        ]

    async def answers(client: httpx.AsyncClient, side: str, sign: dict) -> list[tuple]:
        seen = []
        for method, path, body in requests(side):
            r = await client.request(method, path, content=body, headers=sign)
            headers = {k: v for k, v in r.headers.items() if k != "x-request-id"}
            body = re.sub(rb'"request_id":"\w+"', b"", r.content.replace(b"evt_b", b"evt_a"))
            seen.append((r.status_code, headers, body))
        return seen

    async with documented:
        for sign in ({"x-fake-signature": "forged"}, SIGNED):
            assert await answers(api.client, "a", sign) == await answers(documented, "b", sign)
    by_side = {"a": [], "b": []}
    for stored in await stored_events(api):
        by_side[stored["event_id"][4]].append(stored["status"])
    assert by_side["a"] == by_side["b"] == ["applied", "conflict", "unmatched"]
