"""Disputes (chargebacks) through the API: reported on a payment, they block
new refunds, hold (or cancel) what is not yet sent to the PSE, release it
when won, count like a refund when lost, and reach the store as events."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import (
    assert_problem,
    count_refunds,
    event_types,
    get_payment,
    get_refund,
    refund,
    register,
)
from tests.api.test_metrics import SCRAPER, TOKEN, value

pytestmark = pytest.mark.postgres


class Recorded:
    """A submission queue that sends nothing: approved refunds stay approved
    (not yet sent to the PSE) until the test sends them."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    sends_at_once = False

    def submit_soon(self, refund_id: str) -> None:
        self.ids.append(refund_id)

    def send_soon(self, payment: object, refund: object) -> None:
        raise AssertionError("a queue that does not send at once is never handed a refund")


def held_back(api) -> Recorded:
    queue = Recorded()
    api.container.deps.queue = queue
    return queue


async def dispute(
    api,
    payment_id: str,
    pse_dispute_id: str = "dp_1",
    status: str = "open",
    *,
    who: str = "ops",
    headers: dict[str, str] | None = None,
    **fields: Any,
):
    return await api.client.post(
        f"/v1/payments/{payment_id}/disputes",
        json={"pse_dispute_id": pse_dispute_id, "status": status, **fields},
        headers={**api.auth(who), **(headers or {})},
    )


# -- no refund while a dispute is open -----------------------------------------------


async def test_a_refund_on_a_payment_with_an_open_dispute_is_refused_and_nothing_is_sent(api):
    payment = await register(api)
    r = await dispute(api, payment["id"], amount=50000, reason="fraudulent", who="store")
    assert r.status_code == 201, r.text
    opened = r.json()
    assert opened["id"].startswith("dsp_")
    assert (opened["status"], opened["source"], opened["amount"]) == ("open", "api", 50000)
    assert opened["reason"] == "fraudulent" and opened["closed_at"] is None

    refused = await refund(api, payment["id"], 3000, key="refund-while-disputed")
    body = assert_problem(refused, 409, "payment_disputed")
    assert payment["id"] in body["detail"]
    await api.settle()
    assert api.gateway.created == [] and await count_refunds(api) == 0
    paid = await get_payment(api, payment["id"])
    assert (paid["open_disputes"], paid["reserved_amount"], paid["refundable_amount"]) == (
        1,
        0,
        50000,
    )
    # The refusal is the answer kept under the key: a retry gets it again.
    again = await refund(api, payment["id"], 3000, key="refund-while-disputed")
    assert again.status_code == 409 and again.headers["idempotent-replayed"] == "true"


async def test_an_approved_refund_not_yet_sent_is_held_then_released_when_the_dispute_is_won(api):
    queue = held_back(api)
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    assert created["status"] == "approved" and created["hold"] is None
    assert queue.ids == [created["id"]]

    opened = await dispute(api, payment["id"], evidence_due_by="2026-12-10T00:00:00Z")
    assert opened.status_code == 201
    held = await get_refund(api, created["id"])
    assert (held["status"], held["hold"]) == ("pending_approval", "payment_disputed")
    assert "dispute" in held["attention"]["detail"]
    assert held["status_history"][-1]["detail"] == "payment_disputed"
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 3000
    assert await event_types(api, created["id"]) == [
        "refund.created",
        "refund.approved",
        "refund.approval_required",
        "refund.needs_attention",
    ]
    flagged = await api.client.get(
        "/v1/refunds", params={"needs_attention": "true"}, headers=api.auth("ops")
    )
    assert [x["id"] for x in flagged.json()["data"]] == [created["id"]]
    # Held: no one approves it, no offline payout either.
    blocked = await api.client.post(
        f"/v1/refunds/{created['id']}/approve", json={}, headers=api.auth("approver3")
    )
    assert_problem(blocked, 409, "payment_disputed")

    won = await dispute(api, payment["id"], status="won")
    assert won.status_code == 200 and won.json()["status"] == "won"
    assert won.json()["closed_at"] == "2026-11-27T08:00:00Z"
    released = await get_refund(api, created["id"])
    assert (released["status"], released["hold"]) == ("approved", None)
    assert (await event_types(api, created["id"]))[-1] == "refund.approved"
    assert queue.ids == [created["id"], created["id"]]  # sent on once the dispute closed
    paid = await get_payment(api, payment["id"])
    assert (paid["open_disputes"], paid["disputed_amount"], paid["refundable_amount"]) == (
        0,
        0,
        47000,
    )
    # It goes on to the PSE as any approved refund.
    await api.container.submissions.submit(created["id"])
    assert [s.reference for s in api.gateway.created] == [created["id"]]


