"""The background worker with a fake PSE and a fake clock, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta

from app.domain.pse import (
    Accepted,
    NotFound,
    PseRefund,
    PseRefundState,
    Unanswered,
)
from app.sandbox.config import new_webhook_secret
from app.services.context import lock_refund, save
from tests.api.helpers import assert_problem, get_payment, get_refund, refund, register

BACKOFF = [60, 600, 3600]
SECRET = new_webhook_secret()
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


class _DiesBeforeTheCall:
    """A submission queue that sends at once, in a process that dies right
    after the refund's creation committed (as `submitting`), before any call."""

    sends_at_once = True

    def __init__(self) -> None:
        self.handed: list[str] = []

    def submit_soon(self, refund_id: str) -> None:
        raise AssertionError("an auto-approved refund is handed over as submitting")

    def send_soon(self, payment, refund_) -> None:
        self.handed.append(refund_.id)


async def test_a_refund_marked_submitting_at_creation_whose_process_died_is_sent_once(make_api):
    api = await worker_api(make_api)
    queue = _DiesBeforeTheCall()
    api.container.deps.queue = queue
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    assert created["status"] == "submitting" and queue.handed == [created["id"]]
    # Never sent yet, and never raced: a cancel is refused while a call may be under way.
    cancel = await api.client.post(f"/v1/refunds/{created['id']}/cancel", headers=api.auth("store"))
    assert_problem(cancel, 409, "invalid_state")
    api.gateway.lookup_results.append(NotFound())
    api.clock.advance(seconds=29)
    assert (await api.container.worker.run_once()).claimed == 0  # still within its grace
    api.clock.advance(seconds=2)
    await api.container.worker.run_once()
    assert [s.idempotency_key for s in api.gateway.created] == [f"rfnd-{created['id']}"]
    assert len(api.gateway.lookups) == 1  # asked before sending
    now = await get_refund(api, created["id"])
    assert now["status"] == "pending"
    assert [h["status"] for h in now["status_history"]] == ["approved", "submitting", "pending"]
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 3000


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


# -- claims tied to their claimer's life ---------------------------------------


async def claimed_by(api, ids) -> dict[str, int | None]:
    async with api.container.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, claimed_by FROM refunds WHERE id = ANY($1::text[])", list(ids)
        )
    return {row["id"]: row["claimed_by"] for row in rows}


async def kill_session(api, pid: int) -> None:
    """What SIGKILL does to a worker's sessions: the server ends them, and with
    them their advisory locks."""
    async with api.container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(200):  # the backend exits just after being told to
            if not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1", pid):
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} still holds its locks")


def stuck_mid_pass(api) -> tuple[asyncio.Event, list[str]]:
    """Make `api`'s worker claim, then hang in its checks (as a process would
    while it calls a slow PSE) until the event is set."""
    release, entered = asyncio.Event(), []

    async def hanging_check(refund_id: str) -> str:
        entered.append(refund_id)
        await release.wait()
        return "rescheduled"

    api.container.worker._check = hanging_check
    return release, entered


