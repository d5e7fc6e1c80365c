from __future__ import annotations

from datetime import UTC, datetime

from app.adapters.db.payments import PaymentRepository
from app.domain.models import Actor, RefundReason, RefundStatus
from app.domain.pse import (
    Accepted,
    Declined,
    NotFound,
    PseRefund,
    PseRefundState,
    Unanswered,
)
from app.services.refunds import RequestRefund
from tests.api.helpers import (
    assert_problem,
    count_refunds,
    event_types,
    get_payment,
    get_refund,
    refund,
    register,
)

# -- creating ----------------------------------------------------------------


async def test_a_small_refund_is_approved_at_once_and_sent_to_the_pse(api):
    payment = await register(api)
    r = await refund(api, payment["id"], 3000, note="size too small", metadata={"rma": "R-77"})
    assert r.status_code == 201
    created = r.json()
    assert created["status"] == "submitting"  # approved, and marked as sent in the same commit
    assert created["required_approvals"] == []
    assert created["metadata"] == {"rma": "R-77"}
    await api.settle()
    sent = api.gateway.created[0]
    assert sent.reference == created["id"]
    assert sent.idempotency_key == f"rfnd-{created['id']}"
    assert sent.pse_payment_id == payment["pse_payment_id"]
    assert sent.amount.amount == 3000 and sent.amount.currency == "JPY"
    now = await get_refund(api, created["id"])
    assert now["status"] == "pending"
    assert now["pse_refund_id"] == "fre_1"
    assert [h["status"] for h in now["status_history"]] == ["approved", "submitting", "pending"]
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 3000
    assert await event_types(api, created["id"]) == [
        "refund.created",
        "refund.approved",
        "refund.submitted",
        "refund.pending",
    ]


async def test_omitting_the_amount_refunds_the_whole_refundable_amount(api):
    payment = await register(api, amount=8000)
    await refund(api, payment["id"], 3000)
    r = await refund(api, payment["id"], None)
    assert r.status_code == 201
    assert r.json()["amount"] == 5000
    assert (await get_payment(api, payment["id"]))["refundable_amount"] == 0


async def test_more_than_the_refundable_amount_is_refused_and_nothing_is_created(api):
    payment = await register(api, amount=5000)
    for amount in (5001, 0, -5):
        assert_problem(await refund(api, payment["id"], amount), 422, "amount_exceeds_refundable")
    assert await count_refunds(api) == 0
    assert (await get_payment(api, payment["id"]))["refundable_amount"] == 5000


async def test_a_refund_above_the_policys_cap_is_refused(make_api):
    api = await make_api(policy={"max_refund_amount": {"JPY": 4000}})
    payment = await register(api)
    assert_problem(await refund(api, payment["id"], 4001), 422, "amount_exceeds_limit")
    assert (await refund(api, payment["id"], 4000)).status_code == 201


async def test_a_currency_other_than_the_payments_is_refused(api):
    payment = await register(api)
    assert_problem(await refund(api, payment["id"], 100, currency="USD"), 422, "currency_mismatch")


async def test_a_refund_of_an_unknown_payment_is_not_found(api):
    assert_problem(await refund(api, "pay_missing", 100), 404, "not_found")


async def test_the_idempotency_key_is_required_on_refund_creation(api):
    payment = await register(api)
    r = await api.client.post(
        "/v1/refunds",
        json={"payment_id": payment["id"], "amount": 1, "reason": "other"},
        headers=api.auth("store"),
    )
    assert_problem(r, 400, "idempotency_key_required")


async def test_a_repeated_request_replays_the_first_answer(api):
    payment = await register(api)
    first = await refund(api, payment["id"], 3000, key="same-key")
    await api.settle()
    again = await refund(api, payment["id"], 3000, key="same-key")
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert "idempotent-replayed" not in first.headers
    assert await count_refunds(api) == 1


async def test_a_key_reused_with_another_body_is_refused(api):
    payment = await register(api)
    await refund(api, payment["id"], 3000, key="k")
    assert_problem(await refund(api, payment["id"], 2000, key="k"), 422, "idempotency_key_reused")


async def test_idempotency_keys_belong_to_the_api_key_that_sent_them(api):
    payment = await register(api)
    a = await refund(api, payment["id"], 100, key="shared", who="store")
    b = await refund(api, payment["id"], 100, key="shared", who="store2")
    assert a.json()["id"] != b.json()["id"]


