"""The sandbox PSE over HTTP, in-process."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from standardwebhooks import Webhook

from app.sandbox import Faults, SandboxConfig
from tests.sandbox.harness import (
    AUTH,
    BASE_URL,
    WEBHOOK_URL,
    WebhookReceiver,
    make_config,
    running_sandbox,
    sandbox_state,
    settle,
)


def refund_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "payment_id": "pay_1",
        "amount": 1000,
        "currency": "JPY",
        "reference": "re_1",
        "reason": "requested_by_customer",
        "metadata": {"rma": "R-77"},
    }
    body.update(overrides)
    return body


async def post_refund(
    client: httpx.AsyncClient, key: str = "key-1", **overrides: Any
) -> httpx.Response:
    return await client.post(
        "/v1/refunds", json=refund_body(**overrides), headers={"Idempotency-Key": key}
    )


async def set_faults(client: httpx.AsyncClient, **faults: Any) -> None:
    response = await client.put("/_control/faults", json=faults)
    assert response.status_code == 200, response.text


async def register_payment(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"id": "pay_1", "amount": 1000, "currency": "JPY", **fields}
    response = await client.post("/v1/payments", json=body)
    assert response.status_code == 201, response.text
    payment: dict[str, Any] = response.json()
    return payment


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    result: dict[str, Any] = (await client.get("/_control/stats")).json()
    return result


# --------------------------------------------------------------------------
# Auth
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2tfc2FuZGJveF90ZXN0Og=="}],
    ids=["missing", "wrong-key", "basic-scheme"],
)
async def test_v1_routes_refuse_requests_without_the_api_key(
    sandbox: FastAPI, headers: dict[str, str]
) -> None:
    transport = httpx.ASGITransport(app=sandbox)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as anonymous:
        for method, path in [
            ("POST", "/v1/refunds"),
            ("GET", "/v1/refunds"),
            ("GET", "/v1/refunds/sbre_x"),
            ("POST", "/v1/payments"),
            ("GET", "/v1/payments/pay_1"),
        ]:
            response = await anonymous.request(
                method, path, headers={**headers, "Idempotency-Key": "k"}, json=refund_body()
            )
            assert response.status_code == 401, (method, path)
            assert error_code(response) == "unauthorized"
    assert sandbox_state(sandbox).refunds == {}


# --------------------------------------------------------------------------
# Refunds and idempotency
# --------------------------------------------------------------------------


async def test_a_refund_is_created_pending_and_echoes_the_request(
    client: httpx.AsyncClient,
) -> None:
    response = await post_refund(client)

    assert response.status_code == 200
    refund = response.json()
    assert refund["id"].startswith("sbre_")
    assert refund["object"] == "refund"
    assert refund["status"] == "pending"
    assert refund["failure_code"] is None
    assert {k: refund[k] for k in ("payment_id", "amount", "currency", "reference")} == {
        "payment_id": "pay_1",
        "amount": 1000,
        "currency": "JPY",
        "reference": "re_1",
    }
    assert refund["reason"] == "requested_by_customer"
    assert refund["metadata"] == {"rma": "R-77"}
    created = datetime.strptime(refund["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - created) < timedelta(seconds=5)


async def test_a_refund_without_an_idempotency_key_is_refused(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    response = await client.post("/v1/refunds", json=refund_body())

    assert response.status_code == 400
    assert error_code(response) == "idempotency_key_missing"
    assert sandbox_state(sandbox).refunds == {}


async def test_the_same_key_and_body_replays_the_first_answer_without_a_second_refund(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    first = await post_refund(client)
    second = await post_refund(client)

    assert second.status_code == first.status_code == 200
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert len(sandbox_state(sandbox).refunds) == 1


async def test_a_refused_request_is_replayed_too(client: httpx.AsyncClient) -> None:
    await register_payment(client, amount=500)

    first = await post_refund(client, amount=600)
    second = await post_refund(client, amount=600)

    assert first.status_code == second.status_code == 400
    assert second.json() == first.json()
    assert error_code(second) == "amount_too_large"


async def test_the_same_key_with_a_different_body_is_a_conflict(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await post_refund(client, amount=1000)

    response = await post_refund(client, amount=999)

    assert response.status_code == 409
    assert error_code(response) == "idempotency_conflict"
    assert len(sandbox_state(sandbox).refunds) == 1


async def test_the_same_key_while_the_first_request_is_in_flight_is_refused(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await set_faults(client, timeout_after_commit_rate=1.0, hang_seconds=0.3)
    first = asyncio.create_task(post_refund(client))
    await receiver.wait_for(1)  # refund.created: committed, answer still held back
    assert not first.done()

    concurrent = await post_refund(client)

    assert concurrent.status_code == 409
    assert error_code(concurrent) == "idempotency_in_progress"
    assert (await first).status_code == 200
    replay = await post_refund(client)
    assert replay.status_code == 200
    assert replay.json()["id"] == (await first).json()["id"]
    assert len(sandbox_state(sandbox).refunds) == 1


# --------------------------------------------------------------------------
# Refund rules
# --------------------------------------------------------------------------


async def test_refunds_together_cannot_exceed_the_payment(client: httpx.AsyncClient) -> None:
    await register_payment(client, amount=1000)

    assert (await post_refund(client, "k1", amount=600, reference="re_1")).status_code == 200
    too_much = await post_refund(client, "k2", amount=401, reference="re_2")
    rest = await post_refund(client, "k3", amount=400, reference="re_3")

    assert too_much.status_code == 400
    assert error_code(too_much) == "amount_too_large"
    assert rest.status_code == 200


async def test_concurrent_refunds_never_exceed_the_payment(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await register_payment(client, amount=1000)
    await set_faults(client, latency_ms=20)

    answers = await asyncio.gather(
        *(post_refund(client, f"k{i}", amount=300, reference=f"re_{i}") for i in range(10))
    )

    assert sorted(a.status_code for a in answers) == [200] * 3 + [400] * 7
    assert sum(r.amount for r in sandbox_state(sandbox).refunds.values()) == 900


async def test_a_failed_refund_frees_its_amount(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await register_payment(client, amount=1000)
    await set_faults(client, failure_rate=1.0)
    await post_refund(client, "k1", amount=1000)
    await settle(sandbox)
    await set_faults(client)

    again = await post_refund(client, "k2", amount=1000, reference="re_2")

    assert again.status_code == 200


async def test_an_unknown_payment_is_registered_uncapped_in_the_refund_currency(
    client: httpx.AsyncClient,
) -> None:
    big = await post_refund(client, "k1", payment_id="pay_new", amount=10**12)
    other_currency = await post_refund(client, "k2", payment_id="pay_new", currency="USD")

    assert big.status_code == 200
    assert other_currency.status_code == 400
    assert error_code(other_currency) == "currency_mismatch"
    payment = (await client.get("/v1/payments/pay_new")).json()
    assert payment["currency"] == "JPY"
    assert payment["amount"] is None


@pytest.mark.parametrize("amount", [0, -5, 1.5, "100", True, None])
async def test_the_amount_must_be_a_positive_integer(
    client: httpx.AsyncClient, amount: object
) -> None:
    response = await post_refund(client, amount=amount)

    assert response.status_code == 400
    assert error_code(response) == "invalid_amount"


async def test_the_currency_must_match_the_registered_payment(
    client: httpx.AsyncClient,
) -> None:
    await register_payment(client, currency="JPY")

    response = await post_refund(client, currency="USD")

    assert response.status_code == 400
    assert error_code(response) == "currency_mismatch"


async def test_a_payment_captured_before_the_refund_window_cannot_be_refunded(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    captured = datetime.now(UTC) - timedelta(days=181)
    await register_payment(client, captured_at=captured.isoformat())

    response = await post_refund(client)

    assert response.status_code == 400
    assert error_code(response) == "refund_window_passed"
    assert sandbox_state(sandbox).refunds == {}


async def test_a_payment_captured_inside_the_window_can_be_refunded(
    client: httpx.AsyncClient,
) -> None:
    captured = datetime.now(UTC) - timedelta(days=179)
    await register_payment(client, captured_at=captured.isoformat())

    assert (await post_refund(client)).status_code == 200


async def test_unknown_fields_are_refused(client: httpx.AsyncClient) -> None:
    response = await post_refund(client, amout=5)

    assert response.status_code == 400
    assert error_code(response) == "invalid_request"


# --------------------------------------------------------------------------
# Payments and look-ups
# --------------------------------------------------------------------------


async def test_a_payment_shows_what_is_refunded_and_its_refunds(
    client: httpx.AsyncClient,
) -> None:
    created = await register_payment(client, payment_method="card")
    await post_refund(client, "k1", amount=300, reference="re_1")
    await post_refund(client, "k2", amount=200, reference="re_2")

    payment = (await client.get("/v1/payments/pay_1")).json()

    assert created["refunded_amount"] == 0
    assert payment["amount"] == 1000
    assert payment["payment_method"] == "card"
    assert payment["refunded_amount"] == 500
    assert [r["reference"] for r in payment["refunds"]] == ["re_1", "re_2"]


async def test_registering_the_same_payment_twice_is_harmless_but_changing_it_is_not(
    client: httpx.AsyncClient,
) -> None:
    await register_payment(client)

    same = await client.post(
        "/v1/payments", json={"id": "pay_1", "amount": 1000, "currency": "JPY"}
    )
    changed = await client.post(
        "/v1/payments", json={"id": "pay_1", "amount": 2000, "currency": "JPY"}
    )

    assert same.status_code == 200
    assert changed.status_code == 409
    assert error_code(changed) == "payment_exists"


async def test_a_refund_can_be_read_by_id_and_found_by_reference(
    client: httpx.AsyncClient,
) -> None:
    mine = (await post_refund(client, "k1", reference="re_mine")).json()
    await post_refund(client, "k2", reference="re_other")
    await post_refund(client, "k3", payment_id="pay_2", reference="re_mine")

    by_id = await client.get(f"/v1/refunds/{mine['id']}")
    listed = await client.get("/v1/refunds", params={"payment_id": "pay_1", "reference": "re_mine"})
    missing = await client.get("/v1/refunds/sbre_nope")

    assert by_id.json() == mine
    assert [r["id"] for r in listed.json()["data"]] == [mine["id"]]
    assert missing.status_code == 404
    assert error_code(missing) == "not_found"
    everything = (await client.get("/v1/refunds")).json()["data"]
    assert len(everything) == 3
    assert everything[0]["payment_id"] == "pay_2"  # newest first


# --------------------------------------------------------------------------
# Settlement and webhooks
# --------------------------------------------------------------------------


async def test_a_refund_settles_and_sends_created_then_succeeded_signed_webhooks(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver, config: SandboxConfig
) -> None:
    refund = (await post_refund(client)).json()

    webhooks = await receiver.wait_for(2)

    assert receiver.types() == ["refund.created", "refund.succeeded"]
    created, succeeded = (w.event for w in webhooks)
    assert created["data"]["status"] == "pending"
    assert succeeded["data"]["status"] == "succeeded"
    assert created["data"]["id"] == succeeded["data"]["id"] == refund["id"]
    assert created["id"] != succeeded["id"]
    for webhook in webhooks:
        assert webhook.headers["webhook-id"] == webhook.event["id"]
        assert webhook.event["id"].startswith("evt_")
        # The reference implementation accepts what the sandbox signed.
        Webhook(config.webhook_secret).verify(webhook.body, webhook.headers)
    read = (await client.get(f"/v1/refunds/{refund['id']}")).json()
    assert read["status"] == "succeeded"
    assert (await stats(client))["webhooks_sent"] == 2


async def test_no_webhook_is_sent_without_a_webhook_url(receiver: WebhookReceiver) -> None:
    async with running_sandbox(receiver, make_config(webhook_url=None)) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as c:
            refund = (await post_refund(c)).json()
            await settle(app)
            read = (await c.get(f"/v1/refunds/{refund['id']}")).json()

    assert read["status"] == "succeeded"
    assert receiver.attempts == []


async def test_a_rejected_webhook_is_retried_under_the_same_webhook_id(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    receiver.answers = [500, 503]
    await post_refund(client)

    await receiver.wait_for(2)
    await settle(sandbox)

    first_event_attempts = [a.headers["webhook-id"] for a in receiver.attempts[:3]]
    assert len(set(first_event_attempts)) == 1
    assert receiver.types() == ["refund.created", "refund.succeeded"]


async def test_events_of_a_refund_arrive_in_order_even_when_the_first_needs_retries(
    receiver: WebhookReceiver,
) -> None:
    receiver.refusals = {"refund.created": 2}  # accepted ~0.15 s in, long after settling
    config = make_config(settle_delay_seconds=0.01, webhook_backoff_seconds=0.05)
    async with running_sandbox(receiver, config) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as c:
            await post_refund(c)
            await settle(app)

    assert receiver.types() == ["refund.created", "refund.succeeded"]


async def test_a_webhook_the_receiver_never_accepts_is_given_up(
    sandbox: FastAPI, client: httpx.AsyncClient, receiver: WebhookReceiver, config: SandboxConfig
) -> None:
    receiver.answers = [500] * 100
    await post_refund(client)
    await settle(sandbox)

    assert len(receiver.attempts) == 2 * config.webhook_max_attempts
    assert receiver.accepted == []
    result = await stats(client)
    assert result["webhooks_sent"] == 0
    assert result["webhooks_failed"] == 2


async def test_aclose_cancels_pending_settlements(receiver: WebhookReceiver) -> None:
    async with running_sandbox(receiver, make_config(settle_delay_seconds=30)) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as c:
            refund = (await post_refund(c)).json()
            await receiver.wait_for(1)
            state = sandbox_state(app)
            started = time.monotonic()
            await state.aclose()

    assert time.monotonic() - started < 1
    assert state.refunds[refund["id"]].status == "pending"
    assert receiver.types() == ["refund.created"]


async def test_the_app_lifespan_closes_the_sandbox_on_shutdown(receiver: WebhookReceiver) -> None:
    async with running_sandbox(receiver, make_config(settle_delay_seconds=30)) as app:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as c:
                refund = (await post_refund(c)).json()

        async with asyncio.timeout(1):
            await sandbox_state(app).wait_idle()  # nothing left running
        assert sandbox_state(app).refunds[refund["id"]].status == "pending"


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


async def test_latency_delays_every_answer(client: httpx.AsyncClient) -> None:
    await set_faults(client, latency_ms=60)

    for request in (post_refund(client), client.get("/v1/refunds")):
        started = time.monotonic()
        response = await request
        assert response.status_code == 200
        assert time.monotonic() - started >= 0.06

    assert (await stats(client))["faults_injected"]["latency"] == 2


async def test_an_error_before_commit_answers_500_and_keeps_nothing(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(client, error_before_commit_rate=1.0)

    response = await post_refund(client)

    assert response.status_code == 500
    assert error_code(response) == "internal_error"
    assert sandbox_state(sandbox).refunds == {}
    await set_faults(client)
    retry = await post_refund(client)
    assert retry.status_code == 200  # the key was not used up
    assert retry.headers.get("idempotent-replayed") is None
    assert (await stats(client))["faults_injected"] == {"error_before_commit": 1}


async def test_a_request_cancelled_before_commit_frees_its_key(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(client, latency_ms=200)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await post_refund(client)
    await set_faults(client)

    retry = await post_refund(client)

    assert retry.status_code == 200
    assert retry.headers.get("idempotent-replayed") is None
    assert len(sandbox_state(sandbox).refunds) == 1


async def test_an_error_after_commit_answers_500_but_the_refund_exists_and_replays(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(client, error_after_commit_rate=1.0)

    response = await post_refund(client)

    assert response.status_code == 500
    [refund] = sandbox_state(sandbox).refunds.values()
    listed = await client.get("/v1/refunds", params={"payment_id": "pay_1", "reference": "re_1"})
    assert [r["id"] for r in listed.json()["data"]] == [refund.id]
    retry = await post_refund(client)
    assert retry.status_code == 200
    assert retry.json()["id"] == refund.id
    assert len(sandbox_state(sandbox).refunds) == 1


async def test_a_timeout_after_commit_holds_the_answer_back_for_the_hang(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(client, timeout_after_commit_rate=1.0, hang_seconds=0.2)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await post_refund(client)

    assert time.monotonic() - started < 0.2
    assert len(sandbox_state(sandbox).refunds) == 1  # committed before the hang
    assert (await post_refund(client)).status_code == 409  # still in progress
    await asyncio.sleep(0.25)
    replay = await post_refund(client)
    assert replay.status_code == 200
    assert replay.json()["id"] in sandbox_state(sandbox).refunds


async def test_failure_rate_one_fails_every_refund_with_a_failed_webhook(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await set_faults(client, failure_rate=1.0)
    refund = (await post_refund(client)).json()

    await receiver.wait_for(2)

    assert receiver.types() == ["refund.created", "refund.failed"]
    failed = receiver.accepted[1].event["data"]
    assert failed["status"] == "failed"
    assert failed["failure_code"] == "sandbox_declined"
    read = (await client.get(f"/v1/refunds/{refund['id']}")).json()
    assert read["status"] == "failed"
    assert (await client.get("/v1/payments/pay_1")).json()["refunded_amount"] == 0


async def test_dropped_webhooks_never_arrive(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await set_faults(client, webhook_drop_rate=1.0)
    refund = (await post_refund(client)).json()

    await settle(sandbox)

    assert receiver.attempts == []
    assert (await client.get(f"/v1/refunds/{refund['id']}")).json()["status"] == "succeeded"
    assert (await stats(client))["faults_injected"]["webhook_drop"] == 2


async def test_duplicated_webhooks_arrive_twice_with_the_same_webhook_id(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await set_faults(client, webhook_duplicate_rate=1.0)
    await post_refund(client)

    await receiver.wait_for(4)
    await settle(sandbox)

    ids = [w.headers["webhook-id"] for w in receiver.accepted]
    assert len(ids) == 4
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    assert receiver.types() == ["refund.created"] * 2 + ["refund.succeeded"] * 2


async def test_reordered_webhooks_send_the_final_event_before_created(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await set_faults(client, webhook_reorder=True)
    await post_refund(client)

    await receiver.wait_for(2)

    assert receiver.types() == ["refund.succeeded", "refund.created"]
    assert receiver.accepted[1].event["data"]["status"] == "pending"


async def test_delayed_webhooks_arrive_late(
    client: httpx.AsyncClient, sandbox: FastAPI, receiver: WebhookReceiver
) -> None:
    await set_faults(client, webhook_delay_seconds=0.15)
    started = time.monotonic()
    await post_refund(client)

    await receiver.wait_for(1)

    assert time.monotonic() - started >= 0.15


async def test_seeded_faults_repeat_the_same_pattern(receiver: WebhookReceiver) -> None:
    async def pattern() -> list[int]:
        faults = Faults(error_before_commit_rate=0.5)
        async with running_sandbox(receiver, make_config(seed=42), faults) as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as c:
                return [(await post_refund(c, f"k{i}")).status_code for i in range(20)]

    first, second = await pattern(), await pattern()

    assert first == second
    assert {200, 500} <= set(first)  # both outcomes happen: the rate is applied


# --------------------------------------------------------------------------
# Control
# --------------------------------------------------------------------------


async def test_faults_can_be_read_and_replaced(client: httpx.AsyncClient) -> None:
    assert (await client.get("/_control/faults")).json() == Faults().to_json()

    await set_faults(client, failure_rate=0.25, webhook_reorder=True)
    await set_faults(client, latency_ms=5)

    assert (await client.get("/_control/faults")).json() == {
        **Faults().to_json(),
        "latency_ms": 5,
    }


@pytest.mark.parametrize(
    "faults",
    [{"failure_rat": 1}, {"failure_rate": 1.5}, {"latency_ms": -1}, {"webhook_reorder": 1}, []],
    ids=["misspelt", "rate-above-one", "negative", "not-bool", "not-object"],
)
async def test_invalid_faults_are_refused_and_the_old_ones_kept(
    client: httpx.AsyncClient, faults: object
) -> None:
    await set_faults(client, failure_rate=0.5)

    response = await client.put("/_control/faults", json=faults)

    assert response.status_code == 400
    assert error_code(response) == "invalid_faults"
    assert (await client.get("/_control/faults")).json()["failure_rate"] == 0.5


async def test_stats_show_refunds_per_reference_to_spot_doubles(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    a = (await post_refund(client, "k1", amount=100, reference="re_a")).json()
    b1 = (await post_refund(client, "k2", amount=200, reference="re_b")).json()
    b2 = (await post_refund(client, "k3", amount=200, reference="re_b")).json()
    await settle(sandbox)

    result = await stats(client)

    assert result["refunds"] == 3
    assert result["payments"]["pay_1"] == {
        "refunded_total_succeeded": 500,
        "refunds_succeeded": 3,
        "refunds_by_reference": {"re_a": [a["id"]], "re_b": [b1["id"], b2["id"]]},
    }
    assert result["webhooks_sent"] == 6
    every = (await client.get("/_control/refunds")).json()["data"]
    assert [r["id"] for r in every] == [a["id"], b1["id"], b2["id"]]


async def test_reset_forgets_everything_and_switches_faults_off(
    client: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(client, failure_rate=1.0)
    await post_refund(client)
    await settle(sandbox)

    response = await client.post("/_control/reset")

    assert response.status_code == 200
    assert (await client.get("/_control/faults")).json() == Faults().to_json()
    assert (await client.get("/_control/refunds")).json()["data"] == []
    assert (await stats(client))["faults_injected"] == {}
    again = await post_refund(client)  # the key is free again
    assert again.status_code == 200
    assert again.headers.get("idempotent-replayed") is None


async def test_the_control_api_answers_loopback_clients_only(sandbox: FastAPI) -> None:
    transport = httpx.ASGITransport(app=sandbox, client=("203.0.113.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as remote:
        for method, path in [("GET", "/_control/stats"), ("POST", "/_control/reset")]:
            response = await remote.request(method, path)
            assert response.status_code == 403
            assert error_code(response) == "forbidden"


def test_the_config_refuses_a_secret_that_is_not_standard_webhooks() -> None:
    with pytest.raises(ValueError, match="webhook_secret"):
        SandboxConfig(api_key="k", webhook_url=WEBHOOK_URL, webhook_secret="whsec_")