async def test_a_refund_waiting_for_approval_is_held_and_can_be_approved_once_released(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 20000)).json()
    assert created["status"] == "pending_approval"
    await dispute(api, payment["id"])
    held = await get_refund(api, created["id"])
    assert (held["status"], held["hold"]) == ("pending_approval", "payment_disputed")
    approve = f"/v1/refunds/{created['id']}/approve"
    assert_problem(
        await api.client.post(approve, json={}, headers=api.auth("approver1")),
        409,
        "payment_disputed",
    )
    await dispute(api, payment["id"], status="closed")
    released = await get_refund(api, created["id"])
    assert (released["status"], released["hold"]) == ("pending_approval", None)
    r = await api.client.post(approve, json={}, headers=api.auth("approver1"))
    assert r.status_code == 200 and r.json()["status"] == "approved"


async def test_under_the_cancel_policy_a_dispute_cancels_what_is_not_yet_sent(make_api):
    api = await make_api(policy={"on_dispute": "cancel"})
    held_back(api)
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    assert created["status"] == "approved"
    await dispute(api, payment["id"])
    canceled = await get_refund(api, created["id"])
    assert (canceled["status"], canceled["hold"]) == ("canceled", None)
    assert canceled["attention"] is not None
    assert (await event_types(api, created["id"]))[-2:] == [
        "refund.canceled",
        "refund.needs_attention",
    ]
    paid = await get_payment(api, payment["id"])
    assert (paid["reserved_amount"], paid["open_disputes"]) == (0, 1)
    policy = (await api.client.get("/v1/policy", headers=api.auth("admin"))).json()
    assert policy["on_dispute"] == "cancel"


async def test_the_policy_holds_by_default(api):
    policy = (await api.client.get("/v1/policy", headers=api.auth("admin"))).json()
    assert policy["on_dispute"] == "hold"