async def test_a_refused_request_is_replayed_as_refused(api):
    payment = await register(api, amount=1000)
    first = await refund(api, payment["id"], 2000, key="too-much")
    again = await refund(api, payment["id"], 2000, key="too-much")
    assert_problem(first, 422, "amount_exceeds_refundable")
    assert again.status_code == 422 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


# -- the refund window and offline payouts -------------------------------------


async def test_past_the_window_a_refund_requires_an_offline_payout_that_ops_records(api):
    payment = await register(api, captured_at="2026-05-01T00:00:00Z")  # 210 days before now
    r = await refund(api, payment["id"], 3000)
    created = r.json()
    assert created["status"] == "offline_required"
    assert created["offline_reason"] == "refund_window_passed"
    await api.settle()
    assert api.gateway.created == []
    r = await api.client.post(
        f"/v1/refunds/{created['id']}/offline-payout",
        json={"reference": "BANK-1", "paid_at": "2026-11-27T09:00:00Z"},
        headers=api.auth("store"),
    )
    assert_problem(r, 403, "forbidden")
    r = await api.client.post(
        f"/v1/refunds/{created['id']}/offline-payout",
        json={"reference": "BANK-1", "paid_at": "2026-11-27T09:00:00Z"},
        headers=api.auth("ops"),
    )
    assert r.status_code == 200
    assert r.json()["status"] == "offline_paid"
    assert r.json()["offline_reference"] == "BANK-1"
    paid = await get_payment(api, payment["id"])
    assert paid["refunded_amount"] == 3000 and paid["reserved_amount"] == 0


async def test_an_accounts_own_window_applies(make_api):
    api = await make_api(
        accounts={
            "fake_jp": {
                "provider": "sandbox",
                "api_key": "k",
                "base_url": "http://pse.test",
                "refund_window_days": 10,
            }
        }
    )
    payment = await register(api, captured_at="2026-11-10T00:00:00Z")
    assert payment["refund_deadline"] == "2026-11-20T00:00:00Z"
    assert (await refund(api, payment["id"], 100)).json()["status"] == "offline_required"


async def test_a_konbini_payment_is_refunded_offline(api):
    payment = await register(api, payment_method="konbini")
    assert (await refund(api, payment["id"], 100)).json()["status"] == "offline_required"


# -- approvals -----------------------------------------------------------------


async def test_a_refund_above_the_tier_waits_for_an_approver_then_goes_to_the_pse(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 20000)).json()
    assert created["status"] == "pending_approval"
    assert created["required_approvals"] == [1]
    await api.settle()
    assert api.gateway.created == []
    r = await api.client.post(
        f"/v1/refunds/{created['id']}/approve", json={"note": "ok"}, headers=api.auth("approver1")
    )
    assert r.status_code == 200
    assert r.json()["status"] == "approved"
    assert r.json()["approvals"][0]["approver"] == "approver1"
    await api.settle()
    assert (await get_refund(api, created["id"]))["status"] == "pending"
    assert "refund.approval_required" in await event_types(api, created["id"])


async def test_the_key_that_created_a_refund_cannot_approve_it(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 20000, who="store_approver")).json()
    r = await api.client.post(
        f"/v1/refunds/{created['id']}/approve", headers=api.auth("store_approver")
    )
    assert_problem(r, 403, "self_approval_forbidden")


async def test_a_store_key_cannot_approve(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 20000)).json()
    r = await api.client.post(f"/v1/refunds/{created['id']}/approve", headers=api.auth("store"))
    assert_problem(r, 403, "forbidden")


async def test_a_large_refund_needs_two_approvers_one_of_level_two(api):
    payment = await register(api, amount=500000)
    created = (await refund(api, payment["id"], 200000)).json()
    assert sorted(created["required_approvals"]) == [1, 2]
    url = f"/v1/refunds/{created['id']}/approve"
    r = await api.client.post(url, headers=api.auth("approver1"))
    assert r.json()["status"] == "pending_approval"
    assert_problem(
        await api.client.post(url, headers=api.auth("approver1")), 409, "already_decided"
    )
    assert_problem(
        await api.client.post(url, headers=api.auth("approver1b")),
        403,
        "approval_level_insufficient",
    )
    r = await api.client.post(url, headers=api.auth("approver2"))
    assert r.json()["status"] == "approved"
    assert_problem(await api.client.post(url, headers=api.auth("approver3")), 409, "invalid_state")


