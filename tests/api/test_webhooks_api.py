from __future__ import annotations

import json

from sqlalchemy import select

from app.adapters.db import tables as t
from app.adapters.db.uow import PgUnitOfWork
from app.domain.ports import Unanswered
from tests.api.helpers import assert_problem, get_payment, get_refund, refund, register

SIGNED = {"x-fake-signature": "ok", "content-type": "application/json"}


def event(event_id: str, pse_refund_id: str, state: str, reference: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "type": f"refund.{state}",
            "refund": {"id": pse_refund_id, "state": state, "reference": reference},
        }
    ).encode()


async def stored_events(api) -> list[dict]:
    async with api.container.engine.connect() as conn:
        rows = await conn.execute(select(t.pse_webhook_events).order_by(t.pse_webhook_events.c.id))
        return [dict(row._mapping) for row in rows]


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
    async with api.container.engine.connect() as conn:
        types = [
            row.type
            for row in await conn.execute(
                select(t.events.c.type).where(t.events.c.refund_id == pending["id"])
            )
        ]
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
    from app.domain.ports import Accepted, PseRefund, PseRefundState

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
        content=event("e_ref", "fre_5", "succeeded", reference=created["id"]),
        headers=SIGNED,
    )
    assert r.json()["status"] == "applied"
    now = await get_refund(api, created["id"])
    assert now["status"] == "succeeded" and now["pse_refund_id"] == "fre_5"


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
