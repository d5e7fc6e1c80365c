"""The background worker with a fake PSE and a fake clock, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

from app.domain.pse import (
    Accepted,
    NotFound,
    PseRefund,
    PseRefundState,
    Unanswered,
)
from app.services.context import lock_refund, save
from tests.api.helpers import get_payment, get_refund, refund, register

BACKOFF = [60, 600, 3600]
WORKER = {
    "resolve_backoff_seconds": BACKOFF,
    "approved_grace_seconds": 10,
    "submitting_grace_seconds": 30,
    "pending_check_after_seconds": 120,
}


async def worker_api(make_api):
    return await make_api(worker=WORKER)


async def events_of(api, refund_id: str) -> list[str]:
    async with api.container.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type FROM events WHERE refund_id = $1 ORDER BY seq", refund_id
        )
        return [row["type"] for row in rows]


async def unknown_refund(api, amount: int = 3000) -> tuple[dict, dict]:
    api.gateway.next_results.append(Unanswered("timeout after 4 attempts"))
    payment = await register(api)
    created = (await refund(api, payment["id"], amount)).json()
    await api.settle()
    assert (await get_refund(api, created["id"]))["status"] == "unknown"
    return payment, created


async def test_an_unknown_refund_is_checked_only_when_its_first_backoff_has_passed(make_api):
    api = await worker_api(make_api)
    _, created = await unknown_refund(api)
    api.gateway.lookup_results.append(
        Accepted(PseRefund("fre_1", PseRefundState.SUCCEEDED, reference=created["id"]))
    )
    api.clock.advance(seconds=59)
    assert (await api.container.worker.run_once()).claimed == 0
    api.clock.advance(seconds=2)
    done = await api.container.worker.run_once()
    assert done.claimed == 1 and done.progressed == 1
    assert (await get_refund(api, created["id"]))["status"] == "succeeded"
    assert len(api.gateway.created) == 1  # found at the PSE, never resent


async def test_an_unknown_refund_the_pse_does_not_have_is_resent_with_the_same_key(make_api):
    api = await worker_api(make_api)
    _, created = await unknown_refund(api)
    api.gateway.lookup_results.append(NotFound())
    api.clock.advance(seconds=61)
    await api.container.worker.run_once()
    first, second = api.gateway.created
    assert second.idempotency_key == first.idempotency_key == f"rfnd-{created['id']}"
    assert (await get_refund(api, created["id"]))["status"] == "pending"


async def test_a_pse_that_keeps_not_answering_walks_the_backoff_then_raises_attention(make_api):
    api = await worker_api(make_api)
    payment, created = await unknown_refund(api)
    api.gateway.lookup_results.extend([Unanswered("timeout")] * 3)
    checks = 0
    for wait in BACKOFF:
        api.clock.advance(seconds=wait - 1)
        assert (await api.container.worker.run_once()).claimed == 0
        api.clock.advance(seconds=2)
        done = await api.container.worker.run_once()
        assert done.claimed == 1
        checks += 1
    assert done.exhausted == 1
    assert len(api.gateway.lookups) == checks == 3
    now = await get_refund(api, created["id"])
    assert now["status"] == "unknown"  # stays where it is: never guessed
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 3000
    assert (await events_of(api, created["id"]))[-1] == "refund.needs_attention"
    api.clock.advance(days=30)
    assert (await api.container.worker.run_once()).claimed == 0


async def test_a_pending_refund_without_a_webhook_is_looked_up(make_api):
    api = await worker_api(make_api)
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    assert (await get_refund(api, created["id"]))["status"] == "pending"
    api.gateway.settle(created["id"], PseRefundState.SUCCEEDED)
    api.clock.advance(seconds=119)
    assert (await api.container.worker.run_once()).claimed == 0
    api.clock.advance(seconds=2)
    await api.container.worker.run_once()
    assert (await get_refund(api, created["id"]))["status"] == "succeeded"
    assert (await get_payment(api, payment["id"]))["refunded_amount"] == 3000


async def test_an_approved_refund_that_was_never_sent_is_sent_by_the_worker(make_api):
    api = await worker_api(make_api)
    await api.container.submitter.aclose()  # the process that approved it is gone
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    assert api.gateway.created == []
    api.clock.advance(seconds=11)
    await api.container.worker.run_once()
    assert [s.reference for s in api.gateway.created] == [created["id"]]
    assert (await get_refund(api, created["id"]))["status"] == "pending"


async def die_while_submitting(api, refund_id: str) -> None:
    """What the submit phase commits before it calls the PSE, then nothing."""
    deps = api.container.deps
    async with deps.uow() as uow:
        payment, refund_ = await lock_refund(uow, refund_id)
        refund_.start_submission(payment, deps.clock.now())
        await save(deps, uow, payment, refund_)
        await uow.commit()


async def test_an_orphaned_submission_is_completed_from_what_the_pse_has(make_api):
    api = await worker_api(make_api)
    await api.container.submitter.aclose()
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await die_while_submitting(api, created["id"])
    # The PSE did get the request before the process died.
    api.gateway.refunds[created["id"]] = PseRefund(
        "fre_9", PseRefundState.SUCCEEDED, reference=created["id"]
    )
    api.clock.advance(seconds=29)
    assert (await api.container.worker.run_once()).claimed == 0
    api.clock.advance(seconds=2)
    await api.container.worker.run_once()
    now = await get_refund(api, created["id"])
    assert now["status"] == "succeeded" and now["pse_refund_id"] == "fre_9"
    assert api.gateway.created == []


async def test_an_orphaned_submission_the_pse_never_got_is_sent_once(make_api):
    api = await worker_api(make_api)
    await api.container.submitter.aclose()
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await die_while_submitting(api, created["id"])
    api.clock.advance(seconds=31)
    await api.container.worker.run_once()
    assert [s.idempotency_key for s in api.gateway.created] == [f"rfnd-{created['id']}"]
    assert (await get_refund(api, created["id"]))["status"] == "pending"


async def test_an_orphaned_submission_whose_pse_is_silent_becomes_unknown(make_api):
    api = await worker_api(make_api)
    await api.container.submitter.aclose()
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await die_while_submitting(api, created["id"])
    api.gateway.lookup_results.append(Unanswered("timeout"))
    api.clock.advance(seconds=31)
    await api.container.worker.run_once()
    assert (await get_refund(api, created["id"]))["status"] == "unknown"
    assert api.gateway.created == []


async def test_two_workers_racing_never_check_the_same_refund_twice(make_api):
    api = await worker_api(make_api)
    payments = [await register(api) for _ in range(4)]
    ids = []
    for payment in payments:
        for _ in range(5):
            api.gateway.next_results.append(Unanswered("timeout"))
            ids.append((await refund(api, payment["id"], 1000)).json()["id"])
    await api.settle()
    api.gateway.delay = 0.02  # checks overlap in time
    api.clock.advance(seconds=61)
    other = await make_api(worker=WORKER)  # a second process on the same database
    first, second = await asyncio.gather(
        api.container.worker.run_once(), other.container.worker.run_once()
    )
    assert first.claimed + second.claimed == 20
    assert set(first.refund_ids).isdisjoint(second.refund_ids)
    looked_up = [s.reference for s in api.gateway.lookups]
    assert sorted(looked_up) == sorted(ids)  # each exactly once
    resent = [s.reference for s in api.gateway.created[20:]]
    assert sorted(resent) == sorted(ids)  # not found → sent again, once each


async def test_an_event_stored_but_never_applied_is_applied_by_the_worker(make_api):
    api = await worker_api(make_api)
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    async with api.container.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO pse_webhook_events (pse_account, event_id, event_type, pse_refund_id, "
            "reference, refund, body, status, received_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            "fake_jp",
            "evt_stuck",
            "refund.succeeded",
            "fre_1",
            None,
            {"pse_refund_id": "fre_1", "state": "succeeded"},
            json.dumps({"id": "evt_stuck"}),
            "received",
            api.clock.now(),
        )
    api.clock.advance(seconds=6)
    assert (await api.container.worker.run_once()).webhooks_applied == 1
    assert (await get_refund(api, created["id"]))["status"] == "succeeded"


async def test_stopping_the_worker_lets_the_check_in_flight_finish_and_be_recorded(make_api):
    api = await worker_api(make_api)
    _, created = await unknown_refund(api)
    api.gateway.lookup_results.append(
        Accepted(PseRefund("fre_1", PseRefundState.SUCCEEDED, reference=created["id"]))
    )
    api.clock.advance(seconds=61)

    slow_find = api.gateway.find_refund
    started = asyncio.Event()

    async def find_slowly(submission):
        started.set()
        await asyncio.sleep(0.2)
        return await slow_find(submission)

    api.gateway.find_refund = find_slowly
    stop = asyncio.Event()
    task = asyncio.create_task(api.container.worker.run(stop))
    await started.wait()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert (await get_refund(api, created["id"]))["status"] == "succeeded"


async def test_a_refund_older_than_the_sla_raises_attention_once(make_api):
    api = await worker_api(make_api)
    payment = await register(api)
    waiting = (await refund(api, payment["id"], 20000)).json()  # waits for approval
    done = (await refund(api, payment["id"], 100)).json()
    await api.settle()
    api.gateway.settle(done["id"], PseRefundState.SUCCEEDED)
    await api.client.post(f"/v1/refunds/{done['id']}/sync", headers=api.auth("ops"))
    api.clock.advance(hours=23)
    assert (await api.container.worker.run_once()).stale_flagged == 0
    api.clock.advance(hours=2)
    assert (await api.container.worker.run_once()).stale_flagged == 1
    assert (await api.container.worker.run_once()).stale_flagged == 0
    assert (await events_of(api, waiting["id"]))[-1] == "refund.needs_attention"
    assert "refund.needs_attention" not in await events_of(api, done["id"])


async def test_idempotent_answers_are_kept_thirty_days_then_purged(make_api):
    api = await worker_api(make_api)
    payment = await register(api)
    first = await refund(api, payment["id"], 100, key="kept-key")
    api.clock.advance(days=29)
    await api.container.worker.run_once()
    again = await refund(api, payment["id"], 100, key="kept-key")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    api.clock.advance(days=2)
    await api.container.worker.run_once()
    fresh = await refund(api, payment["id"], 100, key="kept-key")
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json()["id"] != first.json()["id"]