async def test_a_refund_already_sent_is_flagged_not_moved(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    assert (await get_refund(api, created["id"]))["status"] == "pending"
    await dispute(api, payment["id"])
    sent = await get_refund(api, created["id"])
    assert (sent["status"], sent["hold"]) == ("pending", None)
    assert "twice" in sent["attention"]["detail"]


# -- lost and won -------------------------------------------------------------------------


async def test_a_lost_dispute_reduces_the_refundable_amount(api):
    payment = await register(api, amount=50000)
    await dispute(api, payment["id"], amount=20000)
    assert (await get_payment(api, payment["id"]))["refundable_amount"] == 50000
    lost = await dispute(api, payment["id"], status="lost")
    assert lost.status_code == 200
    assert (lost.json()["status"], lost.json()["counted_amount"]) == ("lost", 20000)
    paid = await get_payment(api, payment["id"])
    assert (paid["disputed_amount"], paid["open_disputes"], paid["refundable_amount"]) == (
        20000,
        0,
        30000,
    )
    assert_problem(await refund(api, payment["id"], 30001), 422, "amount_exceeds_refundable")
    assert (await refund(api, payment["id"], None)).json()["amount"] == 30000
    # Won after all (funds reinstated): the amount is given back.
    reinstated = await dispute(api, payment["id"], status="won")
    assert (reinstated.json()["status"], reinstated.json()["counted_amount"]) == ("won", 0)
    assert (await get_payment(api, payment["id"]))["disputed_amount"] == 0


async def test_an_ended_dispute_does_not_reopen(api):
    payment = await register(api)
    await dispute(api, payment["id"])
    await dispute(api, payment["id"], status="closed")
    again = await dispute(api, payment["id"], status="open")
    assert again.status_code == 200 and again.json()["status"] == "closed"
    assert (await get_payment(api, payment["id"]))["open_disputes"] == 0


async def test_a_payments_disputes_are_listed_newest_first_and_paged(api):
    payment = await register(api)
    for number in range(3):
        await dispute(api, payment["id"], f"dp_{number}")
    auth = api.auth("approver1")
    first = await api.client.get(
        f"/v1/payments/{payment['id']}/disputes", params={"limit": 2}, headers=auth
    )
    assert first.status_code == 200
    page = first.json()
    assert [d["pse_dispute_id"] for d in page["data"]] == ["dp_2", "dp_1"]
    rest = await api.client.get(
        f"/v1/payments/{payment['id']}/disputes",
        params={"cursor": page["next_cursor"]},
        headers=auth,
    )
    assert [d["pse_dispute_id"] for d in rest.json()["data"]] == ["dp_0"]
    assert rest.json()["next_cursor"] is None
    assert (await get_payment(api, payment["id"]))["open_disputes"] == 3


async def test_a_dispute_report_is_idempotent_with_a_key(api):
    payment = await register(api)
    key = {"Idempotency-Key": "dispute-1"}
    first = await dispute(api, payment["id"], headers=key)
    again = await dispute(api, payment["id"], headers=key)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again.headers["idempotent-replayed"] == "true"
    assert (await get_payment(api, payment["id"]))["open_disputes"] == 1


# -- events -----------------------------------------------------------------------------


async def test_dispute_events_are_in_the_feed_with_the_payment_and_the_outcome(api):
    payment = await register(api)
    await dispute(api, payment["id"], amount=8000, evidence_due_by="2026-12-10T09:00:00+09:00")
    await dispute(api, payment["id"], status="won")
    r = await api.client.get(
        "/v1/events",
        params={"type": ["payment.dispute_opened", "payment.dispute_closed"]},
        headers=api.auth("store"),
    )
    assert r.status_code == 200, r.text
    closed, opened = r.json()["data"]
    assert (opened["type"], closed["type"]) == ("payment.dispute_opened", "payment.dispute_closed")
    for event in (opened, closed):
        assert event["refund_id"] is None and event["payment_id"] == payment["id"]
        assert event["data"]["pse_dispute_id"] == "dp_1" and event["data"]["amount"] == 8000
    assert opened["data"]["evidence_due_by"] == "2026-12-10T00:00:00Z"
    assert opened["data"]["payment"]["open_disputes"] == 1
    assert opened["detail"] == "dispute dp_1 opened"
    assert closed["data"]["outcome"] == "won" and closed["data"]["payment"]["open_disputes"] == 0
    assert closed["detail"] == "dispute dp_1 won"
    one = await api.client.get(f"/v1/events/{closed['id']}", headers=api.auth("ops"))
    assert one.status_code == 200 and one.json()["data"]["outcome"] == "won"


# -- who may see what -------------------------------------------------------------------


@pytest.fixture
async def scoped(api):
    for name, roles, accounts in (("store_a", ["store"], ["fake_jp"]),):
        _key, secret = await api.container.keys.create(name, roles, None, accounts)
        api.keys[name] = secret
    return api


async def test_a_scoped_key_gets_404_for_another_accounts_payments_disputes(scoped):
    api = scoped
    mine = await register(api, pse_account="fake_jp")
    theirs = await register(api, pse_account="other")
    await dispute(api, theirs["id"], "dp_theirs")
    for path in (f"/v1/payments/{theirs['id']}/disputes", "/v1/payments/pay_nope/disputes"):
        listed = await api.client.get(path, headers=api.auth("store_a"))
        assert_problem(listed, 404, "not_found")
        reported = await api.client.post(
            path, json={"pse_dispute_id": "dp_x"}, headers=api.auth("store_a")
        )
        assert_problem(reported, 404, "not_found")
    assert (await get_payment(api, theirs["id"]))["open_disputes"] == 1
    assert (await dispute(api, mine["id"], who="store_a")).status_code == 201
    listed = await api.client.get(
        f"/v1/payments/{mine['id']}/disputes", headers=api.auth("store_a")
    )
    assert [d["pse_dispute_id"] for d in listed.json()["data"]] == ["dp_1"]
    # Nor does its feed show another account's dispute events.
    feed = await api.client.get(
        "/v1/events", params={"type": "payment.dispute_opened"}, headers=api.auth("store_a")
    )
    assert [e["payment_id"] for e in feed.json()["data"]] == [mine["id"]]


async def test_only_the_store_and_ops_report_disputes_and_every_reader_lists_them(api):
    payment = await register(api)
    assert_problem(await dispute(api, payment["id"], who="approver3"), 403, "forbidden")
    for who in ("store", "ops", "admin"):
        assert (await dispute(api, payment["id"], f"dp_{who}", who=who)).status_code == 201
    for who in ("store", "approver1", "ops"):
        listed = await api.client.get(
            f"/v1/payments/{payment['id']}/disputes", headers=api.auth(who)
        )
        assert listed.status_code == 200 and len(listed.json()["data"]) == 3


# -- refused reports ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"amount": 100, "currency": "USD"},  # not the payment's currency
        {"currency": "USD"},
        {"amount": 50001},  # above the payment
    ],
)
async def test_a_dispute_that_does_not_fit_its_payment_is_refused(api, fields):
    payment = await register(api, amount=50000)
    r = await dispute(api, payment["id"], **fields)
    assert_problem(r, 422, "validation_error")
    paid = await get_payment(api, payment["id"])
    assert paid["open_disputes"] == 0
    listed = await api.client.get(f"/v1/payments/{payment['id']}/disputes", headers=api.auth("ops"))
    assert listed.json()["data"] == []