async def test_a_rejection_needs_a_note_and_frees_the_reserved_amount(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 20000)).json()
    url = f"/v1/refunds/{created['id']}/reject"
    assert_problem(
        await api.client.post(url, json={}, headers=api.auth("approver1")), 422, "validation_error"
    )
    r = await api.client.post(url, json={"note": "duplicate"}, headers=api.auth("approver1"))
    assert r.json()["status"] == "rejected"
    assert (await get_payment(api, payment["id"]))["refundable_amount"] == 50000


async def test_a_high_risk_payment_always_needs_an_approval(api):
    payment = await register(api, risk_level="high")
    created = (await refund(api, payment["id"], 100)).json()
    assert created["status"] == "pending_approval"
    assert created["required_approvals"] == [1]


async def test_past_the_daily_auto_approval_limit_refunds_wait_for_approval(make_api):
    api = await make_api(policy={"daily_auto_approve_limit": {"JPY": 5000}})
    payment = await register(api)
    assert (await refund(api, payment["id"], 3000)).json()["status"] == "submitting"
    assert (await refund(api, payment["id"], 2000)).json()["status"] == "submitting"
    assert (await refund(api, payment["id"], 1)).json()["status"] == "pending_approval"
    api.clock.advance(days=1)
    assert (await refund(api, payment["id"], 1000)).json()["status"] == "submitting"


async def test_a_refund_approved_on_a_total_read_before_another_took_the_room_waits(
    make_api, monkeypatch
):
    api = await make_api(policy={"daily_auto_approve_limit": {"JPY": 5000}})
    payment = await register(api)
    assert (await refund(api, payment["id"], 4000)).json()["status"] == "submitting"
    # As if each request read the day's total before that refund committed.
    read = PaymentRepository.lock_with_day_total

    async def read_before_it(self, *args):
        found = await read(self, *args)
        return None if found is None else (found[0], 0)

    monkeypatch.setattr(PaymentRepository, "lock_with_day_total", read_before_it)

    late = await refund(api, payment["id"], 2000, key="late")
    assert late.status_code == 201
    assert late.json()["status"] == "pending_approval"
    assert late.json()["required_approvals"] == [1]
    fits = await refund(api, payment["id"], 1000)
    assert fits.json()["status"] == "submitting"
    # The answer kept for the key is the one given; one refund behind it.
    again = await refund(api, payment["id"], 2000, key="late")
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == late.json()
    made = await api.container.refunds.request(
        RequestRefund(payment["id"], 1, RefundReason.REQUESTED_BY_CUSTOMER),
        Actor("key_store", "store"),
    )
    assert made.status is RefundStatus.PENDING_APPROVAL
    async with api.container.pool.acquire() as conn:
        total = await conn.fetchval("SELECT amount FROM auto_approval_totals")
        counted = await conn.fetchval("SELECT count(*) FROM refunds")
    assert (total, counted) == (5000, 4)


async def test_tiers_of_another_currency_apply_through_the_operators_rate(make_api):
    api = await make_api(
        policy={
            "approval_tiers": [{"currency": "USD", "above": 10000, "approvals": 1}],
            "rates": {"JPY_USD": {"rate": "0.0067", "as_of": "2026-11-01"}},
        }
    )
    # The store's settlement rate is for FX reporting only: a rate a hundred
    # times lower does not lower the approvals.
    payment = await register(
        api, amount=5000000, settlement_currency="USD", settlement_rate="0.000067"
    )
    small = (await refund(api, payment["id"], 10000)).json()  # USD 67.00 at the trusted rate
    assert small["status"] == "submitting"
    assert small["settlement_amount"] == 67 and small["settlement_currency"] == "USD"
    large = (await refund(api, payment["id"], 20000)).json()  # USD 134.00
    assert large["status"] == "pending_approval"
    assert large["required_approvals"] == [1]


