"""StripeGateway against Stripe-shaped answers (respx) and SDK-signed webhooks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
import stripe

from app.adapters.pse.base import PseAccount
from app.adapters.pse.stripe import STRIPE_API_VERSION, StripeGateway
from app.domain.money import Money
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    NotFound,
    PseRefund,
    PseRefundState,
    RefundSubmission,
    Unanswered,
)

# Loopback only: respx answers every call, nothing may leave the machine.
BASE_URL = "http://127.0.0.1:9"
API_KEY = "sk_test_51RefundsServiceKeyForTestsOnly00000000"
WEBHOOK_SECRET = "whsec_current0RefundsServiceTestSecret000000"
OLD_WEBHOOK_SECRET = "whsec_previous0RefundsServiceTestSecret00000"
REFERENCE = "rf_01JD4M7Q2X8V5N6B3C9K0T1W2Y"
IDEMPOTENCY_KEY = "refund-rf_01JD4M7Q2X8V5N6B3C9K0T1W2Y"
PAYMENT_INTENT = "pi_3QJx2aLkdIwHu7ix0c4Gv1Rm"
CHARGE = "ch_3QJx2aLkdIwHu7ix0f2Ye8Pd"
REFUND_ID = "re_3QJx2aLkdIwHu7ix0kN8s5Ut"
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
MAX_ATTEMPTS = 4


def make_account(**overrides: Any) -> PseAccount:
    settings: dict[str, Any] = {
        "name": "stripe_us",
        "provider": "stripe",
        "api_key": API_KEY,
        "base_url": BASE_URL,
        "webhook_secrets": (WEBHOOK_SECRET, OLD_WEBHOOK_SECRET),
        "max_attempts": MAX_ATTEMPTS,
        "backoff_initial_seconds": 0.001,
        "backoff_max_seconds": 0.002,
        "timeout_seconds": 1.0,
    }
    settings.update(overrides)
    return PseAccount(**settings)


def make_submission(**overrides: Any) -> RefundSubmission:
    fields: dict[str, Any] = {
        "reference": REFERENCE,
        "idempotency_key": IDEMPOTENCY_KEY,
        "pse_payment_id": PAYMENT_INTENT,
        "amount": Money(3000, "USD"),
        "reason": "requested_by_customer",
        "metadata": {"rma": "R-77"},
    }
    fields.update(overrides)
    return RefundSubmission(**fields)


def stripe_refund(**overrides: Any) -> dict[str, Any]:
    """Shaped like Stripe's Refund object (API reference, "The Refund object")."""
    refund: dict[str, Any] = {
        "id": REFUND_ID,
        "object": "refund",
        "amount": 3000,
        "balance_transaction": "txn_3QJx2aLkdIwHu7ix0xG5nR2e",
        "charge": CHARGE,
        "created": 1795766400,
        "currency": "usd",
        "destination_details": {
            "card": {
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "metadata": {
            "refund_id": REFERENCE,
            "reason": "requested_by_customer",
            "rma": "R-77",
        },
        "payment_intent": PAYMENT_INTENT,
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "pending",
        "transfer_reversal": None,
    }
    refund.update(overrides)
    return refund


def stripe_list(refunds: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": refunds, "has_more": has_more, "url": "/v1/refunds"}


def stripe_error(
    status: int,
    code: str | None,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
) -> httpx.Response:
    """Shaped like Stripe's error object: `{"error": {...}}`."""
    error: dict[str, Any] = {"message": message, "type": error_type}
    if code is not None:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        error["param"] = param
    error["request_log_url"] = "https://dashboard.stripe.com/test/logs/req_Q9xTv2Lm4WkE1p"
    return httpx.Response(status, json={"error": error})


def stripe_event(event_type: str, obj: dict[str, Any], event_id: str = "evt_3QJx2a") -> str:
    """Shaped like a Stripe Event as delivered to a webhook endpoint."""
    event = {
        "id": event_id,
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": int(NOW.timestamp()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": "req_Q9xTv2Lm4WkE1p", "idempotency_key": IDEMPOTENCY_KEY},
        "type": event_type,
    }
    return json.dumps(event)


def signed(payload: str, secret: str = WEBHOOK_SECRET, at: datetime = NOW) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=int(at.timestamp())
    )
    return {"stripe-signature": header}


def form_of(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> StripeGateway:
    return StripeGateway(make_account(), http)


# --------------------------------------------------------------------------
# create_refund
# --------------------------------------------------------------------------


async def test_a_pending_refund_is_accepted_and_sent_as_stripe_expects(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v1/refunds").respond(200, json=stripe_refund(status="pending"))

    result = await gateway.create_refund(make_submission())

    assert result == Accepted(
        PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.PENDING,
            amount=Money(3000, "USD"),
            reference=REFERENCE,
            pse_payment_ids=(PAYMENT_INTENT, CHARGE),
        )
    )
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == "/v1/refunds"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["idempotency-key"] == IDEMPOTENCY_KEY
    assert request.headers["stripe-version"] == STRIPE_API_VERSION
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form_of(request) == {
        "payment_intent": PAYMENT_INTENT,
        "amount": "3000",
        "reason": "requested_by_customer",
        "metadata[refund_id]": REFERENCE,
        "metadata[reason]": "requested_by_customer",
        "metadata[rma]": "R-77",
    }


async def test_a_succeeded_refund_is_accepted_as_succeeded(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    router.post("/v1/refunds").respond(200, json=stripe_refund(status="succeeded"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.SUCCEEDED
    assert result.refund.failure_code is None


@pytest.mark.parametrize(
    ("status", "failure_reason", "state", "failure_code"),
    [
        ("requires_action", None, PseRefundState.PENDING, None),
        ("failed", "expired_or_canceled_card", PseRefundState.FAILED, "expired_or_canceled_card"),
        ("failed", None, PseRefundState.FAILED, "unknown"),
        ("canceled", None, PseRefundState.FAILED, "canceled"),
    ],
)
async def test_every_stripe_refund_status_maps_to_a_domain_state(
    gateway: StripeGateway,
    router: respx.MockRouter,
    status: str,
    failure_reason: str | None,
    state: PseRefundState,
    failure_code: str | None,
) -> None:
    body = stripe_refund(status=status, failure_reason=failure_reason)
    router.post("/v1/refunds").respond(200, json=body)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is state
    assert result.refund.failure_code == failure_code


@pytest.mark.parametrize("payment_id", [CHARGE, "py_3QJx2aLkdIwHu7ix0aQm7Zc1"])
async def test_a_charge_or_payment_id_is_refunded_by_charge(
    gateway: StripeGateway, router: respx.MockRouter, payment_id: str
) -> None:
    route = router.post("/v1/refunds").respond(200, json=stripe_refund())

    await gateway.create_refund(make_submission(pse_payment_id=payment_id))

    form = form_of(route.calls.last.request)
    assert form["charge"] == payment_id
    assert "payment_intent" not in form


async def test_a_reason_stripe_does_not_know_travels_only_in_metadata(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v1/refunds").respond(200, json=stripe_refund())

    await gateway.create_refund(make_submission(reason="product_not_received"))

    form = form_of(route.calls.last.request)
    assert "reason" not in form
    assert form["metadata[reason]"] == "product_not_received"


async def test_metadata_is_fitted_to_stripe_limits_without_losing_the_reference(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v1/refunds").respond(200, json=stripe_refund())
    metadata = {
        "refund_id": "spoofed",
        "k" * 41: "key too long",
        "odd[key]": "brackets",
        "empty": "",
        "note": "x" * 600,
        **{f"extra_{n:02d}": str(n) for n in range(60)},
    }

    await gateway.create_refund(make_submission(metadata=metadata))

    form = form_of(route.calls.last.request)
    sent = {key: value for key, value in form.items() if key.startswith("metadata[")}
    assert len(sent) == 50
    assert sent["metadata[refund_id]"] == REFERENCE
    assert sent["metadata[note]"] == "x" * 500
    assert f"metadata[{'k' * 41}]" not in sent
    assert "metadata[odd[key]]" not in sent
    assert "metadata[empty]" not in sent


@pytest.mark.parametrize(
    ("amount", "stripe_amount"),
    [
        (Money(1500, "JPY"), 1500),
        (Money(3000, "USD"), 3000),
        (Money(5, "ISK"), 500),
        (Money(5000, "UGX"), 500000),
        (Money(1500, "MGA"), 15),
        (Money(5120, "KWD"), 5120),
        (Money(1234, "HUF"), 1234),
        (Money(1234, "TWD"), 1234),
    ],
)
async def test_amounts_travel_in_stripe_units_and_come_back_in_iso_units(
    gateway: StripeGateway, router: respx.MockRouter, amount: Money, stripe_amount: int
) -> None:
    body = stripe_refund(amount=stripe_amount, currency=amount.currency.lower())
    route = router.post("/v1/refunds").respond(200, json=body)

    result = await gateway.create_refund(make_submission(amount=amount))

    assert form_of(route.calls.last.request)["amount"] == str(stripe_amount)
    assert isinstance(result, Accepted)
    assert result.refund.amount == amount


@pytest.mark.parametrize(
    "amount",
    [Money(1550, "MGA"), Money(5124, "KWD"), Money(1000, "IQD"), Money(10000, "CLF")],
)
async def test_an_amount_stripe_cannot_express_is_refused_without_calling_stripe(
    gateway: StripeGateway, router: respx.MockRouter, amount: Money
) -> None:
    route = router.post("/v1/refunds").respond(200, json=stripe_refund())

    result = await gateway.create_refund(make_submission(amount=amount))

    assert isinstance(result, Declined)
    assert result.code == "amount_not_supported"
    assert not result.retriable
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("response", "code", "offline", "retriable"),
    [
        (
            stripe_error(
                400, "charge_already_refunded", f"Charge {CHARGE} has already been refunded."
            ),
            "already_refunded",
            False,
            False,
        ),
        (
            stripe_error(
                400,
                "amount_too_large",
                "Refund amount ($30.00) is greater than unrefunded amount on charge ($20.00)",
                param="amount",
            ),
            "amount_exceeds_refundable",
            False,
            False,
        ),
        (
            stripe_error(400, "charge_disputed", f"Charge {CHARGE} has been charged back."),
            "payment_disputed",
            False,
            False,
        ),
        (
            stripe_error(400, "refund_disputed_payment", "This payment is disputed."),
            "payment_disputed",
            False,
            False,
        ),
        (
            stripe_error(
                400,
                "balance_insufficient",
                "Your available balance is insufficient to cover this refund.",
            ),
            "insufficient_balance",
            False,
            True,
        ),
        (
            stripe_error(400, "charge_not_refundable", "This charge cannot be refunded."),
            "not_refundable",
            False,
            False,
        ),
        (
            stripe_error(
                400,
                "charge_not_refundable",
                "This payment is too old to be refunded. It has passed its 90-day refund window.",
            ),
            "not_refundable",
            True,
            False,
        ),
        (
            stripe_error(
                402,
                "expired_or_canceled_card",
                "The card can no longer receive refunds.",
                error_type="card_error",
            ),
            "payment_method_unavailable",
            True,
            False,
        ),
        (
            stripe_error(
                400,
                "resource_missing",
                f"No such payment_intent: '{PAYMENT_INTENT}'",
                param="payment_intent",
            ),
            "payment_not_found",
            False,
            False,
        ),
    ],
)
async def test_a_definitive_stripe_error_is_declined_with_a_stable_code_and_not_retried(
    gateway: StripeGateway,
    router: respx.MockRouter,
    response: httpx.Response,
    code: str,
    offline: bool,
    retriable: bool,
) -> None:
    route = router.post("/v1/refunds").mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert (result.code, result.offline, result.retriable) == (code, offline, retriable)
    assert result.message == response.json()["error"]["message"]
    assert route.call_count == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_api_key_is_declined_without_echoing_the_key(
    gateway: StripeGateway, router: respx.MockRouter, status: int
) -> None:
    router.post("/v1/refunds").mock(
        return_value=stripe_error(
            status,
            None,
            f"Invalid API Key provided: {API_KEY}; masked as sk_test_****0000",
        )
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert result.code == "pse_authentication_failed"
    assert API_KEY not in result.message
    assert "sk_test_" not in result.message


@pytest.mark.parametrize(
    "response",
    [
        stripe_error(
            400,
            "idempotency_key_in_use",
            "There is currently another in-progress request using this Stripe token.",
        ),
        stripe_error(
            409,
            "idempotency_key_in_use",
            "There is currently another in-progress request using this Stripe token.",
        ),
        stripe_error(
            400,
            None,
            "Keys for idempotent requests can only be used with the same parameters "
            "they were first used with.",
            error_type="idempotency_error",
        ),
        httpx.Response(409, text="conflict"),
    ],
)
async def test_an_idempotency_conflict_leaves_the_outcome_unanswered(
    gateway: StripeGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    route = router.post("/v1/refunds").mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 1


@pytest.mark.parametrize(
    "response",
    [
        stripe_error(400, "parameter_unknown", "Received unknown parameter: foo", param="foo"),
        httpx.Response(404, text="<html>not here</html>"),
        httpx.Response(200, text="<html>proxy login</html>"),
        httpx.Response(200, json={"id": "pi_x", "object": "payment_intent"}),
        httpx.Response(200, json=stripe_refund(status="on_hold")),
    ],
)
async def test_an_answer_the_gateway_does_not_recognise_leaves_the_outcome_unanswered(
    gateway: StripeGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    router.post("/v1/refunds").mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)


async def test_a_client_error_is_never_retried(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v1/refunds").mock(
        return_value=stripe_error(400, "parameter_invalid_integer", "Invalid integer: abc")
    )

    await gateway.create_refund(make_submission())

    assert route.call_count == 1


async def test_a_server_error_is_retried_with_the_same_idempotency_key(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v1/refunds").mock(
        side_effect=[
            stripe_error(500, None, "An unknown error occurred", error_type="api_error"),
            httpx.Response(200, json=stripe_refund(status="succeeded")),
        ]
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.SUCCEEDED
    assert route.call_count == 2
    keys = [call.request.headers["idempotency-key"] for call in route.calls]
    assert keys == [IDEMPOTENCY_KEY, IDEMPOTENCY_KEY]
    assert form_of(route.calls[0].request) == form_of(route.calls[1].request)


async def test_a_timeout_on_every_attempt_leaves_the_outcome_unanswered(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v1/refunds").mock(side_effect=httpx.ReadTimeout("read timed out"))

    result = await gateway.create_refund(make_submission())

    assert result == Unanswered(f"timeout after {MAX_ATTEMPTS} attempts")
    assert route.call_count == MAX_ATTEMPTS


# --------------------------------------------------------------------------
# find_refund
# --------------------------------------------------------------------------


async def test_a_known_stripe_refund_id_is_looked_up_directly(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    by_id = router.get(f"/v1/refunds/{REFUND_ID}").respond(
        200, json=stripe_refund(status="succeeded")
    )
    listing = router.get("/v1/refunds").respond(200, json=stripe_list([], has_more=False))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.state is PseRefundState.SUCCEEDED
    assert by_id.calls.last.request.headers["authorization"] == f"Bearer {API_KEY}"
    assert listing.call_count == 0


async def test_an_unknown_stripe_refund_id_falls_back_to_the_payment_refund_list(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    router.get("/v1/refunds/re_missing").mock(
        return_value=stripe_error(
            404, "resource_missing", "No such refund: 're_missing'", param="id"
        )
    )
    listing = router.get("/v1/refunds").respond(
        200, json=stripe_list([stripe_refund()], has_more=False)
    )

    result = await gateway.find_refund(make_submission(pse_refund_id="re_missing"))

    assert isinstance(result, Accepted)
    assert result.refund.reference == REFERENCE
    assert listing.call_count == 1


async def test_a_refund_found_by_id_under_another_reference_is_not_taken_as_ours(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    other = stripe_refund(metadata={"refund_id": "rf_someone_else"})
    router.get(f"/v1/refunds/{REFUND_ID}").respond(200, json=other)

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)


async def test_our_refund_is_found_by_reference_on_the_second_page(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    first_page = [
        stripe_refund(id="re_other_2", metadata={"refund_id": "rf_other_2"}),
        stripe_refund(id="re_dashboard", metadata={}),
    ]
    second_page = [stripe_refund(status="succeeded")]
    route = router.get("/v1/refunds").mock(
        side_effect=[
            httpx.Response(200, json=stripe_list(first_page, has_more=True)),
            httpx.Response(200, json=stripe_list(second_page, has_more=False)),
        ]
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.state is PseRefundState.SUCCEEDED
    first, second = (call.request for call in route.calls)
    assert first.method == "GET"
    assert dict(first.url.params) == {"payment_intent": PAYMENT_INTENT, "limit": "100"}
    assert dict(second.url.params) == {
        "payment_intent": PAYMENT_INTENT,
        "limit": "100",
        "starting_after": "re_dashboard",
    }
    assert "idempotency-key" not in first.headers


async def test_an_older_refund_that_paid_wins_over_a_newer_failed_one_on_a_later_page(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    newer_failed = stripe_refund(id="re_newer_failed", status="failed", failure_reason="declined")
    older_paid = stripe_refund(id="re_older_paid", status="succeeded")
    router.get("/v1/refunds").mock(
        side_effect=[
            httpx.Response(200, json=stripe_list([newer_failed], has_more=True)),
            httpx.Response(200, json=stripe_list([older_paid], has_more=False)),
        ]
    )

    result = await gateway.find_refund(make_submission())

    assert result == Accepted(
        PseRefund(
            pse_refund_id="re_older_paid",
            state=PseRefundState.SUCCEEDED,
            amount=Money(3000, "USD"),
            reference=REFERENCE,
            pse_payment_ids=(PAYMENT_INTENT, CHARGE),
        )
    )


async def test_a_charge_is_searched_by_charge_id(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    route = router.get("/v1/refunds").respond(200, json=stripe_list([], has_more=False))

    await gateway.find_refund(make_submission(pse_payment_id=CHARGE))

    assert dict(route.calls.last.request.url.params) == {"charge": CHARGE, "limit": "100"}


async def test_no_refund_with_our_reference_is_reported_as_not_found(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    others = [stripe_refund(id="re_other", metadata={"refund_id": "rf_other"})]
    router.get("/v1/refunds").respond(200, json=stripe_list(others, has_more=False))

    result = await gateway.find_refund(make_submission())

    assert result == NotFound()


async def test_a_refund_list_longer_than_the_page_cap_leaves_the_outcome_unanswered(
    gateway: StripeGateway, router: respx.MockRouter
) -> None:
    page = stripe_list([stripe_refund(id="re_other", metadata={})], has_more=True)
    route = router.get("/v1/refunds").respond(200, json=page)

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 20


@pytest.mark.parametrize(
    "answer",
    [
        {"side_effect": httpx.ConnectTimeout("connect timed out")},
        {
            "return_value": stripe_error(
                500, None, "An unknown error occurred", error_type="api_error"
            )
        },
        {"return_value": stripe_error(401, None, "Invalid API Key provided: sk_test_****0000")},
        {"return_value": httpx.Response(200, json={"object": "list", "data": []})},
    ],
)
async def test_a_look_up_without_a_clear_answer_leaves_the_outcome_unanswered(
    gateway: StripeGateway, router: respx.MockRouter, answer: dict[str, Any]
) -> None:
    router.get("/v1/refunds").mock(**answer)

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)


# --------------------------------------------------------------------------
# parse_webhook
# --------------------------------------------------------------------------


async def test_a_webhook_signed_by_the_stripe_sdk_is_accepted_and_translated(
    gateway: StripeGateway,
) -> None:
    payload = stripe_event("refund.updated", stripe_refund(status="succeeded"), "evt_1")

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert event.event_id == "evt_1"
    assert event.event_type == "refund.updated"
    assert event.refund == PseRefund(
        pse_refund_id=REFUND_ID,
        state=PseRefundState.SUCCEEDED,
        amount=Money(3000, "USD"),
        reference=REFERENCE,
        pse_payment_ids=(PAYMENT_INTENT, CHARGE),
    )


async def test_a_webhook_signed_with_the_previous_secret_is_accepted_during_rotation(
    gateway: StripeGateway,
) -> None:
    payload = stripe_event("refund.created", stripe_refund())

    event = gateway.parse_webhook(signed(payload, OLD_WEBHOOK_SECRET), payload.encode(), NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.PENDING


async def test_any_of_several_v1_signatures_may_match(gateway: StripeGateway) -> None:
    payload = stripe_event("refund.created", stripe_refund())
    good = signed(payload)["stripe-signature"]
    timestamp, signature = good.split(",")
    header = f"{timestamp},v1={'0' * 64},{signature},v0={'f' * 64}"

    event = gateway.parse_webhook({"stripe-signature": header}, payload.encode(), NOW)

    assert event.refund is not None


async def test_a_timestamp_exactly_at_the_tolerance_is_accepted(gateway: StripeGateway) -> None:
    payload = stripe_event("refund.created", stripe_refund())
    headers = signed(payload, at=NOW - timedelta(seconds=300))

    event = gateway.parse_webhook(headers, payload.encode(), NOW)

    assert event.event_type == "refund.created"


_PAYLOAD = stripe_event("refund.updated", stripe_refund(status="succeeded"))


def _resigned(timestamp: str) -> dict[str, str]:
    """_PAYLOAD correctly signed by Stripe's SDK, over a timestamp written as `timestamp`."""
    header = stripe.WebhookSignature.generate_signature_header(
        _PAYLOAD, WEBHOOK_SECRET, timestamp=timestamp
    )
    return {"stripe-signature": header}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(signed(_PAYLOAD, "whsec_someoneElse0000000000"), _PAYLOAD, id="wrong-secret"),
        pytest.param(signed(_PAYLOAD), _PAYLOAD.replace("succeeded", "failed"), id="tampered"),
        pytest.param({}, _PAYLOAD, id="missing-header"),
        pytest.param({"stripe-signature": ""}, _PAYLOAD, id="empty-header"),
        pytest.param({"stripe-signature": "garbage"}, _PAYLOAD, id="malformed"),
        pytest.param({"stripe-signature": f"v1={'a' * 64}"}, _PAYLOAD, id="no-timestamp"),
        pytest.param({"stripe-signature": "t=1795766400"}, _PAYLOAD, id="no-signature"),
        pytest.param(
            {"stripe-signature": f"t=soon,v1={'a' * 64}"}, _PAYLOAD, id="non-numeric-timestamp"
        ),
        # Past what `int` reads (4,300 digits), and past what a float holds.
        pytest.param(
            {"stripe-signature": f"t={'9' * 5000},v1={'a' * 64}"}, _PAYLOAD, id="5000-digits"
        ),
        pytest.param(_resigned(f"{'9' * 400}"), _PAYLOAD, id="400-digits-signed"),
        pytest.param(_resigned("+1795766400"), _PAYLOAD, id="signed-timestamp-with-a-sign"),
        pytest.param(
            signed(_PAYLOAD, at=NOW - timedelta(seconds=301)), _PAYLOAD, id="301-seconds-old"
        ),
        pytest.param(
            signed(_PAYLOAD, at=NOW + timedelta(seconds=301)), _PAYLOAD, id="301-seconds-ahead"
        ),
    ],
)
async def test_a_webhook_without_a_valid_fresh_signature_is_rejected(
    gateway: StripeGateway, headers: dict[str, str], body: str
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body.encode(), NOW)


async def test_a_webhook_signed_with_an_empty_key_is_rejected_when_the_secret_is_empty(
    http: httpx.AsyncClient,
) -> None:
    # An HMAC keyed with nothing is one anyone can compute.
    gateway = StripeGateway(make_account(webhook_secrets=("",)), http)

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(signed(_PAYLOAD, ""), _PAYLOAD.encode(), NOW)


async def test_a_webhook_is_rejected_when_no_secret_is_configured(
    http: httpx.AsyncClient,
) -> None:
    gateway = StripeGateway(make_account(webhook_secrets=()), http)

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(signed(_PAYLOAD), _PAYLOAD.encode(), NOW)


@pytest.mark.parametrize(
    "payload",
    [
        "not json at all",
        json.dumps([1, 2, 3]),
        json.dumps(stripe_refund()),
        stripe_event("refund.updated", {"id": "ch_x", "object": "charge"}),
    ],
)
async def test_a_correctly_signed_body_that_is_not_a_readable_event_is_rejected(
    gateway: StripeGateway, payload: str
) -> None:
    with pytest.raises(InvalidWebhookPayload):
        gateway.parse_webhook(signed(payload), payload.encode(), NOW)


async def test_a_failed_refund_event_carries_stripe_failure_reason(
    gateway: StripeGateway,
) -> None:
    refund = stripe_refund(status="failed", failure_reason="lost_or_stolen_card")
    payload = stripe_event("refund.failed", refund)

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.FAILED
    assert event.refund.failure_code == "lost_or_stolen_card"


@pytest.mark.parametrize(
    ("status", "failure_reason", "state"),
    [
        pytest.param("succeeded", None, PseRefundState.SUCCEEDED, id="settled"),
        pytest.param(
            "failed", "expired_or_canceled_card", PseRefundState.FAILED, id="failed-after-success"
        ),
    ],
)
async def test_a_card_refund_change_on_an_older_api_version_comes_as_charge_refund_updated(
    gateway: StripeGateway, status: str, failure_reason: str | None, state: PseRefundState
) -> None:
    # Before 2024-10-28 Stripe sends no `refund.*` event for a card refund.
    refund = stripe_refund(status=status, failure_reason=failure_reason)
    payload = stripe_event("charge.refund.updated", refund, "evt_card_refund")

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert event.event_type == "charge.refund.updated"
    assert event.refund is not None
    assert event.refund.pse_refund_id == REFUND_ID
    assert event.refund.reference == REFERENCE
    assert event.refund.state is state
    assert event.refund.failure_code == failure_reason


@pytest.mark.parametrize(
    "event_type", ["charge.refund.updated", "refund.created", "refund.updated", "refund.failed"]
)
async def test_every_event_carrying_a_refund_object_must_carry_a_readable_one(
    gateway: StripeGateway, event_type: str
) -> None:
    readable = stripe_event(event_type, stripe_refund(status="pending"))
    unreadable = stripe_event(event_type, {"id": CHARGE, "object": "charge"})

    assert gateway.parse_webhook(signed(readable), readable.encode(), NOW).refund is not None
    with pytest.raises(InvalidWebhookPayload):
        gateway.parse_webhook(signed(unreadable), unreadable.encode(), NOW)


async def test_a_charge_refunded_event_yields_the_most_recent_embedded_refund(
    gateway: StripeGateway,
) -> None:
    older = stripe_refund(id="re_older", created=1795700000, status="succeeded")
    newest = stripe_refund(id="re_newest", created=1795766400, status="pending")
    charge = {
        "id": CHARGE,
        "object": "charge",
        "amount": 5000,
        "amount_refunded": 5000,
        "currency": "usd",
        "payment_intent": PAYMENT_INTENT,
        "refunded": True,
        "refunds": {
            "object": "list",
            "data": [older, newest],
            "has_more": False,
            "url": f"/v1/charges/{CHARGE}/refunds",
        },
    }
    payload = stripe_event("charge.refunded", charge)

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert event.event_type == "charge.refunded"
    assert event.refund is not None
    assert event.refund.pse_refund_id == "re_newest"


async def test_a_charge_refunded_event_without_embedded_refunds_has_no_refund(
    gateway: StripeGateway,
) -> None:
    charge = {"id": CHARGE, "object": "charge", "amount_refunded": 5000, "refunded": True}
    payload = stripe_event("charge.refunded", charge, "evt_charge")

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert (event.event_id, event.event_type, event.refund) == (
        "evt_charge",
        "charge.refunded",
        None,
    )


async def test_an_unrelated_event_is_acknowledged_without_a_refund(
    gateway: StripeGateway,
) -> None:
    intent = {"id": PAYMENT_INTENT, "object": "payment_intent", "status": "succeeded"}
    payload = stripe_event("payment_intent.succeeded", intent, "evt_pi")

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert (event.event_id, event.event_type, event.refund) == (
        "evt_pi",
        "payment_intent.succeeded",
        None,
    )