@pytest.mark.parametrize(
    "fields",
    [
        {"amount": 0},
        {"amount": 12.5},
        {"status": "reversed"},
        {"currency": "jpy"},
        {"evidence_due_by": "2026-12-10"},
        {"evidence_due_by": 1765324800},
        {"pse_dispute_id": ""},
        {"opened": True},
    ],
)
async def test_an_invalid_dispute_body_is_a_validation_error(api, fields):
    payment = await register(api)
    r = await dispute(api, payment["id"], **fields)
    assert_problem(r, 422, "validation_error")


async def test_a_dispute_id_of_another_payment_is_refused(api):
    first, second = await register(api), await register(api)
    await dispute(api, first["id"], "dp_shared")
    r = await dispute(api, second["id"], "dp_shared", status="lost")
    body = assert_problem(r, 422, "validation_error")
    assert first["id"] in body["detail"]
    assert (await get_payment(api, first["id"]))["open_disputes"] == 1
    assert (await get_payment(api, second["id"]))["disputed_amount"] == 0


async def test_a_dispute_on_an_unknown_payment_is_not_found(api):
    assert_problem(await dispute(api, "pay_nope"), 404, "not_found")


# -- metrics and the contract --------------------------------------------------------


async def test_metrics_show_open_and_lost_disputes_by_account(make_api):
    api = await make_api(metrics_token=TOKEN)
    payment = await register(api, amount=50000)
    other = await register(api, amount=30000)
    await dispute(api, payment["id"], "dp_open", amount=7000)
    await dispute(api, other["id"], "dp_lost", amount=4000)
    await dispute(api, other["id"], "dp_lost", status="lost")
    r = await api.client.get("/metrics", headers=SCRAPER)
    assert r.status_code == 200
    text = r.text
    assert value(text, "disputes_open", pse_account="fake_jp") == 1
    assert value(text, "disputes_open", pse_account="other") == 0
    assert value(text, "disputes_open_amount", pse_account="fake_jp", currency="JPY") == 7000
    assert value(text, "disputes_lost_amount", pse_account="fake_jp", currency="JPY") == 4000
    assert value(text, "disputes_total", pse_account="fake_jp", outcome="opened") == 2
    assert value(text, "disputes_total", pse_account="fake_jp", outcome="lost") == 1
    # Once won, the open gauge reads 0 again rather than its last value.
    await dispute(api, payment["id"], "dp_open", status="won")
    text = (await api.client.get("/metrics", headers=SCRAPER)).text
    assert value(text, "disputes_open", pse_account="fake_jp") == 0
    assert value(text, "disputes_open_amount", pse_account="fake_jp", currency="JPY") == 0


async def test_the_contract_documents_payment_disputed_and_the_dispute_routes(api):
    spec = (await api.client.get("/openapi.json")).json()
    for path, method in (
        ("/v1/refunds", "post"),
        ("/v1/refunds/{refund_id}/approve", "post"),
        ("/v1/refunds/{refund_id}/offline-payout", "post"),
    ):
        assert "payment_disputed" in spec["paths"][path][method]["responses"]["409"]["description"]
    disputes = spec["paths"]["/v1/payments/{payment_id}/disputes"]
    assert {"get", "post"} <= disputes.keys()
    assert {"200", "201", "404", "422"} <= disputes["post"]["responses"].keys()
    schemas = spec["components"]["schemas"]
    assert schemas["DisputeIn"].get("examples") and schemas["DisputeOut"].get("examples")
    assert {"disputed_amount", "open_disputes"} <= schemas["PaymentOut"]["properties"].keys()
    assert "hold" in schemas["RefundOut"]["properties"]
