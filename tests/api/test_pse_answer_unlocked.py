"""The PSE's `pending` answer to a refund sent right after its creation is
written without the refund's lock, in one statement that writes only if the
refund is still as it was committed before the call. Whatever changed it
meanwhile wins: the answer is then applied under the lock, to the refund as
it now is."""

from __future__ import annotations

import asyncio
import copy
import json

from app.services.context import save_unless_moved
from tests.api.helpers import event_types, get_payment, get_refund, refund, register
from tests.conftest import Api


async def _webhook(api: Api, event_id: str, **refund_fields: object) -> str:
    body = json.dumps({"id": event_id, "type": "refund.updated", "refund": refund_fields})
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=body,
        headers={"x-fake-signature": "ok", "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    return r.json()["status"]


def _statuses(view: dict) -> list[str]:
    return [change["status"] for change in view["status_history"]]


async def _audited_moves(api: Api, refund_id: str) -> list[str]:
    await api.container.audit.flush()
    async with api.container.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT body FROM audit_log WHERE refund_id = $1 AND kind = 'refund.status' "
            "ORDER BY seq",
            refund_id,
        )
    return [json.loads(row["body"])["data"]["to"] for row in rows]


async def test_a_pending_answer_is_written_with_its_history_event_and_audit(api: Api):
    payment = await register(api)
    made = (await refund(api, payment["id"])).json()
    assert made["status"] == "submitting"
    await api.settle()
    seen = await get_refund(api, made["id"])
    assert seen["status"] == "pending"
    assert seen["pse_refund_id"] == "fre_1"
    assert _statuses(seen)[-2:] == ["submitting", "pending"]
    assert (await event_types(api, made["id"])).count("refund.pending") == 1
    assert (await _audited_moves(api, made["id"]))[-1] == "pending"
    counters = await get_payment(api, payment["id"])
    assert (counters["refunded_amount"], counters["reserved_amount"]) == (0, 3000)


async def test_a_webhook_settling_the_refund_during_the_call_is_not_undone_by_the_answer(
    api: Api,
):
    api.gateway.delay = 0.3
    payment = await register(api)
    made = (await refund(api, payment["id"])).json()
    await asyncio.sleep(0.05)  # the PSE call is under way
    assert len(api.gateway.created) == 1
    status = await _webhook(
        api,
        "evt_during_call",
        id="fre_1",
        state="succeeded",
        reference=made["id"],
        amount=3000,
        currency="JPY",
        payment=payment["pse_payment_id"],
    )
    assert status == "applied"
    await api.settle()  # the PSE's `pending`, late
    seen = await get_refund(api, made["id"])
    assert seen["status"] == "succeeded"
    assert "pending" not in _statuses(seen)
    assert "refund.pending" not in await event_types(api, made["id"])
    assert "pending" not in await _audited_moves(api, made["id"])
    counters = await get_payment(api, payment["id"])
    assert (counters["refunded_amount"], counters["reserved_amount"]) == (3000, 0)


async def test_a_webhook_that_came_before_the_answer_is_applied_once_it_names_the_pse_id(
    api: Api,
):
    api.gateway.delay = 0.3
    payment = await register(api)
    made = (await refund(api, payment["id"])).json()
    await asyncio.sleep(0.05)
    # Only the PSE's id, which the service does not know yet: kept, unmatched.
    assert await _webhook(api, "evt_early", id="fre_1", state="succeeded") == "unmatched"
    await api.settle()
    seen = await get_refund(api, made["id"])
    assert seen["pse_refund_id"] == "fre_1"
    assert _statuses(seen)[-3:] == ["submitting", "pending", "succeeded"]
    async with api.container.pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT status, refund_id FROM pse_webhook_events WHERE event_id = 'evt_early'"
        )
    assert (stored["status"], stored["refund_id"]) == ("applied", made["id"])
    counters = await get_payment(api, payment["id"])
    assert (counters["refunded_amount"], counters["reserved_amount"]) == (3000, 0)


async def test_the_one_statement_write_writes_only_while_the_row_is_as_it_was_read(api: Api):
    deps = api.container.deps
    assert deps.single_statement_uow is not None
    payment = await register(api)
    made = (await refund(api, payment["id"])).json()
    await api.settle()

    async def read() -> tuple:
        async with deps.uow() as uow:
            found = await uow.refunds.lock_with_payment(made["id"])
        assert found is not None
        return found

    async def flag_unlocked(note: str) -> list | None:
        paid, read_refund = await read()
        as_read = copy.copy(read_refund)
        if note == "moved":  # someone else changes the row after it was read
            async with api.container.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE refunds SET next_check_at = next_check_at + interval '1 s' "
                    "WHERE id = $1",
                    made["id"],
                )
        read_refund.flag(note, api.clock.now())
        async with deps.single_statement_uow() as uow:
            written = await save_unless_moved(deps, uow, paid, read_refund, as_read)
            if written is not None:
                await uow.commit()
        return written

    assert await flag_unlocked("moved") is None
    assert (await get_refund(api, made["id"]))["attention"] is None
    assert "refund.needs_attention" not in await event_types(api, made["id"])
    assert await flag_unlocked("written") == []
    assert (await get_refund(api, made["id"]))["attention"]["detail"] == "written"
    assert (await event_types(api, made["id"])).count("refund.needs_attention") == 1
