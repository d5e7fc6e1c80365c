from __future__ import annotations

import pytest

from tests.api.helpers import assert_problem, forward_events, refund, register


async def forward(api, after: str, count: int, **params) -> list[dict]:
    return await forward_events(api, count=count, after=after, limit=200, **params)


async def feed(api, who: str = "store", **params) -> dict:
    r = await api.client.get("/v1/events", params=params, headers=api.auth(who))
    assert r.status_code == 200, r.text
    return r.json()


async def test_every_status_change_is_an_event_carrying_the_refund_after_it(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 20000)).json()
    await api.client.post(f"/v1/refunds/{created['id']}/approve", headers=api.auth("approver1"))
    await api.settle()
    events = (await feed(api, refund_id=created["id"]))["data"]
    assert [e["type"] for e in events] == [
        "refund.pending",
        "refund.submitted",
        "refund.approved",
        "refund.approval_required",
        "refund.created",
    ]
    approved = events[2]
    assert approved["data"]["status"] == "approved"
    assert approved["data"]["approvals"][0]["approver"] == "approver1"
    assert approved["refund_id"] == created["id"] and approved["payment_id"] == payment["id"]
    assert approved["delivery"]["status"] == "none"  # no store webhook configured
    assert events[0]["data"]["status"] == "pending"


async def test_events_filter_by_type_and_refund(api):
    payment = await register(api)
    a = (await refund(api, payment["id"], 100)).json()
    await refund(api, payment["id"], 100)
    await api.settle()
    data = (await feed(api, type="refund.created"))["data"]
    assert len(data) == 2 and {e["type"] for e in data} == {"refund.created"}
    data = (await feed(api, type=["refund.created", "refund.pending"], refund_id=a["id"]))["data"]
    assert [e["type"] for e in data] == ["refund.pending", "refund.created"]
    r = await api.client.get(
        "/v1/events", params={"type": "refund.bogus"}, headers=api.auth("store")
    )
    assert_problem(r, 422, "validation_error")


async def test_a_store_pages_forward_from_its_last_event_without_gaps(api):
    payment = await register(api)
    for _ in range(3):
        await refund(api, payment["id"], 100)
    await api.settle()
    everything = list(reversed((await feed(api, limit=200))["data"]))
    ids = [e["id"] for e in everything]
    assert len(ids) == 12  # created, approved, submitted, pending, 3 times
    await forward(api, ids[0], 11)
    seen = [ids[0]]
    page = await feed(api, after=ids[0], limit=5)
    seen += [e["id"] for e in page["data"]]
    while page["next_cursor"]:
        page = await feed(api, cursor=page["next_cursor"], limit=5)
        seen += [e["id"] for e in page["data"]]
    assert seen == ids
    # Polling after the last one answers nothing new, then the next change.
    assert (await feed(api, after=ids[-1]))["data"] == []
    await refund(api, payment["id"], 100)
    await api.settle()
    new = await forward(api, ids[-1], 4)
    assert [e["type"] for e in new] == [
        "refund.created",
        "refund.approved",
        "refund.submitted",
        "refund.pending",
    ]


@pytest.mark.parametrize("start", ["0", ""])
async def test_a_new_store_reads_the_feed_from_its_first_event(api, start):
    payment = await register(api)
    await refund(api, payment["id"], 100)
    await api.settle()
    everything = [e["id"] for e in reversed((await feed(api, limit=200))["data"])]
    assert len(everything) == 4
    assert [e["id"] for e in await forward(api, start, 4)] == everything


async def test_newest_first_pages_with_a_cursor(api):
    payment = await register(api)
    for _ in range(2):
        await refund(api, payment["id"], 100)
    await api.settle()
    first = await feed(api, limit=5)
    second = await feed(api, limit=5, cursor=first["next_cursor"])
    assert second["next_cursor"] is None
    all_ids = [e["id"] for e in first["data"] + second["data"]]
    assert len(all_ids) == len(set(all_ids)) == 8


async def test_an_event_of_a_transaction_still_running_holds_back_the_later_ones(api):
    """The forward feed never shows an event while an earlier-started writer
    could still commit one before it."""
    payment = await register(api)
    await refund(api, payment["id"], 100)
    await api.settle()
    last = (await feed(api, limit=1))["data"][0]["id"]
    async with api.container.pool.acquire() as slow:
        slow_tx = slow.transaction()
        await slow_tx.start()
        await slow.execute(
            "INSERT INTO events (id, type, data, created_at, delivery_status, delivery_attempts)"
            " VALUES ('evt_slow', 'refund.created', '{}', now(), 'none', 0)"
        )
        try:
            await refund(api, payment["id"], 100)  # commits events after the slow writer began
            await api.settle()
            assert (await feed(api, after=last))["data"] == []
            await slow_tx.commit()
        finally:
            if slow.is_in_transaction():
                await slow_tx.rollback()
    after = [e["id"] for e in await forward(api, last, 5)]
    assert after[0] == "evt_slow" and len(after) == 5


async def test_events_are_for_stores_and_ops(api):
    r = await api.client.get("/v1/events", headers=api.auth("approver1"))
    assert_problem(r, 403, "forbidden")
    assert (await api.client.get("/v1/events", headers=api.auth("ops"))).status_code == 200
    r = await api.client.get("/v1/events", params={"after": "evt_nope"}, headers=api.auth("ops"))
    assert_problem(r, 404, "not_found")
    r = await api.client.get("/v1/events", params={"cursor": "bad"}, headers=api.auth("ops"))
    assert_problem(r, 422, "validation_error")
    r = await api.client.post("/v1/events/evt_nope/redeliver", headers=api.auth("ops"))
    assert_problem(r, 404, "not_found")