async def test_a_store_cannot_skip_the_tiers_with_its_own_exchange_rate(make_api):
    # JPY tiers only, no operator rate for EUR: a EUR refund cannot be measured
    # and needs one approval, whatever settlement rate the store registered.
    api = await make_api()
    payment = await register(
        api,
        amount=10_000_000,
        currency="EUR",
        settlement_currency="JPY",
        settlement_rate="0.000001",
    )
    r = await refund(api, payment["id"], 5_000_000)  # EUR 50,000.00
    assert r.status_code == 201
    assert r.json()["status"] == "pending_approval"
    assert r.json()["required_approvals"] == [1]


async def test_an_operator_rate_measures_a_foreign_refund_against_the_tiers(make_api):
    api = await make_api(
        policy={
            "approval_tiers": [
                {"currency": "JPY", "above": 10000, "approvals": 1, "min_level": 1},
                {"currency": "JPY", "above": 100000, "approvals": 2, "min_level": 2},
            ],
            "rates": {"EUR_JPY": {"rate": "162.35", "as_of": "2026-11-01"}},
        }
    )
    payment = await register(
        api,
        amount=10_000_000,
        currency="EUR",
        settlement_currency="JPY",
        settlement_rate="0.000001",
    )
    big = (await refund(api, payment["id"], 5_000_000)).json()  # EUR 50,000 ≈ JPY 8.1 million
    assert big["required_approvals"] == [2, 1]
    small = (await refund(api, payment["id"], 5_000)).json()  # EUR 50 ≈ JPY 8,118
    assert small["status"] == "submitting" and small["required_approvals"] == []


# -- cancel ----------------------------------------------------------------------


async def test_a_refund_can_be_canceled_before_submission_only(api):
    payment = await register(api)
    waiting = (await refund(api, payment["id"], 20000)).json()
    r = await api.client.post(f"/v1/refunds/{waiting['id']}/cancel", headers=api.auth("store"))
    assert r.json()["status"] == "canceled"
    sent = (await refund(api, payment["id"], 1000)).json()
    await api.settle()
    r = await api.client.post(f"/v1/refunds/{sent['id']}/cancel", headers=api.auth("ops"))
    assert_problem(r, 409, "invalid_state")
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 1000


# -- PSE outcomes ----------------------------------------------------------------


async def test_no_answer_from_the_pse_leaves_the_refund_unknown_never_failed(api):
    api.gateway.next_results.append(Unanswered("timeout after 4 attempts"))
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    now = await get_refund(api, created["id"])
    assert now["status"] == "unknown"
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 3000


async def test_a_pse_decline_fails_the_refund_and_frees_the_amount(api):
    api.gateway.next_results.append(Declined("already_refunded", "charge already refunded"))
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    now = await get_refund(api, created["id"])
    assert now["status"] == "failed" and now["failure_code"] == "already_refunded"
    assert (await get_payment(api, payment["id"]))["refundable_amount"] == 50000


async def test_a_pse_that_can_no_longer_refund_sends_the_refund_offline(api):
    api.gateway.next_results.append(Declined("refund_window_passed", "too old", offline=True))
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    assert (await get_refund(api, created["id"]))["status"] == "offline_required"


async def test_sync_finds_an_unknown_refund_at_the_pse_and_applies_it(api):
    api.gateway.next_results.append(Unanswered("timeout"))
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    api.gateway.lookup_results.append(
        Accepted(PseRefund("fre_9", PseRefundState.SUCCEEDED, reference=created["id"]))
    )
    r = await api.client.post(f"/v1/refunds/{created['id']}/sync", headers=api.auth("ops"))
    assert r.status_code == 200
    assert r.json()["status"] == "succeeded" and r.json()["pse_refund_id"] == "fre_9"
    assert len(api.gateway.created) == 1  # found, not resent
    assert (await get_payment(api, payment["id"]))["refunded_amount"] == 3000


async def test_sync_resends_an_unknown_refund_with_its_key_only_when_the_pse_has_nothing(api):
    api.gateway.next_results.append(Unanswered("timeout"))
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    api.gateway.lookup_results.append(NotFound())
    r = await api.client.post(f"/v1/refunds/{created['id']}/sync", headers=api.auth("ops"))
    assert r.json()["status"] == "pending"
    first, second = api.gateway.created
    assert first.idempotency_key == second.idempotency_key


