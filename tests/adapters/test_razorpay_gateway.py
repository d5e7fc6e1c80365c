"""RazorpayGateway against Razorpay-shaped answers (respx) and webhooks signed the
way Razorpay signs them, checked against the official `razorpay` SDK."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import razorpay
import respx
from razorpay.errors import SignatureVerificationError

from app.adapters.pse.base import PseAccount
from app.adapters.pse.razorpay import (
    FAILURE_CODE,
    IN_FLIGHT,
    MAY_HOLD_IT,
    RazorpayGateway,
    derived_event_id,
)
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
KEY_ID = "rzp_test_Rf7sQm2Lx9Vb0K"
KEY_SECRET = "kS3cr3tRefundsServiceTestOnly0"
WEBHOOK_SECRET = "whk_current_RefundsServiceTestSecret"
OLD_WEBHOOK_SECRET = "whk_previous_RefundsServiceTestSecret"
REFERENCE = "rf_0193c1d2e3f4a5b6c7d8e9f0a1b"
IDEMPOTENCY_KEY = f"rfnd-{REFERENCE}"
PAYMENT_ID = "pay_Nq3vKx8aB2cD4e"
REFUND_ID = "rfnd_Nq4wLy9bC3dE5f"
ACCOUNT_ID = "acc_Nq1tJw7zA1bC3d"
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
MAX_ATTEMPTS = 4
CREATE_PATH = f"/v1/payments/{PAYMENT_ID}/refund"
LIST_PATH = f"/v1/payments/{PAYMENT_ID}/refunds"
BASIC_AUTH = "Basic " + base64.b64encode(f"{KEY_ID}:{KEY_SECRET}".encode()).decode()


def make_account(**overrides: Any) -> PseAccount:
    settings: dict[str, Any] = {
        "name": "razorpay_in",
        "provider": "razorpay",
        "api_key": KEY_SECRET,
        "base_url": BASE_URL,
        "webhook_secrets": (WEBHOOK_SECRET, OLD_WEBHOOK_SECRET),
        "max_attempts": MAX_ATTEMPTS,
        "backoff_initial_seconds": 0.001,
        "backoff_max_seconds": 0.002,
        "timeout_seconds": 1.0,
        "options": {"key_id": KEY_ID},
    }
    settings.update(overrides)
    return PseAccount(**settings)


def make_submission(**overrides: Any) -> RefundSubmission:
    fields: dict[str, Any] = {
        "reference": REFERENCE,
        "idempotency_key": IDEMPOTENCY_KEY,
        "pse_payment_id": PAYMENT_ID,
        "amount": Money(50000, "INR"),
        "reason": "requested_by_customer",
        "metadata": {"rma": "R-77"},
    }
    fields.update(overrides)
    return RefundSubmission(**fields)


def razorpay_refund(**overrides: Any) -> dict[str, Any]:
    """Shaped like Razorpay's refund entity (API reference, "Refunds")."""
    refund: dict[str, Any] = {
        "id": REFUND_ID,
        "entity": "refund",
        "amount": 50000,
        "currency": "INR",
        "payment_id": PAYMENT_ID,
        "notes": {"refund_id": REFERENCE, "reason": "requested_by_customer", "rma": "R-77"},
        "receipt": REFERENCE,
        "acquirer_data": {"arn": None},
        "created_at": 1795766400,
        "batch_id": None,
        "status": "pending",
        "speed_processed": "normal",
        "speed_requested": "normal",
    }
    refund.update(overrides)
    return refund


def razorpay_collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Shaped like Razorpay's list answer: `{"entity": "collection", "count", "items"}`."""
    return {"entity": "collection", "count": len(items), "items": items}


def razorpay_error(
    status: int,
    description: str,
    *,
    code: str = "BAD_REQUEST_ERROR",
    field: str | None = None,
    source: str = "business",
    step: str = "payment_initiation",
    reason: str = "input_validation_failed",
) -> httpx.Response:
    """Shaped like Razorpay's error envelope: `{"error": {...}}`."""
    error: dict[str, Any] = {
        "code": code,
        "description": description,
        "source": source,
        "step": step,
        "reason": reason,
        "metadata": {},
    }
    if field is not None:
        error["field"] = field
    return httpx.Response(status, json={"error": error})


def razorpay_payment(**overrides: Any) -> dict[str, Any]:
    payment: dict[str, Any] = {
        "id": PAYMENT_ID,
        "entity": "payment",
        "amount": 200000,
        "currency": "INR",
        "status": "captured",
        "order_id": "order_Nq2uKx6aZ0bB2c",
        "method": "upi",
        "amount_refunded": 50000,
        "refund_status": "partial",
        "captured": True,
        "notes": [],
        "created_at": 1795680000,
    }
    payment.update(overrides)
    return payment


