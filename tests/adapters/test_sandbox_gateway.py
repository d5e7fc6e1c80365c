"""SandboxGateway against the real sandbox app, in-process (no port)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.adapters.pse.base import PseAccount
from app.adapters.pse.sandbox import SandboxGateway
from app.domain.money import Money
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    NotFound,
    PseRefundState,
    RefundSubmission,
    Unanswered,
)
from app.sandbox import Faults, SandboxConfig, new_webhook_secret
from tests.sandbox import harness
from tests.sandbox.harness import (
    API_KEY,
    AUTH,
    BASE_URL,
    DeadlineTransport,
    ReceivedWebhook,
    WebhookReceiver,
    sandbox_state,
    settle,
    sign_webhook,
)

GatewayFactory = Callable[..., SandboxGateway]


receiver = harness.receiver
config = harness.config
sandbox = harness.sandbox


@pytest.fixture
async def http(sandbox: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # Timeouts enforced in-process, so the timeout-after-commit fault really times out.
    transport = DeadlineTransport(httpx.ASGITransport(app=sandbox))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


@pytest.fixture
def account(config: SandboxConfig) -> PseAccount:
    return PseAccount(
        name="sandbox",
        provider="sandbox",
        api_key=API_KEY,
        base_url=BASE_URL,
        webhook_secrets=(config.webhook_secret,),
        timeout_seconds=1.0,
        max_attempts=3,
        backoff_initial_seconds=0.001,
        backoff_max_seconds=0.005,
    )


@pytest.fixture
def make_gateway(account: PseAccount, http: httpx.AsyncClient) -> GatewayFactory:
    def build(**changes: Any) -> SandboxGateway:
        return SandboxGateway(replace(account, **changes), http)

    return build


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> SandboxGateway:
    return make_gateway()


def submission(**overrides: Any) -> RefundSubmission:
    values: dict[str, Any] = {
        "reference": "rf_01",
        "idempotency_key": "idem-rf_01",
        "pse_payment_id": "pay_1",
        "amount": Money(1000, "JPY"),
        "reason": "requested_by_customer",
        "metadata": {"rma": "R-77"},
    }
    values.update(overrides)
    return RefundSubmission(**values)


async def set_faults(http: httpx.AsyncClient, **faults: Any) -> None:
    response = await http.put("/_control/faults", json=faults)
    assert response.status_code == 200, response.text


async def register_payment(http: httpx.AsyncClient, **fields: Any) -> None:
    body = {"id": "pay_1", "amount": 1000, "currency": "JPY", **fields}
    response = await http.post("/v1/payments", json=body, headers=AUTH)
    assert response.status_code == 201, response.text


def now() -> datetime:
    return datetime.now(UTC)


def parse(gateway: SandboxGateway, webhook: ReceivedWebhook, at: datetime | None = None) -> Any:
    return gateway.parse_webhook(webhook.headers, webhook.body, at or now())


# --------------------------------------------------------------------------
# create_refund
# --------------------------------------------------------------------------


async def test_a_created_refund_is_accepted_pending_with_our_reference(
    gateway: SandboxGateway, sandbox: FastAPI
) -> None:
    result = await gateway.create_refund(submission())

    assert isinstance(result, Accepted)
    refund = result.refund
    assert refund.state is PseRefundState.PENDING
    assert refund.reference == "rf_01"
    assert refund.amount == Money(1000, "JPY")
    assert refund.pse_refund_id.startswith("sbre_")
    stored = sandbox_state(sandbox).refunds[refund.pse_refund_id]
    assert (stored.payment_id, stored.reason, stored.metadata) == (
        "pay_1",
        "requested_by_customer",
        {"rma": "R-77"},
    )


async def test_resending_with_the_same_key_returns_the_same_refund(
    gateway: SandboxGateway, sandbox: FastAPI
) -> None:
    first = await gateway.create_refund(submission())
    second = await gateway.create_refund(submission())

    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert first.refund == second.refund
    assert len(sandbox_state(sandbox).refunds) == 1


async def test_more_than_the_refundable_amount_is_declined_as_exceeding_it(
    gateway: SandboxGateway, http: httpx.AsyncClient
) -> None:
    await register_payment(http, amount=500)

    result = await gateway.create_refund(submission())

    assert isinstance(result, Declined)
    assert result.code == "amount_exceeds_refundable"
    assert not result.offline


async def test_a_payment_past_the_window_is_declined_for_an_offline_payout(
    gateway: SandboxGateway, http: httpx.AsyncClient
) -> None:
    await register_payment(http, captured_at=(now() - timedelta(days=200)).isoformat())

    result = await gateway.create_refund(submission())

    assert isinstance(result, Declined)
    assert result.code == "refund_window_passed"
    assert result.offline


async def test_other_sandbox_refusals_are_declined_with_their_code(
    gateway: SandboxGateway, http: httpx.AsyncClient
) -> None:
    await register_payment(http, currency="USD")

    result = await gateway.create_refund(submission())

    assert isinstance(result, Declined)
    assert result.code == "currency_mismatch"
    assert not result.offline


async def test_a_wrong_api_key_is_declined_as_an_authentication_failure(
    make_gateway: GatewayFactory, sandbox: FastAPI
) -> None:
    result = await make_gateway(api_key="sk_wrong").create_refund(submission())

    assert isinstance(result, Declined)
    assert result.code == "pse_authentication_failed"
    assert sandbox_state(sandbox).refunds == {}


async def test_reusing_a_key_for_another_refund_is_unanswered(gateway: SandboxGateway) -> None:
    await gateway.create_refund(submission())

    result = await gateway.create_refund(submission(amount=Money(999, "JPY")))

    assert isinstance(result, Unanswered)
    assert "idempotency_conflict" in result.reason


async def test_the_gateway_retries_a_500_before_commit_and_ends_with_one_refund(
    sandbox: FastAPI, account: PseAccount, http: httpx.AsyncClient
) -> None:
    await set_faults(http, error_before_commit_rate=1.0)
    statuses: list[int] = []

    async def heal_after_first_failure(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        sandbox_state(sandbox).faults = Faults()  # the next attempt meets a healthy PSE

    http.event_hooks["response"] = [heal_after_first_failure]
    result = await SandboxGateway(account, http).create_refund(submission())

    assert statuses == [500, 200]
    assert isinstance(result, Accepted)
    assert list(sandbox_state(sandbox).refunds) == [result.refund.pse_refund_id]


async def test_a_500_before_commit_on_every_attempt_is_unanswered_and_nothing_exists(
    gateway: SandboxGateway, http: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(http, error_before_commit_rate=1.0)

    result = await gateway.create_refund(submission())

    assert isinstance(result, Unanswered)
    assert "500" in result.reason
    assert sandbox_state(sandbox).faults_injected["error_before_commit"] == 3
    await set_faults(http)
    assert isinstance(await gateway.find_refund(submission()), NotFound)


async def test_a_500_after_commit_without_retries_is_unanswered_yet_the_refund_is_found(
    make_gateway: GatewayFactory, http: httpx.AsyncClient
) -> None:
    await set_faults(http, error_after_commit_rate=1.0)
    gateway = make_gateway(max_attempts=1)

    result = await gateway.create_refund(submission())
    found = await gateway.find_refund(submission())

    assert isinstance(result, Unanswered)
    assert isinstance(found, Accepted)
    assert found.refund.reference == "rf_01"
    assert found.refund.amount == Money(1000, "JPY")


async def test_a_retry_after_a_500_after_commit_gets_the_committed_refund(
    gateway: SandboxGateway, http: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(http, error_after_commit_rate=1.0)

    result = await gateway.create_refund(submission())

    assert isinstance(result, Accepted)
    assert list(sandbox_state(sandbox).refunds) == [result.refund.pse_refund_id]


async def test_a_timeout_after_commit_is_unanswered_yet_the_refund_is_found(
    make_gateway: GatewayFactory, http: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(http, timeout_after_commit_rate=1.0, hang_seconds=0.5)
    gateway = make_gateway(timeout_seconds=0.05)

    result = await gateway.create_refund(submission())
    found = await gateway.find_refund(submission())

    # First attempt timed out after the commit; the retries met the key in progress.
    assert isinstance(result, Unanswered)
    assert isinstance(found, Accepted)
    assert list(sandbox_state(sandbox).refunds) == [found.refund.pse_refund_id]


# --------------------------------------------------------------------------
# find_refund
# --------------------------------------------------------------------------


async def test_find_refund_reads_a_known_refund_by_its_pse_id(
    gateway: SandboxGateway, sandbox: FastAPI
) -> None:
    created = await gateway.create_refund(submission())
    assert isinstance(created, Accepted)
    await settle(sandbox)

    found = await gateway.find_refund(submission(pse_refund_id=created.refund.pse_refund_id))

    assert isinstance(found, Accepted)
    assert found.refund.pse_refund_id == created.refund.pse_refund_id
    assert found.refund.state is PseRefundState.SUCCEEDED


async def test_find_refund_falls_back_to_the_reference_when_the_id_is_unknown(
    gateway: SandboxGateway,
) -> None:
    created = await gateway.create_refund(submission())
    assert isinstance(created, Accepted)

    found = await gateway.find_refund(submission(pse_refund_id="sbre_unknown"))

    assert isinstance(found, Accepted)
    assert found.refund.pse_refund_id == created.refund.pse_refund_id


async def test_find_refund_proves_absence_when_nothing_has_the_reference(
    gateway: SandboxGateway,
) -> None:
    await gateway.create_refund(submission(reference="rf_other", idempotency_key="idem-other"))

    assert isinstance(await gateway.find_refund(submission()), NotFound)


async def test_find_refund_prefers_the_refund_that_moved_money_among_doubles(
    gateway: SandboxGateway, http: httpx.AsyncClient, sandbox: FastAPI
) -> None:
    await set_faults(http, failure_rate=1.0)
    await gateway.create_refund(submission(idempotency_key="idem-a"))
    await settle(sandbox)
    await set_faults(http)
    second = await gateway.create_refund(submission(idempotency_key="idem-b"))
    assert isinstance(second, Accepted)

    found = await gateway.find_refund(submission())

    assert isinstance(found, Accepted)
    assert found.refund.pse_refund_id == second.refund.pse_refund_id


@pytest.mark.parametrize(
    ("status", "body"),
    [(503, {}), (200, {"data": "nope"}), (200, {"data": [{"id": "x", "status": "weird"}]})],
    ids=["5xx", "data-not-a-list", "unknown-status"],
)
async def test_find_refund_is_unanswered_when_the_answer_is_not_usable(
    account: PseAccount, status: int, body: dict[str, Any]
) -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(status, json=body))
    async with httpx.AsyncClient(transport=transport) as client:
        result = await SandboxGateway(account, client).find_refund(submission())

    assert isinstance(result, Unanswered)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"id": "sbre_1", "status": "teleported", "amount": 1, "currency": "JPY"}),
        (400, {"error": {"code": "something_new", "message": "?"}}),
        (404, {"error": {"code": "not_found", "message": "?"}}),
        (418, "teapot"),
    ],
    ids=["unknown-status", "unknown-400-code", "404", "not-json"],
)
async def test_an_unrecognised_create_answer_is_unanswered(
    account: PseAccount, status: int, body: Any
) -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(status, json=body))
    async with httpx.AsyncClient(transport=transport) as client:
        result = await SandboxGateway(account, client).create_refund(submission())

    assert isinstance(result, Unanswered)


async def test_the_gateway_sends_the_key_the_auth_and_our_reference(account: PseAccount) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={"id": "sbre_1", "status": "pending", "amount": 1000, "currency": "JPY"},
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await SandboxGateway(account, client).create_refund(submission())

    [request] = seen
    assert str(request.url) == f"{BASE_URL}/v1/refunds"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["idempotency-key"] == "idem-rf_01"
    assert json.loads(request.content)["reference"] == "rf_01"


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------


async def test_settlement_webhooks_verify_and_translate(
    gateway: SandboxGateway, receiver: WebhookReceiver
) -> None:
    created = await gateway.create_refund(submission())
    assert isinstance(created, Accepted)

    first, second = await receiver.wait_for(2)
    pending, succeeded = parse(gateway, first), parse(gateway, second)

    assert pending.event_type == "refund.created"
    assert pending.refund.state is PseRefundState.PENDING
    assert succeeded.event_type == "refund.succeeded"
    assert succeeded.event_id == second.headers["webhook-id"]
    assert succeeded.refund.state is PseRefundState.SUCCEEDED
    assert succeeded.refund.pse_refund_id == created.refund.pse_refund_id
    assert succeeded.refund.reference == "rf_01"
    assert succeeded.refund.amount == Money(1000, "JPY")


async def test_a_failed_refund_webhook_carries_the_failure(
    gateway: SandboxGateway, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await set_faults(http, failure_rate=1.0)
    await gateway.create_refund(submission())

    _, final = await receiver.wait_for(2)
    event = parse(gateway, final)

    assert event.event_type == "refund.failed"
    assert event.refund.state is PseRefundState.FAILED
    assert event.refund.failure_code == "sandbox_declined"


async def test_a_duplicated_webhook_parses_to_the_same_event_id(
    gateway: SandboxGateway, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    await set_faults(http, webhook_duplicate_rate=1.0)
    await gateway.create_refund(submission())

    first, again, *_ = await receiver.wait_for(4)

    assert parse(gateway, first).event_id == parse(gateway, again).event_id


async def test_a_webhook_signed_with_the_second_secret_is_accepted_during_rotation(
    make_gateway: GatewayFactory, config: SandboxConfig, receiver: WebhookReceiver
) -> None:
    rotated = make_gateway(webhook_secrets=(new_webhook_secret(), config.webhook_secret))
    await rotated.create_refund(submission())

    [webhook, *_] = await receiver.wait_for(1)

    assert parse(rotated, webhook).event_type == "refund.created"


async def test_a_webhook_signed_with_another_secret_is_rejected(
    make_gateway: GatewayFactory, gateway: SandboxGateway, receiver: WebhookReceiver
) -> None:
    await gateway.create_refund(submission())
    [webhook, *_] = await receiver.wait_for(1)
    stranger = make_gateway(webhook_secrets=(new_webhook_secret(),))

    with pytest.raises(InvalidWebhookSignature):
        parse(stranger, webhook)


async def test_a_tampered_body_is_rejected(
    gateway: SandboxGateway, receiver: WebhookReceiver
) -> None:
    await gateway.create_refund(submission())
    [webhook, *_] = await receiver.wait_for(1)
    tampered = webhook.body.replace(b'"amount":1000', b'"amount":9000')
    assert tampered != webhook.body

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(webhook.headers, tampered, now())


@pytest.mark.parametrize("offset", [timedelta(seconds=-301), timedelta(seconds=301)])
def test_a_webhook_outside_the_tolerance_is_rejected(
    gateway: SandboxGateway, config: SandboxConfig, offset: timedelta
) -> None:
    body = json.dumps({"id": "evt_1", "type": "ping", "data": {}}).encode()
    headers = sign_webhook(config.webhook_secret, "evt_1", now() + offset, body)

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body, now())


def test_the_tolerance_is_measured_from_the_time_given_not_the_wall_clock(
    gateway: SandboxGateway, config: SandboxConfig
) -> None:
    fake_now = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    body = json.dumps({"id": "evt_1", "type": "ping", "data": {}}).encode()
    headers = sign_webhook(config.webhook_secret, "evt_1", fake_now, body)

    event = gateway.parse_webhook(headers, body, fake_now + timedelta(seconds=299))

    assert event.event_id == "evt_1"
    assert event.refund is None


@pytest.mark.parametrize(
    "damage",
    [
        {"webhook-signature": None},
        {"webhook-id": None},
        {"webhook-timestamp": None},
        {"webhook-timestamp": "yesterday"},
        {"webhook-timestamp": "9" * 40},
        {"webhook-timestamp": "9" * 5000},
        {"webhook-timestamp": "9" * 12},  # past year 9999
        {"webhook-timestamp": "١٧٩٥٧٦٦٤٠٠"},
        {"webhook-timestamp": "+1795766400"},
        {"webhook-signature": "garbage"},
        {"webhook-signature": "v1"},
        {"webhook-signature": "v1,!!!not-base64!!!"},
        {"webhook-signature": "v2,AAAA"},
        {"webhook-id": "evt_other"},
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()),
)
def test_malformed_or_mismatched_signature_headers_are_rejected(
    gateway: SandboxGateway, config: SandboxConfig, damage: dict[str, str | None]
) -> None:
    body = json.dumps({"id": "evt_1", "type": "ping", "data": {}}).encode()
    headers: dict[str, str | None] = {**sign_webhook(config.webhook_secret, "evt_1", now(), body)}
    headers.update(damage)
    present = {k: v for k, v in headers.items() if v is not None}

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(present, body, now())


def test_an_account_with_a_broken_secret_still_tries_the_next_one(
    make_gateway: GatewayFactory, config: SandboxConfig
) -> None:
    gateway = make_gateway(webhook_secrets=("whsec_", config.webhook_secret))
    body = json.dumps({"id": "evt_1", "type": "ping", "data": {}}).encode()
    headers = sign_webhook(config.webhook_secret, "evt_1", now(), body)

    assert gateway.parse_webhook(headers, body, now()).event_id == "evt_1"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"type": "refund.succeeded", "data": {}}).encode(),
        json.dumps({"id": "evt_1", "type": "refund.succeeded", "data": {"id": "x"}}).encode(),
        json.dumps({"id": "evt_2", "type": "refund.succeeded", "data": {}}).encode(),
    ],
    ids=["not-json", "not-object", "no-id", "refund-unreadable", "id-differs-from-header"],
)
def test_a_signed_body_that_is_not_a_readable_event_is_an_invalid_payload(
    gateway: SandboxGateway, config: SandboxConfig, payload: bytes
) -> None:
    headers = sign_webhook(config.webhook_secret, "evt_1", now(), payload)

    with pytest.raises(InvalidWebhookPayload):
        gateway.parse_webhook(headers, payload, now())