async def test_sync_leaves_an_unknown_refund_alone_when_the_pse_does_not_answer(api):
    api.gateway.next_results.append(Unanswered("timeout"))
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    await api.settle()
    api.gateway.lookup_results.append(Unanswered("timeout"))
    r = await api.client.post(f"/v1/refunds/{created['id']}/sync", headers=api.auth("ops"))
    assert r.json()["status"] == "unknown"
    assert len(api.gateway.created) == 1


async def test_sync_is_for_ops(api):
    payment = await register(api)
    created = (await refund(api, payment["id"], 3000)).json()
    r = await api.client.post(f"/v1/refunds/{created['id']}/sync", headers=api.auth("store"))
    assert_problem(r, 403, "forbidden")
    r = await api.client.post("/v1/refunds/rf_nope/sync", headers=api.auth("ops"))
    assert_problem(r, 404, "not_found")


# -- lists -------------------------------------------------------------------------


async def test_refunds_are_listed_by_status_and_payment(api):
    payment = await register(api)
    other = await register(api)
    waiting = (await refund(api, payment["id"], 20000)).json()
    await refund(api, payment["id"], 100)
    await refund(api, other["id"], 100)
    await api.settle()
    r = await api.client.get(
        "/v1/refunds",
        params={"status": "pending_approval", "payment_id": payment["id"]},
        headers=api.auth("approver1"),
    )
    assert [x["id"] for x in r.json()["data"]] == [waiting["id"]]
    r = await api.client.get(
        "/v1/refunds", params={"payment_id": payment["id"]}, headers=api.auth("store")
    )
    assert len(r.json()["data"]) == 2
    r = await api.client.get("/v1/refunds", params={"status": "bogus"}, headers=api.auth("ops"))
    assert_problem(r, 422, "validation_error")


async def test_the_stale_list_shows_open_refunds_older_than_the_sla_oldest_first(api):
    payment = await register(api)
    old = (await refund(api, payment["id"], 20000)).json()
    api.clock.advance(hours=30)
    await refund(api, payment["id"], 20000)
    r = await api.client.get("/v1/refunds", params={"stale": "true"}, headers=api.auth("ops"))
    assert [x["id"] for x in r.json()["data"]] == [old["id"]]


async def test_refunds_are_listed_by_creation_window(api):
    payment = await register(api)
    first = (await refund(api, payment["id"], 100)).json()
    api.clock.advance(hours=2)
    second = (await refund(api, payment["id"], 100)).json()
    r = await api.client.get(
        "/v1/refunds",
        params={"created_from": "2026-11-27T09:00:00Z"},
        headers=api.auth("ops"),
    )
    assert [x["id"] for x in r.json()["data"]] == [second["id"]]
    r = await api.client.get(
        "/v1/refunds", params={"created_to": "2026-11-27T09:00:00Z"}, headers=api.auth("ops")
    )
    assert [x["id"] for x in r.json()["data"]] == [first["id"]]


# -- policy and health ------------------------------------------------------------


async def test_the_policy_is_readable_by_admins_only_and_shows_no_secret(api):
    assert_problem(await api.client.get("/v1/policy", headers=api.auth("ops")), 403, "forbidden")
    r = await api.client.get("/v1/policy", headers=api.auth("admin"))
    assert r.status_code == 200
    body = r.json()
    assert body["refund_window_days"] == 180
    assert body["approval_tiers"][1] == {
        "currency": "JPY",
        "above": 100000,
        "approvals": 2,
        "min_level": 2,
    }
    assert "sk_fake" not in r.text
    assert body["rates"] == {} and body["rate_max_age_days"] is None


async def test_the_policy_shows_the_operators_rates_with_their_date(make_api):
    api = await make_api(
        policy={
            "rates": {"EUR_JPY": {"rate": "162.35", "as_of": "2026-11-30"}},
            "rate_max_age_days": 7,
        }
    )
    body = (await api.client.get("/v1/policy", headers=api.auth("admin"))).json()
    assert body["rates"] == {"EUR_JPY": {"rate": "162.35", "as_of": "2026-11-30"}}
    assert body["rate_max_age_days"] == 7


async def test_readiness_checks_the_database_and_schema(api):
    r = await api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_times_are_rfc3339_utc():
    from app.services.views import rfc3339

    assert rfc3339(datetime(2026, 11, 27, 8, 0, tzinfo=UTC)) == "2026-11-27T08:00:00Z"