def razorpay_event(event_type: str, refund: dict[str, Any] | None = None) -> bytes:
    """Shaped like a Razorpay webhook delivery (Webhooks, "Refunds" sample payloads)."""
    event: dict[str, Any] = {
        "entity": "event",
        "account_id": ACCOUNT_ID,
        "event": event_type,
        "contains": ["refund", "payment"] if refund is not None else ["payment"],
        "payload": {"payment": {"entity": razorpay_payment()}},
        "created_at": int(NOW.timestamp()),
    }
    if refund is not None:
        event["payload"]["refund"] = {"entity": refund}
    return json.dumps(event, indent=2, ensure_ascii=False).encode("utf-8")


def sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    """Razorpay's X-Razorpay-Signature, written here from its documentation: hex
    HMAC-SHA256 of the raw body keyed with the webhook secret."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def delivery(
    body: bytes, secret: str = WEBHOOK_SECRET, event_id: str | None = "evt_Nq5xMz0cD4eF6g"
) -> dict[str, str]:
    headers = {"x-razorpay-signature": sign(body, secret), "content-type": "application/json"}
    if event_id is not None:
        headers["x-razorpay-event-id"] = event_id
    return headers


def json_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> RazorpayGateway:
    return RazorpayGateway(make_account(), http)


# --------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------


async def test_an_account_without_a_key_id_is_refused_when_the_gateway_is_built(
    http: httpx.AsyncClient,
) -> None:
    with pytest.raises(ValueError, match=r"options\.key_id"):
        RazorpayGateway(make_account(options={}), http)


# --------------------------------------------------------------------------
# create_refund
# --------------------------------------------------------------------------


async def test_a_pending_refund_is_accepted_and_sent_as_razorpay_documents_it(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    route = router.post(CREATE_PATH).respond(200, json=razorpay_refund(status="pending"))

    result = await gateway.create_refund(make_submission())

    assert result == Accepted(
        PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.PENDING,
            amount=Money(50000, "INR"),
            reference=REFERENCE,
            pse_payment_ids=(PAYMENT_ID,),
        )
    )
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == f"/v1/payments/{PAYMENT_ID}/refund"
    assert request.headers["authorization"] == BASIC_AUTH
    assert request.headers["x-refund-idempotency"] == IDEMPOTENCY_KEY
    assert request.headers["content-type"] == "application/json"
    assert json_of(request) == {
        "amount": 50000,
        "speed": "normal",
        "receipt": REFERENCE,
        "notes": {"refund_id": REFERENCE, "reason": "requested_by_customer", "rma": "R-77"},
    }


async def test_the_basic_credentials_are_the_key_id_and_the_key_secret(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    route = router.post(CREATE_PATH).respond(200, json=razorpay_refund())

    await gateway.create_refund(make_submission())

    scheme, _, encoded = route.calls.last.request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"{KEY_ID}:{KEY_SECRET}"


async def test_a_processed_refund_is_accepted_as_succeeded(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    router.post(CREATE_PATH).respond(200, json=razorpay_refund(status="processed"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.SUCCEEDED
    assert result.refund.failure_code is None


async def test_a_failed_refund_is_accepted_as_failed_with_a_stable_failure_code(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    router.post(CREATE_PATH).respond(200, json=razorpay_refund(status="failed"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.FAILED
    assert result.refund.failure_code == FAILURE_CODE == "refund_failed"
    assert result.refund.failure_message


@pytest.mark.parametrize(
    ("amount", "razorpay_amount"),
    [
        (Money(50000, "INR"), 50000),
        (Money(3000, "USD"), 3000),
        (Money(1500, "JPY"), 1500),
        (Money(5120, "KWD"), 5120),
        (Money(99990, "OMR"), 99990),
        (Money(123456, "IDR"), 123456),
    ],
)
async def test_amounts_travel_in_razorpay_subunits_and_come_back_in_iso_units(
    gateway: RazorpayGateway, router: respx.MockRouter, amount: Money, razorpay_amount: int
) -> None:
    body = razorpay_refund(amount=razorpay_amount, currency=amount.currency)
    route = router.post(CREATE_PATH).respond(200, json=body)

    result = await gateway.create_refund(make_submission(amount=amount))

    sent = json_of(route.calls.last.request)["amount"]
    assert sent == razorpay_amount
    assert isinstance(sent, int)
    assert isinstance(result, Accepted)
    assert result.refund.amount == amount


@pytest.mark.parametrize(
    "amount",
    [Money(5124, "KWD"), Money(1000, "KRW"), Money(1000, "ISK"), Money(1000, "IQD")],
)
async def test_an_amount_razorpay_cannot_express_is_refused_without_calling_razorpay(
    gateway: RazorpayGateway, router: respx.MockRouter, amount: Money
) -> None:
    route = router.post(CREATE_PATH).respond(200, json=razorpay_refund())

    result = await gateway.create_refund(make_submission(amount=amount))

    assert isinstance(result, Declined)
    assert result.code == "amount_not_supported"
    assert not result.retriable and not result.offline
    assert route.call_count == 0


async def test_an_amount_in_an_undocumented_currency_comes_back_without_an_amount(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    router.post(CREATE_PATH).respond(200, json=razorpay_refund(currency="KRW"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.amount is None


async def test_notes_are_fitted_to_razorpay_limits_without_losing_the_reference(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    route = router.post(CREATE_PATH).respond(200, json=razorpay_refund())
    metadata = {
        "refund_id": "spoofed",
        "k" * 256: "key too long",
        "empty": "",
        "note": "x" * 300,
        **{f"extra_{n:02d}": str(n) for n in range(30)},
    }

    await gateway.create_refund(make_submission(metadata=metadata, reason="r" * 300))

    notes = json_of(route.calls.last.request)["notes"]
    assert len(notes) == 15
    assert notes["refund_id"] == REFERENCE
    assert notes["reason"] == "r" * 255
    assert notes["note"] == "x" * 255
    assert "k" * 256 not in notes
    assert "empty" not in notes
    assert all(isinstance(value, str) for value in notes.values())


async def test_a_reference_longer_than_a_receipt_travels_in_notes_only(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    long_reference = "rf_" + "a" * 38
    route = router.post(CREATE_PATH).respond(
        200, json=razorpay_refund(receipt=None, notes={"refund_id": long_reference})
    )

    result = await gateway.create_refund(make_submission(reference=long_reference))

    body = json_of(route.calls.last.request)
    assert "receipt" not in body
    assert body["notes"]["refund_id"] == long_reference
    assert isinstance(result, Accepted)
    assert result.refund.reference == long_reference


@pytest.mark.parametrize("key", ["short-key", "refund key with spaces", "rfnd:rf_0193c1d2e3"])
async def test_an_idempotency_key_razorpay_would_refuse_is_never_sent(
    gateway: RazorpayGateway, router: respx.MockRouter, key: str
) -> None:
    route = router.post(CREATE_PATH).respond(200, json=razorpay_refund())

    result = await gateway.create_refund(make_submission(idempotency_key=key))

    assert isinstance(result, Declined)
    assert result.code == "idempotency_key_not_supported"
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("description", "code", "offline", "retriable"),
    [
        pytest.param(
            "The refund amount provided is greater than amount captured.",
            "amount_exceeds_refundable",
            False,
            False,
            id="greater-than-captured",
        ),
        pytest.param(
            "The refund amount provided is greater than the unrefunded amount",
            "amount_exceeds_refundable",
            False,
            False,
            id="greater-than-unrefunded",
        ),
        pytest.param(
            "The total refund amount is greater than the refund payment amount",
            "amount_exceeds_refundable",
            False,
            False,
            id="total-greater-than-payment",
        ),
        pytest.param(
            "The refund amount exceeds the refundable amount",
            "amount_exceeds_refundable",
            False,
            False,
            id="exceeds-refundable",
        ),
        pytest.param(
            "The payment has been fully refunded already.",
            "already_refunded",
            False,
            False,
            id="fully-refunded",
        ),
        pytest.param(
            "Payment is more than 6 months old, only instant refund is supported",
            "refund_window_passed",
            True,
            False,
            id="six-months-normal",
        ),
        pytest.param(
            "Refund is not supported by the bank because the payment is more than 6 months old",
            "refund_window_passed",
            True,
            False,
            id="six-months-bank",
        ),
        pytest.param(
            "Your account does not have enough balance to carry out the refund operation. "
            "You can add funds to your account from your Razorpay dashboard or capture new "
            "payments.",
            "insufficient_balance",
            False,
            True,
            id="balance",
        ),
        pytest.param(
            "The refund on this payment is blocked due to ongoing dispute investigation",
            "payment_disputed",
            False,
            False,
            id="dispute",
        ),
        pytest.param(
            "The payment status should be captured for action to be taken",
            "payment_not_captured",
            False,
            False,
            id="not-captured",
        ),
        pytest.param(
            "Refund is currently not supported for this payment method",
            "refund_not_supported",
            True,
            False,
            id="method-not-refundable",
        ),
        pytest.param(
            "Partial refund is currently not supported for this payment method",
            "partial_refund_not_supported",
            True,
            False,
            id="partial-not-refundable",
        ),
        pytest.param(
            "Refund for this payment requires the customer's bank account details",
            "bank_account_required",
            True,
            False,
            id="bank-account-refund",
        ),
        pytest.param(
            "The amount must be at least INR 1.00.",
            "amount_below_minimum",
            False,
            False,
            id="minimum",
        ),
        pytest.param(
            f"{PAYMENT_ID} is not a valid id.",
            "payment_not_found",
            False,
            False,
            id="unknown-payment",
        ),
        pytest.param(
            "The id provided does not exist",
            "payment_not_found",
            False,
            False,
            id="payment-does-not-exist",
        ),
    ],
)
async def test_a_definitive_razorpay_refusal_is_declined_with_a_stable_code_and_not_retried(
    gateway: RazorpayGateway,
    router: respx.MockRouter,
    description: str,
    code: str,
    offline: bool,
    retriable: bool,
) -> None:
    route = router.post(CREATE_PATH).mock(return_value=razorpay_error(400, description))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert (result.code, result.offline, result.retriable) == (code, offline, retriable)
    assert result.message == description
    assert route.call_count == 1


@pytest.mark.parametrize(
    "response",
    [
        razorpay_error(
            401,
            f"The api key provided is invalid: {KEY_ID} / {KEY_SECRET}",
            source="NA",
            step="NA",
            reason="NA",
        ),
        razorpay_error(401, "Authentication failed", source="NA", step="NA", reason="NA"),
        razorpay_error(400, "The api secret provided is invalid"),
        razorpay_error(403, "Access forbidden for requested resource"),
    ],
)
async def test_a_rejected_key_is_declined_without_echoing_credentials(
    gateway: RazorpayGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    route = router.post(CREATE_PATH).mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert result.code == "pse_authentication_failed"
    assert not result.offline and not result.retriable
    assert KEY_SECRET not in result.message
    assert KEY_ID not in result.message
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        pytest.param(
            razorpay_error(409, "Request is being processed", source="NA", step="NA"),
            IN_FLIGHT,
            id="409-in-flight",
        ),
        pytest.param(httpx.Response(409, text="Conflict"), IN_FLIGHT, id="409-bare"),
        pytest.param(
            razorpay_error(
                409, "The payment has been fully refunded already", source="NA", step="NA"
            ),
            IN_FLIGHT,
            id="409-whatever-it-says",
        ),
        pytest.param(
            razorpay_error(
                400,
                "Different request with the same idempotency key has already been processed.",
                source="NA",
                step="NA",
                reason="NA",
            ),
            MAY_HOLD_IT,
            id="key-reused-with-another-body",
        ),
        pytest.param(
            razorpay_error(400, "Request failed because another payment operation is in progress"),
            IN_FLIGHT,
            id="operation-in-progress",
        ),
        pytest.param(
            razorpay_error(400, "Duplicate receipt found for this refund request."),
            MAY_HOLD_IT,
            id="duplicate-receipt",
        ),
        pytest.param(
            razorpay_error(400, "Refund has already been processed."),
            MAY_HOLD_IT,
            id="already-processed",
        ),
        pytest.param(
            razorpay_error(
                400,
                "Idempotency key reused: the refund amount provided is greater than amount "
                "captured",
            ),
            MAY_HOLD_IT,
            id="key-clash-wins-over-an-amount-refusal",
        ),
        pytest.param(
            razorpay_error(
                400, "Another refund on this payment is in progress; it is fully refunded already"
            ),
            IN_FLIGHT,
            id="in-progress-wins-over-already-refunded",
        ),
        pytest.param(
            razorpay_error(
                400, "Duplicate request: payment is more than 6 months old for normal refunds"
            ),
            MAY_HOLD_IT,
            id="duplicate-wins-over-the-window",
        ),
    ],
)
async def test_an_idempotency_conflict_or_a_request_in_flight_leaves_the_outcome_unanswered(
    gateway: RazorpayGateway, router: respx.MockRouter, response: httpx.Response, reason: str
) -> None:
    route = router.post(CREATE_PATH).mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert result.reason.startswith(f"{reason}: HTTP {response.status_code}")
    assert route.call_count == 1


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            razorpay_error(400, "Something Razorpay never said before"), id="new-description"
        ),
        pytest.param(
            razorpay_error(400, "notes is/are not required and should not be sent"),
            id="extra-field",
        ),
        pytest.param(
            razorpay_error(400, "The requested URL was not found on the server."),
            id="wrong-url",
        ),
        pytest.param(
            razorpay_error(400, "The payment has been fully refunded already", code="SERVER_ERROR"),
            id="not-a-bad-request-code",
        ),
        pytest.param(razorpay_error(400, ""), id="empty-description"),
        pytest.param(httpx.Response(400, text="<html>bad request</html>"), id="html-400"),
        pytest.param(httpx.Response(404, text="<html>not here</html>"), id="html-404"),
        pytest.param(httpx.Response(200, text="<html>proxy login</html>"), id="html-200"),
        pytest.param(httpx.Response(200, json=razorpay_payment()), id="payment-entity"),
        pytest.param(
            httpx.Response(200, json=razorpay_refund(status="created")), id="unknown-status"
        ),
        pytest.param(
            httpx.Response(200, json={k: v for k, v in razorpay_refund().items() if k != "id"}),
            id="refund-without-id",
        ),
    ],
)
async def test_an_answer_the_gateway_does_not_recognise_leaves_the_outcome_unanswered(
    gateway: RazorpayGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    router.post(CREATE_PATH).mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert result.reason.startswith(f"HTTP {response.status_code}")


async def test_an_unanswered_create_never_echoes_credentials(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    router.post(CREATE_PATH).mock(
        return_value=razorpay_error(400, f"Unexpected input near {KEY_SECRET} and {KEY_ID}")
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert KEY_SECRET not in result.reason
    assert KEY_ID not in result.reason


async def test_a_client_error_is_never_retried(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    route = router.post(CREATE_PATH).mock(
        return_value=razorpay_error(400, "The amount must be an integer.", field="amount")
    )

    await gateway.create_refund(make_submission())

    assert route.call_count == 1


async def test_server_errors_and_rate_limits_are_retried_with_the_same_key_and_body(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    route = router.post(CREATE_PATH).mock(
        side_effect=[
            razorpay_error(
                500,
                "The server encountered an error. The incident has been reported to admins.",
                code="SERVER_ERROR",
                source="NA",
                step="NA",
                reason="NA",
            ),
            razorpay_error(429, "Request failed. Please try after sometime."),
            httpx.Response(200, json=razorpay_refund(status="processed")),
        ]
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.SUCCEEDED
    assert route.call_count == 3
    keys = [call.request.headers["x-refund-idempotency"] for call in route.calls]
    assert keys == [IDEMPOTENCY_KEY] * 3
    bodies = [call.request.content for call in route.calls]
    assert bodies[0] == bodies[1] == bodies[2]


async def test_rate_limits_on_every_attempt_leave_the_outcome_unanswered(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    route = router.post(CREATE_PATH).mock(
        return_value=razorpay_error(429, "Request failed. Please try after sometime.")
    )

    result = await gateway.create_refund(make_submission())

    assert result == Unanswered(f"HTTP 429 after {MAX_ATTEMPTS} attempts")
    assert route.call_count == MAX_ATTEMPTS


async def test_a_timeout_on_every_attempt_leaves_the_outcome_unanswered(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    route = router.post(CREATE_PATH).mock(side_effect=httpx.ReadTimeout("read timed out"))

    result = await gateway.create_refund(make_submission())

    assert result == Unanswered(f"timeout after {MAX_ATTEMPTS} attempts")
    assert route.call_count == MAX_ATTEMPTS


# --------------------------------------------------------------------------
# find_refund
# --------------------------------------------------------------------------


async def test_a_known_razorpay_refund_id_is_looked_up_directly(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    by_id = router.get(f"/v1/refunds/{REFUND_ID}").respond(
        200, json=razorpay_refund(status="processed")
    )
    listing = router.get(LIST_PATH).respond(200, json=razorpay_collection([]))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.state is PseRefundState.SUCCEEDED
    request = by_id.calls.last.request
    assert request.method == "GET"
    assert request.headers["authorization"] == BASIC_AUTH
    assert "x-refund-idempotency" not in request.headers
    assert listing.call_count == 0


@pytest.mark.parametrize(
    "missing",
    [
        razorpay_error(400, "The id provided does not exist"),
        razorpay_error(400, "rfnd_gone000000 is not a valid id"),
        httpx.Response(404, text="not found"),
    ],
)
async def test_an_unknown_razorpay_refund_id_falls_back_to_the_payment_refund_list(
    gateway: RazorpayGateway, router: respx.MockRouter, missing: httpx.Response
) -> None:
    router.get("/v1/refunds/rfnd_gone000000").mock(return_value=missing)
    listing = router.get(LIST_PATH).respond(200, json=razorpay_collection([razorpay_refund()]))

    result = await gateway.find_refund(make_submission(pse_refund_id="rfnd_gone000000"))

    assert isinstance(result, Accepted)
    assert result.refund.reference == REFERENCE
    assert listing.call_count == 1


@pytest.mark.parametrize(
    "other",
    [
        razorpay_refund(notes={"refund_id": "rf_someone_else"}, receipt="rf_someone_else"),
        razorpay_refund(payment_id="pay_SomeOtherPay01"),
    ],
    ids=["other-reference", "other-payment"],
)
async def test_a_refund_found_by_id_that_is_not_ours_is_not_taken_as_ours(
    gateway: RazorpayGateway, router: respx.MockRouter, other: dict[str, Any]
) -> None:
    router.get(f"/v1/refunds/{REFUND_ID}").respond(200, json=other)

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)


async def test_our_refund_is_found_by_reference_on_the_second_page(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    first_page = [
        razorpay_refund(id=f"rfnd_other{n:09d}", notes={"refund_id": f"rf_other_{n}"}, receipt=None)
        for n in range(100)
    ]
    second_page = [
        razorpay_refund(id="rfnd_dashboard001", notes=[], receipt=None),
        razorpay_refund(status="processed"),
    ]
    route = router.get(LIST_PATH).mock(
        side_effect=[
            httpx.Response(200, json=razorpay_collection(first_page)),
            httpx.Response(200, json=razorpay_collection(second_page)),
        ]
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.state is PseRefundState.SUCCEEDED
    first, second = (call.request for call in route.calls)
    assert first.method == "GET"
    assert first.url.path == f"/v1/payments/{PAYMENT_ID}/refunds"
    assert dict(first.url.params) == {"count": "100", "skip": "0"}
    assert dict(second.url.params) == {"count": "100", "skip": "100"}
    assert first.headers["authorization"] == BASIC_AUTH
    assert "x-refund-idempotency" not in first.headers


@pytest.mark.parametrize(
    "ours",
    [
        razorpay_refund(notes=[], receipt=REFERENCE),
        razorpay_refund(notes={"refund_id": REFERENCE}, receipt=None),
    ],
    ids=["by-receipt", "by-notes"],
)
async def test_our_refund_is_matched_by_its_receipt_or_its_notes(
    gateway: RazorpayGateway, router: respx.MockRouter, ours: dict[str, Any]
) -> None:
    router.get(LIST_PATH).respond(200, json=razorpay_collection([ours]))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.reference == REFERENCE


async def test_no_refund_with_our_reference_is_reported_as_not_found(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    others = [
        razorpay_refund(id="rfnd_other000001", notes={"refund_id": "rf_other"}, receipt=None),
        razorpay_refund(id="rfnd_dashboard01", notes=[], receipt=None),
        razorpay_refund(id="rfnd_receipt0001", notes=[], receipt="Receipt No. 31"),
    ]
    router.get(LIST_PATH).respond(200, json=razorpay_collection(others))

    result = await gateway.find_refund(make_submission())

    assert result == NotFound()


async def test_an_empty_refund_list_is_reported_as_not_found(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    route = router.get(LIST_PATH).respond(200, json=razorpay_collection([]))

    result = await gateway.find_refund(make_submission())

    assert result == NotFound()
    assert route.call_count == 1


async def test_when_one_reference_has_several_refunds_the_one_that_moved_money_wins(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    refunds = [
        razorpay_refund(id="rfnd_failed00001", status="failed"),
        razorpay_refund(id="rfnd_processed01", status="processed"),
        razorpay_refund(id="rfnd_pending0001", status="pending"),
    ]
    router.get(LIST_PATH).respond(200, json=razorpay_collection(refunds))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == "rfnd_processed01"


async def test_a_refund_list_longer_than_the_page_cap_leaves_the_outcome_unanswered(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    page = [razorpay_refund(id=f"rfnd_other{n:09d}", notes=[], receipt=None) for n in range(100)]
    route = router.get(LIST_PATH).respond(200, json=razorpay_collection(page))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 20


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"side_effect": httpx.ConnectTimeout("connect timed out")}, id="timeout"),
        pytest.param(
            {
                "return_value": razorpay_error(
                    500, "The server encountered an error.", code="SERVER_ERROR"
                )
            },
            id="server-error",
        ),
        pytest.param(
            {"return_value": razorpay_error(401, "Authentication failed")}, id="unauthorised"
        ),
        pytest.param(
            {"return_value": razorpay_error(400, "The id provided does not exist")},
            id="payment-unknown-to-this-account",
        ),
        pytest.param(
            {"return_value": httpx.Response(200, json={"count": 0, "items": []})},
            id="not-a-collection",
        ),
        pytest.param({"return_value": httpx.Response(200, text="<html/>")}, id="html"),
        pytest.param(
            {
                "return_value": httpx.Response(
                    200, json=razorpay_collection([razorpay_refund(status="created")])
                )
            },
            id="ours-with-unknown-status",
        ),
    ],
)
async def test_a_look_up_without_a_clear_answer_leaves_the_outcome_unanswered(
    gateway: RazorpayGateway, router: respx.MockRouter, answer: dict[str, Any]
) -> None:
    router.get(LIST_PATH).mock(**answer)

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)


async def test_a_look_up_by_id_that_razorpay_does_not_answer_is_unanswered_without_listing(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    router.get(f"/v1/refunds/{REFUND_ID}").mock(side_effect=httpx.ReadTimeout("timed out"))
    listing = router.get(LIST_PATH).respond(200, json=razorpay_collection([]))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)
    assert listing.call_count == 0


# --------------------------------------------------------------------------
# parse_webhook
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        razorpay_event("refund.processed", razorpay_refund(status="processed")),
        razorpay_event(
            "refund.created",
            razorpay_refund(notes={"refund_id": REFERENCE, "note": "₹500 back — café"}),
        ),
        b'{"entity":"event","event":"payment.captured"}',
    ],
    ids=["refund-processed", "non-ascii", "compact"],
)
def test_the_signature_written_from_the_docs_agrees_with_the_official_razorpay_sdk(
    body: bytes,
) -> None:
    client = razorpay.Client(auth=(KEY_ID, KEY_SECRET))
    signature = sign(body)

    assert client.utility.verify_webhook_signature(body.decode("utf-8"), signature, WEBHOOK_SECRET)
    with pytest.raises(SignatureVerificationError):
        client.utility.verify_webhook_signature(
            body.decode("utf-8"), sign(body, OLD_WEBHOOK_SECRET), WEBHOOK_SECRET
        )


@pytest.mark.parametrize(
    "body",
    [
        razorpay_event("refund.processed", razorpay_refund(status="processed")),
        razorpay_event(
            "refund.created",
            razorpay_refund(notes={"refund_id": REFERENCE, "note": "₹500 back — café"}),
        ),
    ],
    ids=["refund-processed", "non-ascii"],
)
async def test_the_gateway_accepts_exactly_what_the_official_sdk_verifies(
    gateway: RazorpayGateway, body: bytes
) -> None:
    client = razorpay.Client(auth=(KEY_ID, KEY_SECRET))
    headers = delivery(body)
    assert client.utility.verify_webhook_signature(
        body.decode("utf-8"), headers["x-razorpay-signature"], WEBHOOK_SECRET
    )

    event = gateway.parse_webhook(headers, body, NOW)

    assert event.refund is not None


async def test_a_signed_webhook_translates_like_the_create_answer_for_the_same_refund(
    gateway: RazorpayGateway, router: respx.MockRouter
) -> None:
    entity = razorpay_refund(status="processed")
    router.post(CREATE_PATH).respond(200, json=entity)
    created = await gateway.create_refund(make_submission())
    body = razorpay_event("refund.processed", entity)

    event = gateway.parse_webhook(delivery(body, event_id="evt_Nq5xMz0cD4eF6g"), body, NOW)

    assert event.event_id == "evt_Nq5xMz0cD4eF6g"
    assert event.event_type == "refund.processed"
    assert isinstance(created, Accepted)
    assert (
        event.refund
        == created.refund
        == PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.SUCCEEDED,
            amount=Money(50000, "INR"),
            reference=REFERENCE,
            pse_payment_ids=(PAYMENT_ID,),
        )
    )


@pytest.mark.parametrize(
    ("event_type", "status", "state"),
    [
        ("refund.created", "pending", PseRefundState.PENDING),
        ("refund.processed", "processed", PseRefundState.SUCCEEDED),
        ("refund.failed", "failed", PseRefundState.FAILED),
    ],
)
async def test_every_refund_event_yields_the_refund_in_its_state(
    gateway: RazorpayGateway, event_type: str, status: str, state: PseRefundState
) -> None:
    body = razorpay_event(event_type, razorpay_refund(status=status))

    event = gateway.parse_webhook(delivery(body), body, NOW)

    assert event.event_type == event_type
    assert event.refund is not None
    assert event.refund.state is state
    assert event.refund.reference == REFERENCE
    assert event.refund.failure_code == (FAILURE_CODE if status == "failed" else None)


async def test_the_refund_state_comes_from_the_entity_not_from_the_event_name(
    gateway: RazorpayGateway,
) -> None:
    # Razorpay's own sample of refund.created carries a refund already processed.
    body = razorpay_event("refund.created", razorpay_refund(status="processed"))

    event = gateway.parse_webhook(delivery(body), body, NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.SUCCEEDED


async def test_a_webhook_signed_with_the_previous_secret_is_accepted_during_rotation(
    gateway: RazorpayGateway,
) -> None:
    body = razorpay_event("refund.created", razorpay_refund())

    event = gateway.parse_webhook(delivery(body, OLD_WEBHOOK_SECRET), body, NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.PENDING


async def test_an_old_delivery_is_accepted_because_razorpay_signs_no_timestamp(
    gateway: RazorpayGateway,
) -> None:
    body = razorpay_event("refund.processed", razorpay_refund(status="processed"))

    event = gateway.parse_webhook(delivery(body), body, NOW + timedelta(days=2))

    assert event.refund is not None


_BODY = razorpay_event("refund.processed", razorpay_refund(status="processed"))


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(delivery(_BODY, "whk_someone_else"), _BODY, id="wrong-secret"),
        pytest.param(
            delivery(_BODY), _BODY.replace(b'"processed"', b'"failed"'), id="tampered-body"
        ),
        pytest.param(
            delivery(json.dumps(json.loads(_BODY)).encode()), _BODY, id="signed-reserialised"
        ),
        pytest.param({"x-razorpay-event-id": "evt_1"}, _BODY, id="missing-header"),
        pytest.param({"x-razorpay-signature": ""}, _BODY, id="empty-header"),
        pytest.param({"x-razorpay-signature": "garbage"}, _BODY, id="malformed"),
        pytest.param({"x-razorpay-signature": "é" * 64}, _BODY, id="non-ascii"),
        pytest.param({"x-razorpay-signature": sign(_BODY).upper()}, _BODY, id="upper-case-hex"),
        pytest.param({"x-razorpay-signature": sign(_BODY)[:-2]}, _BODY, id="truncated"),
        pytest.param(
            {"x-razorpay-signature": base64.b64encode(bytes.fromhex(sign(_BODY))).decode()},
            _BODY,
            id="base64-not-hex",
        ),
    ],
)
async def test_a_webhook_without_a_valid_signature_is_rejected(
    gateway: RazorpayGateway, headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body, NOW)


@pytest.mark.parametrize("secrets", [(), ("",)], ids=["none", "empty"])
async def test_a_webhook_is_rejected_when_no_usable_secret_is_configured(
    http: httpx.AsyncClient, secrets: tuple[str, ...]
) -> None:
    gateway = RazorpayGateway(make_account(webhook_secrets=secrets), http)

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(delivery(_BODY, ""), _BODY, NOW)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json at all", id="not-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(json.dumps([1, 2, 3]).encode(), id="list"),
        pytest.param(json.dumps(razorpay_refund()).encode(), id="bare-refund"),
        pytest.param(json.dumps({"entity": "event", "payload": {}}).encode(), id="no-type"),
        pytest.param(razorpay_event("refund.processed"), id="refund-event-without-refund"),
        pytest.param(
            razorpay_event("refund.processed", razorpay_refund(status="created")),
            id="unknown-status",
        ),
        pytest.param(razorpay_event("refund.failed", razorpay_payment()), id="payment-as-refund"),
    ],
)
async def test_a_correctly_signed_body_that_is_not_a_readable_event_is_rejected(
    gateway: RazorpayGateway, body: bytes
) -> None:
    with pytest.raises(InvalidWebhookPayload):
        gateway.parse_webhook(delivery(body), body, NOW)


@pytest.mark.parametrize(
    ("event_type", "refund"),
    [
        ("payment.captured", None),
        ("refund.speed_changed", razorpay_refund(status="processed")),
    ],
)
async def test_an_event_we_do_not_act_on_is_acknowledged_without_a_refund(
    gateway: RazorpayGateway, event_type: str, refund: dict[str, Any] | None
) -> None:
    body = razorpay_event(event_type, refund)

    event = gateway.parse_webhook(delivery(body, event_id="evt_other0001"), body, NOW)

    assert (event.event_id, event.event_type, event.refund) == ("evt_other0001", event_type, None)


async def test_without_an_event_id_header_the_event_id_is_a_stable_hash_of_the_raw_body(
    gateway: RazorpayGateway,
) -> None:
    body = razorpay_event("refund.processed", razorpay_refund(status="processed"))
    other = razorpay_event("refund.failed", razorpay_refund(status="failed"))

    first = gateway.parse_webhook(delivery(body, event_id=None), body, NOW)
    again = gateway.parse_webhook(delivery(body, event_id=""), body, NOW)
    different = gateway.parse_webhook(delivery(other, event_id=None), other, NOW)

    assert first.event_id == again.event_id == derived_event_id(body)
    assert first.event_id == "sha256:" + hashlib.sha256(body).hexdigest()
    assert different.event_id != first.event_id