async def until(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_killed_workers_claims_go_to_the_next_pass_of_another_while_a_live_ones_stay(
    make_api,
):
    doomed = await make_api(worker={**WORKER, "batch_size": 3})
    alive = await make_api(worker={**WORKER, "batch_size": 3})
    other = await make_api(worker=WORKER)
    ids = [(await unknown_refund(doomed))[1]["id"] for _ in range(6)]
    doomed.clock.advance(seconds=61)  # all due (the three apis share the clock)

    _, doomed_entered = stuck_mid_pass(doomed)
    doomed_pass = asyncio.create_task(doomed.container.worker.run_once())
    await until(lambda: len(doomed_entered) == 3)
    release_alive, alive_entered = stuck_mid_pass(alive)
    alive_pass = asyncio.create_task(alive.container.worker.run_once())
    await until(lambda: len(alive_entered) == 3)
    assert set(doomed_entered) | set(alive_entered) == set(ids)
    doomed_key = doomed.container.claimer.held_key
    alive_key = alive.container.claimer.held_key
    assert doomed_key is not None and alive_key is not None and doomed_key != alive_key
    held = await claimed_by(other, ids)
    assert {held[i] for i in doomed_entered} == {doomed_key}
    assert {held[i] for i in alive_entered} == {alive_key}

    # SIGKILL in the middle of the pass: the pass never ends, the sessions go.
    doomed_pass.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doomed_pass
    await kill_session(other, doomed.container.claimer.backend_pid)

    # No time passes: the leases (300 s) are far from over.
    done = await other.container.worker.run_once()
    assert sorted(done.refund_ids) == sorted(doomed_entered)
    after = await claimed_by(other, ids)
    assert all(after[i] is None for i in doomed_entered)  # checked, and let go
    assert {after[i] for i in alive_entered} == {alive_key}  # untouched
    assert (await other.container.worker.run_once()).claimed == 0

    # The live one finishes its pass and lets go of its claims itself.
    release_alive.set()
    assert (await alive_pass).claimed == 3
    assert all(v is None for v in (await claimed_by(other, alive_entered)).values())


async def test_a_claimer_whose_connection_dropped_claims_under_a_new_key(make_api):
    api = await worker_api(make_api)
    claimer = api.container.claimer
    first = await claimer.key()
    assert await claimer.key() == first  # alive: the same key
    await kill_session(api, claimer.backend_pid)
    second = await claimer.key()
    assert second != first and claimer.held_key == second
    async with api.container.pool.acquire() as conn:
        live = await conn.fetch(
            "SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks "
            "WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        )
    assert second in {row["key"] for row in live} and first not in {row["key"] for row in live}


async def test_deliveries_claimed_by_a_killed_worker_are_sent_by_the_next_pass_of_another(
    make_api,
):
    hook = {"url": "http://127.0.0.1:9/hooks", "secret": SECRET, "timeout_seconds": 1}
    doomed = await make_api(store_webhook=hook)
    other = await make_api(store_webhook=hook)
    payment = await register(doomed)
    await refund(doomed, payment["id"], 3000)
    await doomed.settle()
    now = doomed.clock.now()
    dead_key = await doomed.container.claimer.key()
    async with doomed.container.deps.uow() as uow:
        # A delivery pass claims, then its process dies before any attempt.
        claimed = await uow.outbox.claim_deliveries(now, now + timedelta(minutes=5), 10, dead_key)
        await uow.commit()
    assert len(claimed) == 1  # one refund: its first event (the others wait behind it)
    async with other.container.deps.uow() as uow:
        assert await uow.outbox.claim_deliveries(now, now, 10, None) == []  # leased, alive
    await kill_session(other, doomed.container.claimer.backend_pid)
    assert await other.container.deliveries.deliver_due() == 1
    event = await other.client.get(f"/v1/events/{claimed[0].id}", headers=other.auth("store"))
    assert event.json()["delivery"]["attempts"] == 1
    async with other.container.pool.acquire() as conn:
        left = await conn.fetchval("SELECT claimed_by FROM events WHERE id = $1", claimed[0].id)
    assert left is None  # the attempt is recorded: the claim is over


async def test_a_resend_in_flight_elsewhere_is_not_raced(make_api):
    """A refund taken over from a claimer that lost its connection mid-resend:
    the new claimer looks it up, and holds back while that resend may still be
    under way."""
    api = await worker_api(make_api)
    _, created = await unknown_refund(api)
    api.clock.advance(seconds=61)
    deps = api.container.deps
    async with deps.uow() as uow:  # another process starts a resend, and is cut off
        payment, refund_ = await lock_refund(uow, created["id"])
        refund_.start_resend(deps.clock.now())
        await save(deps, uow, payment, refund_)
        await uow.commit()
    api.gateway.lookup_results.append(NotFound())  # it has not reached the PSE yet
    api.clock.advance(seconds=1)
    refund_now = await api.container.submissions.resolve(created["id"])
    assert refund_now.status.value == "unknown"
    assert len(api.gateway.created) == 1  # only the first submission: no race
    api.gateway.lookup_results.append(NotFound())
    api.clock.advance(seconds=30)  # past the grace: that call is over, whatever it did
    await api.container.submissions.resolve(created["id"])
    assert len(api.gateway.created) == 2
    assert api.gateway.created[1].idempotency_key == f"rfnd-{created['id']}"


async def test_a_dead_claimers_refund_is_taken_whatever_its_lease_unless_its_checks_are_over(
    make_api,
):
    api = await worker_api(make_api)
    _, created = await unknown_refund(api)
    async with api.container.pool.acquire() as conn:
        # Claimed by a key no session holds, its checks over (schedule spent).
        await conn.execute(
            "UPDATE refunds SET claimed_by = 4242, next_check_at = NULL WHERE id = $1",
            created["id"],
        )
    assert (await api.container.worker.run_once()).claimed == 0
    async with api.container.pool.acquire() as conn:
        await conn.execute(
            "UPDATE refunds SET next_check_at = $2 WHERE id = $1",
            created["id"],
            api.clock.now() + timedelta(days=1),
        )
    done = await api.container.worker.run_once()
    assert done.refund_ids == [created["id"]]
