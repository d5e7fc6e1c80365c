"""Keys scoped to PSE accounts: a shop's key sees and acts only on its own
accounts' payments, refunds, events, audit records and reconciliations.
Everything of another account answers 404, exactly as an unknown id does;
lists are filtered in their queries, so paging still works. Unscoped keys
see everything, as before."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import assert_problem, forward_events, refund, register

pytestmark = pytest.mark.postgres

MINE = "fake_jp"
THEIRS = "other"


@pytest.fixture
async def scoped(api):
    """The API with keys scoped to fake_jp (`*_a`) and one to `other`
    (`store_b`), beside the unscoped keys of every role."""
    for name, roles, level, accounts in (
        ("store_a", ["store"], None, [MINE]),
        ("approver_a", ["approver"], 3, [MINE]),
        ("ops_a", ["ops"], None, [MINE]),
        ("store_b", ["store"], None, [THEIRS]),
    ):
        key, secret = await api.container.keys.create(name, roles, level, accounts)
        assert key.accounts == frozenset(accounts)
        api.keys[name] = secret
    return api


async def two_shops(api, amount: int = 3000) -> dict[str, Any]:
    """A payment and a refund on each account, made by unscoped store keys."""
    mine = await register(api, pse_account=MINE, order_id="ORD-1")
    theirs = await register(api, pse_account=THEIRS, order_id="ORD-1")
    r_mine = await refund(api, mine["id"], amount)
    r_theirs = await refund(api, theirs["id"], amount)
    assert r_mine.status_code == r_theirs.status_code == 201
    await api.settle()
    return {
        "mine": mine,
        "theirs": theirs,
        "my_refund": r_mine.json(),
        "their_refund": r_theirs.json(),
    }


def same_as_unknown(found, unknown) -> None:
    """`found` (another account's) answers as `unknown` (no such id) does."""
    assert found.status_code == unknown.status_code == 404
    a, b = found.json(), unknown.json()
    assert a["code"] == b["code"] == "not_found"
    assert a["title"] == b["title"] and a["type"] == b["type"]
    assert found.headers["content-type"] == unknown.headers["content-type"]


async def test_a_scoped_store_key_gets_404_for_another_accounts_payment_and_refund(scoped):
    api = scoped
    shops = await two_shops(api, amount=20_000)  # pending_approval: cancelable
    their_pay, their_rf = shops["theirs"]["id"], shops["their_refund"]["id"]
    auth = api.auth("store_a")
    for found, unknown, detail in (
        (f"/v1/payments/{their_pay}", "/v1/payments/pay_nope", f"no payment {their_pay}"),
        (f"/v1/refunds/{their_rf}", "/v1/refunds/rf_nope", f"no refund {their_rf}"),
    ):
        r = await api.client.get(found, headers=auth)
        same_as_unknown(r, await api.client.get(unknown, headers=auth))
        assert r.json()["detail"] == detail
    # Its own are there.
    mine = await api.client.get(f"/v1/refunds/{shops['my_refund']['id']}", headers=auth)
    assert mine.status_code == 200
    # A refund of another account's payment: as of a payment that does not exist.
    r = await refund(api, their_pay, 100, who="store_a")
    assert_problem(r, 404, "not_found")
    assert r.json()["detail"] == f"no payment {their_pay}"
    # Cancel: 404, and the refund is untouched.
    r = await api.client.post(f"/v1/refunds/{their_rf}/cancel", headers=auth)
    same_as_unknown(r, await api.client.post("/v1/refunds/rf_nope/cancel", headers=auth))
    their = await api.client.get(f"/v1/refunds/{their_rf}", headers=api.auth("ops"))
    assert their.json()["status"] == "pending_approval"


async def test_registering_a_payment_of_another_account_is_refused_as_an_unknown_account(scoped):
    api = scoped
    body = {
        "pse_payment_id": "pay_x",
        "order_id": "ORD-9",
        "amount": 1000,
        "currency": "JPY",
        "captured_at": "2026-11-01T10:00:00Z",
    }
    auth = api.auth("store_a")
    other = await api.client.post(
        "/v1/payments", json={**body, "pse_account": THEIRS}, headers=auth
    )
    nowhere = await api.client.post(
        "/v1/payments", json={**body, "pse_account": "nowhere"}, headers=auth
    )
    assert_problem(other, 422, "unknown_pse_account")
    assert_problem(nowhere, 422, "unknown_pse_account")
    # The same words: the key learns nothing of the accounts it does not see.
    assert other.json()["detail"].replace(THEIRS, "X") == nowhere.json()["detail"].replace(
        "nowhere", "X"
    )
    r = await api.client.post("/v1/payments", json={**body, "pse_account": MINE}, headers=auth)
    assert r.status_code == 201, r.text
    # Nothing was registered on the other account.
    listed = await api.client.get("/v1/payments", headers=api.auth("ops"))
    assert [p["pse_account"] for p in listed.json()["data"]] == [MINE]


async def test_lists_hold_only_the_scopes_accounts_and_page_within_them(scoped):
    api = scoped
    shops = [await two_shops(api) for _ in range(3)]
    mine = {s["my_refund"]["id"] for s in shops}
    auth = api.auth("store_a")
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await api.client.get("/v1/refunds", params=params, headers=auth)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [x["id"] for x in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Two full pages of its own, whatever the other account holds between them.
    assert len(seen) == 3 and set(seen) == mine
    # Filters combine with the scope: the other account's payment lists nothing.
    r = await api.client.get(
        "/v1/refunds", params={"payment_id": shops[0]["theirs"]["id"]}, headers=auth
    )
    assert r.json()["data"] == []
    r = await api.client.get("/v1/payments", params={"order_id": "ORD-1"}, headers=auth)
    assert {p["pse_account"] for p in r.json()["data"]} == {MINE} and len(r.json()["data"]) == 3
    # The other shop's key sees the other half; an unscoped key, everything.
    theirs = await api.client.get("/v1/refunds", headers=api.auth("store_b"))
    assert {x["id"] for x in theirs.json()["data"]} == {s["their_refund"]["id"] for s in shops}
    everything = await api.client.get("/v1/refunds", headers=api.auth("store"))
    assert len(everything.json()["data"]) == 6
    payments = await api.client.get("/v1/payments", headers=api.auth("store"))
    assert len(payments.json()["data"]) == 6


async def test_the_event_feed_holds_only_the_scopes_events(scoped):
    api = scoped
    shops = await two_shops(api)
    auth = api.auth("store_a")
    everything = (await api.client.get("/v1/events", headers=api.auth("store"))).json()["data"]
    theirs = [e for e in everything if e["refund_id"] == shops["their_refund"]["id"]]
    assert theirs and len(everything) > len(theirs)
    newest = (await api.client.get("/v1/events", headers=auth)).json()["data"]
    forward = await forward_events(api, "store_a", after="0")
    for listed in (newest, forward):
        assert listed and {e["refund_id"] for e in listed} == {shops["my_refund"]["id"]}
    r = await api.client.get(
        "/v1/events", params={"refund_id": shops["their_refund"]["id"]}, headers=auth
    )
    assert r.json()["data"] == []
    their_event = theirs[0]["id"]
    for path, params in (
        (f"/v1/events/{their_event}", None),
        (f"/v1/events/{their_event}/deliveries", None),
        ("/v1/events", {"after": their_event}),
    ):
        r = await api.client.get(path, params=params, headers=auth)
        unknown_path = path.replace(their_event, "evt_nope")
        unknown_params = {"after": "evt_nope"} if params else None
        same_as_unknown(r, await api.client.get(unknown_path, params=unknown_params, headers=auth))
    r = await api.client.post(f"/v1/events/{their_event}/redeliver", headers=api.auth("ops_a"))
    assert_problem(r, 404, "not_found")
    mine = (await api.client.get(f"/v1/events/{newest[0]['id']}", headers=auth)).json()
    assert mine["refund_id"] == shops["my_refund"]["id"]


async def test_every_refund_action_on_another_accounts_refund_is_404(scoped):
    api = scoped
    shops = await two_shops(api, amount=20_000)  # above the first tier: pending_approval
    their_rf = shops["their_refund"]["id"]
    assert shops["their_refund"]["status"] == "pending_approval"
    actions = (
        ("approver_a", "approve", {"note": "ok"}),
        ("approver_a", "reject", {"note": "no"}),
        ("store_a", "cancel", None),
        ("ops_a", "cancel", None),
        ("ops_a", "sync", None),
        ("ops_a", "offline-payout", {"reference": "BANK-1", "paid_at": "2026-11-27T08:00:00Z"}),
        ("ops_a", "acknowledge", {"note": "seen"}),
    )
    for who, action, body in actions:
        headers = {**api.auth(who), "Idempotency-Key": f"k-{who}-{action}"}
        r = await api.client.post(f"/v1/refunds/{their_rf}/{action}", json=body, headers=headers)
        unknown = await api.client.post(
            f"/v1/refunds/rf_nope/{action}", json=body, headers=api.auth(who)
        )
        same_as_unknown(r, unknown)
        assert r.json()["detail"] == f"no refund {their_rf}", (who, action)
        # Replayed under its key: the same 404, never another key's answer.
        again = await api.client.post(
            f"/v1/refunds/{their_rf}/{action}", json=body, headers=headers
        )
        assert again.status_code == 404
    their = await api.client.get(f"/v1/refunds/{their_rf}", headers=api.auth("ops"))
    assert their.json()["status"] == "pending_approval" and their.json()["approvals"] == []
    # Its own refund it may decide.
    r = await api.client.post(
        f"/v1/refunds/{shops['my_refund']['id']}/approve",
        json={"note": "ok"},
        headers=api.auth("approver_a"),
    )
    assert r.status_code == 200 and r.json()["status"] == "approved"


async def test_an_idempotency_key_of_another_scope_replays_nothing_to_a_scoped_key(scoped):
    api = scoped
    theirs = await register(api, pse_account=THEIRS)
    body = {"payment_id": theirs["id"], "amount": 500, "reason": "requested_by_customer"}
    first = await api.client.post(
        "/v1/refunds", json=body, headers={**api.auth("store_b"), "Idempotency-Key": "same"}
    )
    assert first.status_code == 201
    replay = await api.client.post(
        "/v1/refunds", json=body, headers={**api.auth("store_b"), "Idempotency-Key": "same"}
    )
    assert replay.headers.get("idempotent-replayed") == "true"
    # The same key and body from a key of another scope: its own answer, 404.
    other = await api.client.post(
        "/v1/refunds", json=body, headers={**api.auth("store_a"), "Idempotency-Key": "same"}
    )
    assert_problem(other, 404, "not_found")
    assert "idempotent-replayed" not in other.headers
    assert first.json()["id"] not in other.text


async def test_the_audit_trail_holds_only_the_scopes_refunds_and_payments(scoped):
    api = scoped
    shops = await two_shops(api)
    await api.container.audit.flush()
    auth = api.auth("ops_a")
    records = (await api.client.get("/v1/audit", params={"limit": 200}, headers=auth)).json()
    everything = (
        await api.client.get("/v1/audit", params={"limit": 200}, headers=api.auth("ops"))
    ).json()
    mine = {shops["my_refund"]["id"], shops["mine"]["id"]}
    theirs = {shops["their_refund"]["id"], shops["theirs"]["id"]}
    assert records["data"]
    for record in records["data"]:
        named = {record["refund_id"], record["payment_id"]} - {None}
        assert named and named <= mine, record
    assert any({r["refund_id"], r["payment_id"]} & theirs for r in everything["data"])
    assert any(r["refund_id"] is None and r["payment_id"] is None for r in everything["data"])
    for params in (
        {"refund_id": shops["their_refund"]["id"]},
        {"payment_id": shops["theirs"]["id"]},
    ):
        r = await api.client.get("/v1/audit", params=params, headers=auth)
        assert r.status_code == 200 and r.json()["data"] == []
    r = await api.client.get(
        "/v1/audit", params={"refund_id": shops["my_refund"]["id"]}, headers=auth
    )
    assert r.json()["data"]


HEADER = (
    "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
    "settlement_amount,settlement_currency\n"
)


async def upload(api, who: str, account: str):
    return await api.client.post(
        "/v1/reconciliations",
        files={"file": ("settlement.csv", HEADER.encode(), "text/csv")},
        data={"pse_account": account},
        headers=api.auth(who),
    )


async def test_reconciliations_of_another_account_are_404_and_left_out(scoped):
    api = scoped
    theirs = await upload(api, "ops", THEIRS)
    assert theirs.status_code == 202
    r = await upload(api, "ops_a", THEIRS)
    assert_problem(r, 404, "not_found")
    r = await upload(api, "ops_a", "nowhere")
    assert_problem(r, 404, "not_found")  # outside the scope: the same answer
    mine = await upload(api, "ops_a", MINE)
    assert mine.status_code == 202, mine.text
    await api.container.jobs.drain()
    auth = api.auth("ops_a")
    listed = (await api.client.get("/v1/reconciliations", headers=auth)).json()["data"]
    assert [run["id"] for run in listed] == [mine.json()["id"]]
    all_runs = (await api.client.get("/v1/reconciliations", headers=api.auth("ops"))).json()
    assert len(all_runs["data"]) == 2
    their_id = theirs.json()["id"]
    for path in (f"/v1/reconciliations/{their_id}", f"/v1/reconciliations/{their_id}/report.csv"):
        r = await api.client.get(path, headers=auth)
        same_as_unknown(r, await api.client.get(path.replace(their_id, "rec_nope"), headers=auth))
    r = await api.client.get(f"/v1/reconciliations/{mine.json()['id']}", headers=auth)
    assert r.status_code == 200


async def test_the_fx_report_counts_the_scopes_refunds_only(scoped):
    api = scoped
    for account in (MINE, THEIRS):
        payment = await register(
            api, pse_account=account, settlement_currency="USD", settlement_rate="0.0067"
        )
        assert (await refund(api, payment["id"], 3000)).status_code == 201
    await api.settle()
    everything = (await api.client.get("/v1/reports/fx", headers=api.auth("ops"))).json()["data"]
    mine = (await api.client.get("/v1/reports/fx", headers=api.auth("ops_a"))).json()["data"]
    total = sum(row["refunds"] for row in everything)
    assert total == 2 * sum(row["refunds"] for row in mine) and total > 0


async def test_unscoped_keys_see_every_account_as_before(scoped):
    api = scoped
    shops = await two_shops(api, amount=20_000)
    for who in ("store", "approver1", "ops", "admin"):
        for refund_id in (shops["my_refund"]["id"], shops["their_refund"]["id"]):
            r = await api.client.get(f"/v1/refunds/{refund_id}", headers=api.auth(who))
            assert r.status_code == 200, (who, r.text)
    r = await api.client.post(
        f"/v1/refunds/{shops['their_refund']['id']}/approve",
        json={"note": "ok"},
        headers=api.auth("approver1"),
    )
    assert r.status_code == 200
    feed = (await api.client.get("/v1/events", headers=api.auth("store"))).json()["data"]
    assert {e["refund_id"] for e in feed} == {
        shops["my_refund"]["id"],
        shops["their_refund"]["id"],
    }
