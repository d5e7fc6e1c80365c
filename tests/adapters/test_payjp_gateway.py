"""PayjpGateway against PAY.JP v2-shaped answers (respx) and token-authenticated webhooks.

Fixtures follow PAY.JP's v2 reference: the `payment_refund` object, the refunds
list of a payment flow, RFC 9457 problem details, and v2 events. PAY.JP signs no
webhook body and ships no SDK helper for it: a delivery is authenticated by the
account's static `X-Payjp-Webhook-Token`, which `delivered()` below adds the way
PAY.JP's own sample server expects it.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.payjp import PayjpGateway, derived_event_id
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
API_KEY = "sk_test_5f1c2d3e4a5b6c7d8e9f0a1b"
WEBHOOK_TOKEN = "whook_current1b2c3d4e5f6a7b8c9d0e1f"
OLD_WEBHOOK_TOKEN = "whook_previous2c3d4e5f6a7b8c9d0e1f"
REFERENCE = "rf_0193c1d2e3f4a5b6c7d8e9f0a1b2"
IDEMPOTENCY_KEY = f"rfnd-{REFERENCE}"
PAYMENT_FLOW_ID = "pfw_8a7b6c5d4e3f2a1b0c9d8e7f6a"
REFUND_ID = "pyr_1f2e3d4c5b6a7f8e9d0c1b2a3f"
FLOW_REFUNDS_PATH = f"/v2/payment_flows/{PAYMENT_FLOW_ID}/refunds"
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
MAX_ATTEMPTS = 4


def make_account(**overrides: Any) -> PseAccount:
    settings: dict[str, Any] = {
        "name": "payjp_jp",
        "provider": "payjp",
        "api_key": API_KEY,
        "base_url": BASE_URL,
        "webhook_secrets": (WEBHOOK_TOKEN, OLD_WEBHOOK_TOKEN),
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
        "pse_payment_id": PAYMENT_FLOW_ID,
        "amount": Money(3000, "JPY"),
        "reason": "requested_by_customer",
        "payment_method": "card",
        "metadata": {"rma": "R-77"},
    }
    fields.update(overrides)
    return RefundSubmission(**fields)


def payjp_refund(**overrides: Any) -> dict[str, Any]:
    """Shaped like PAY.JP v2's PaymentRefundResponse."""
    refund: dict[str, Any] = {
        "object": "payment_refund",
        "id": REFUND_ID,
        "livemode": False,
        "payment_flow_id": PAYMENT_FLOW_ID,
        "amount": 3000,
        "status": "pending",
        "reason": "requested_by_customer",
        "metadata": {"refund_id": REFERENCE, "reason": "requested_by_customer", "rma": "R-77"},
        "created_at": "2026-11-27T08:00:00Z",
        "updated_at": "2026-11-27T08:00:00Z",
    }
    refund.update(overrides)
    return refund


def payjp_list(refunds: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """Shaped like PAY.JP v2's PaymentRefundListResponse."""
    return {"object": "list", "url": FLOW_REFUNDS_PATH, "has_more": has_more, "data": refunds}


def problem(
    status: int,
    code: str | None,
    title: str,
    detail: str | None = None,
    *,
    instance: str = "/v2/payment_refunds",
    errors: list[dict[str, str]] | None = None,
) -> httpx.Response:
    """Shaped like PAY.JP v2's RFC 9457 problem details."""
    slug = (code or title.lower().replace(" ", "_")).replace("_", "-")
    body: dict[str, Any] = {
        "status": status,
        "title": title,
        "instance": instance,
        "type": f"https://docs.pay.jp/v2/errors/{slug}",
    }
    if code is not None:
        body["code"] = code
    if detail is not None:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = errors
    return httpx.Response(
        status,
        headers={"content-type": "application/problem+json"},
        content=json.dumps(body).encode(),
    )


def payjp_event(
    event_type: str, data: dict[str, Any], event_id: str | None = "evnt_3c2b1a0f9e8d7c6b5a"
) -> str:
    """Shaped like a PAY.JP v2 EventResponse as delivered to a webhook endpoint."""
    event: dict[str, Any] = {
        "object": "event",
        "livemode": False,
        "type": event_type,
        "pending_webhooks": 1,
        "data": data,
        "created_at": "2026-11-27T08:00:01Z",
        "updated_at": "2026-11-27T08:00:01Z",
    }
    if event_id is not None:
        event["id"] = event_id
    return json.dumps(event)


def delivered(token: str = WEBHOOK_TOKEN) -> dict[str, str]:
    """The headers of a PAY.JP delivery, lower-cased as the service passes them."""
    return {"x-payjp-webhook-token": token, "content-type": "application/json"}


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> PayjpGateway:
    return PayjpGateway(make_account(), http)


# --------------------------------------------------------------------------
# create_refund
# --------------------------------------------------------------------------


async def test_a_pending_refund_is_accepted_and_sent_as_payjp_expects(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v2/payment_refunds").respond(200, json=payjp_refund(status="pending"))

    result = await gateway.create_refund(make_submission())

    assert result == Accepted(
        PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.PENDING,
            amount=Money(3000, "JPY"),
            reference=REFERENCE,
            pse_payment_ids=(PAYMENT_FLOW_ID,),
        )
    )
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == "/v2/payment_refunds"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["idempotency-key"] == IDEMPOTENCY_KEY
    assert request.headers["content-type"] == "application/json"
    assert "application/problem+json" in request.headers["accept"]
    assert json.loads(request.content) == {
        "payment_flow_id": PAYMENT_FLOW_ID,
        "amount": 3000,
        "reason": "requested_by_customer",
        "metadata": {"refund_id": REFERENCE, "reason": "requested_by_customer", "rma": "R-77"},
    }


async def test_a_succeeded_refund_is_accepted_as_succeeded(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    router.post("/v2/payment_refunds").respond(200, json=payjp_refund(status="succeeded"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.SUCCEEDED
    assert result.refund.failure_code is None


@pytest.mark.parametrize(
    ("status", "state", "failure_code"),
    [
        ("requires_action", PseRefundState.PENDING, None),
        ("failed", PseRefundState.FAILED, "refund_failed"),
        ("canceled", PseRefundState.FAILED, "refund_canceled"),
    ],
)
async def test_every_payjp_refund_status_maps_to_a_domain_state_with_a_stable_code(
    gateway: PayjpGateway,
    router: respx.MockRouter,
    status: str,
    state: PseRefundState,
    failure_code: str | None,
) -> None:
    router.post("/v2/payment_refunds").respond(200, json=payjp_refund(status=status))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is state
    assert result.refund.failure_code == failure_code
    assert (result.refund.failure_message is None) is (failure_code is None)


@pytest.mark.parametrize("yen", [1, 50, 9_999_999])
async def test_amounts_travel_in_whole_yen_and_come_back_as_yen(
    gateway: PayjpGateway, router: respx.MockRouter, yen: int
) -> None:
    route = router.post("/v2/payment_refunds").respond(200, json=payjp_refund(amount=yen))

    result = await gateway.create_refund(make_submission(amount=Money(yen, "JPY")))

    sent = json.loads(route.calls.last.request.content)["amount"]
    assert sent == yen and isinstance(sent, int)
    assert isinstance(result, Accepted)
    assert result.refund.amount == Money(yen, "JPY")


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (Money(3000, "USD"), "amount_not_supported"),
        (Money(3000, "KRW"), "amount_not_supported"),
        (Money(0, "JPY"), "invalid_amount"),
    ],
)
async def test_an_amount_payjp_cannot_refund_is_refused_without_calling_payjp(
    gateway: PayjpGateway, router: respx.MockRouter, amount: Money, code: str
) -> None:
    route = router.post("/v2/payment_refunds").respond(200, json=payjp_refund())

    result = await gateway.create_refund(make_submission(amount=amount))

    assert isinstance(result, Declined)
    assert result.code == code
    assert not result.retriable and not result.offline
    assert route.call_count == 0


@pytest.mark.parametrize("key", ["rfnd.rf_0193", "rfnd rf_0193", "k" * 256, ""])
async def test_an_idempotency_key_payjp_would_refuse_is_never_sent(
    gateway: PayjpGateway, router: respx.MockRouter, key: str
) -> None:
    route = router.post("/v2/payment_refunds").respond(200, json=payjp_refund())

    result = await gateway.create_refund(make_submission(idempotency_key=key))

    assert isinstance(result, Declined)
    assert result.code == "invalid_idempotency_key"
    assert route.call_count == 0


async def test_the_longest_idempotency_key_payjp_accepts_is_sent_as_it_is(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    key = "rfnd-" + "a_B-9" * 50  # 255 characters of [A-Za-z0-9_-]
    route = router.post("/v2/payment_refunds").respond(200, json=payjp_refund())

    result = await gateway.create_refund(make_submission(idempotency_key=key))

    assert isinstance(result, Accepted)
    assert route.calls.last.request.headers["idempotency-key"] == key


async def test_a_reason_payjp_does_not_know_travels_only_in_metadata(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v2/payment_refunds").respond(200, json=payjp_refund())

    await gateway.create_refund(make_submission(reason="product_not_received"))

    body = json.loads(route.calls.last.request.content)
    assert "reason" not in body
    assert body["metadata"]["reason"] == "product_not_received"


async def test_metadata_is_fitted_to_payjp_limits_without_losing_the_reference(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v2/payment_refunds").respond(200, json=payjp_refund())
    metadata = {
        "refund_id": "spoofed",
        "k" * 41: "key too long",
        "empty": "",
        "note": "x" * 600,
        **{f"extra_{n:02d}": str(n) for n in range(30)},
    }

    await gateway.create_refund(make_submission(metadata=metadata))

    sent = json.loads(route.calls.last.request.content)["metadata"]
    assert len(sent) == 20
    assert sent["refund_id"] == REFERENCE
    assert sent["note"] == "x" * 500
    assert "k" * 41 not in sent
    assert "empty" not in sent
    assert all(isinstance(value, str) for value in sent.values())


@pytest.mark.parametrize(
    ("response", "code", "offline", "retriable", "message"),
    [
        pytest.param(
            problem(400, "already_refunded", "Already Refunded", "The payment is refunded."),
            "already_refunded",
            False,
            False,
            "The payment is refunded.",
            id="already-refunded",
        ),
        pytest.param(
            problem(
                400,
                "refund_exceeds_payment",
                "Refund Exceeds Payment",
                "The refund amount exceeds the refundable amount.",
            ),
            "amount_exceeds_refundable",
            False,
            False,
            "The refund amount exceeds the refundable amount.",
            id="refund-exceeds-payment",
        ),
        pytest.param(
            httpx.Response(
                400,
                json={
                    "error": {
                        "status": 400,
                        "type": "client_error",
                        "code": "refund_amount_gt_net",
                        "message": "Refund amount is greater than net amount.",
                        "param": "amount",
                    }
                },
            ),
            "amount_exceeds_refundable",
            False,
            False,
            "Refund amount is greater than net amount.",
            id="v1-refund-amount-gt-net",
        ),
        pytest.param(
            problem(400, "invalid_refund_amount", "Invalid Refund Amount", "Invalid amount."),
            "invalid_amount",
            False,
            False,
            "Invalid amount.",
            id="invalid-refund-amount",
        ),
        pytest.param(
            problem(
                400,
                "refund_limit_exceeded",
                "Refund Limit Exceeded",
                "The refund period of this payment has passed.",
            ),
            "refund_window_passed",
            True,
            False,
            "The refund period of this payment has passed.",
            id="refund-period-passed",
        ),
        pytest.param(
            problem(
                400,
                "invalid_status",
                "Invalid Status",
                "Refunds are accepted within 180 days of the payment.",
            ),
            "refund_window_passed",
            True,
            False,
            "Refunds are accepted within 180 days of the payment.",
            id="invalid-status-past-the-window",
        ),
        pytest.param(
            problem(
                400,
                "invalid_status",
                "Invalid Status",
                "This operation can only be executed when the payment_flow status is "
                "succeeded. The current status is requires_capture.",
            ),
            "payment_not_refundable",
            False,
            False,
            "This operation can only be executed when the payment_flow status is "
            "succeeded. The current status is requires_capture.",
            id="invalid-status",
        ),
        pytest.param(
            problem(400, "insufficient_balance", "Insufficient Balance", "Balance too low."),
            "insufficient_balance",
            False,
            True,
            "Balance too low.",
            id="insufficient-balance",
        ),
        pytest.param(
            problem(
                400,
                "resource_missing",
                "Resource Missing",
                f"No such payment_flow: {PAYMENT_FLOW_ID}",
            ),
            "payment_not_found",
            False,
            False,
            f"No such payment_flow: {PAYMENT_FLOW_ID}",
            id="payment-flow-missing",
        ),
        pytest.param(
            problem(
                422,
                "validation_error",
                "Validation Error",
                "The request parameters didn't pass validation.",
                errors=[{"field": "amount", "message": "Input should be greater than 0"}],
            ),
            "invalid_request",
            False,
            False,
            "The request parameters didn't pass validation.",
            id="validation-error",
        ),
        pytest.param(
            problem(400, None, "Already Refunded", "Refunded already."),
            "already_refunded",
            False,
            False,
            "Refunded already.",
            id="code-only-in-the-type-url",
        ),
    ],
)
async def test_a_definitive_payjp_refusal_is_declined_with_a_stable_code_and_not_retried(
    gateway: PayjpGateway,
    router: respx.MockRouter,
    response: httpx.Response,
    code: str,
    offline: bool,
    retriable: bool,
    message: str,
) -> None:
    route = router.post("/v2/payment_refunds").mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert (result.code, result.offline, result.retriable) == (code, offline, retriable)
    assert result.message == message
    assert route.call_count == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_api_key_is_declined_without_echoing_any_secret(
    gateway: PayjpGateway, router: respx.MockRouter, status: int
) -> None:
    router.post("/v2/payment_refunds").mock(
        return_value=problem(
            status,
            "unauthorized",
            "Unauthorized",
            f"Invalid API key: {API_KEY} (also shown as sk_test_****0a1b)",
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
        pytest.param(
            problem(
                409,
                "idempotency_conflict",
                "Idempotency Conflict",
                "The same key was sent with different parameters.",
            ),
            id="conflict",
        ),
        pytest.param(
            problem(
                409,
                "idempotency_timeout",
                "Idempotency Timeout",
                "Timed out waiting for the original request to complete.",
            ),
            id="in-progress",
        ),
        pytest.param(httpx.Response(409, text="conflict"), id="bare-409"),
    ],
)
async def test_an_idempotency_conflict_or_a_request_in_progress_leaves_the_outcome_unanswered(
    gateway: PayjpGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    route = router.post("/v2/payment_refunds").mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 1


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(problem(400, "something_new", "Something New", "?"), id="unknown-code"),
        pytest.param(
            problem(402, "card_declined", "Card Declined", "The card was declined."),
            id="card-declined",
        ),
        pytest.param(httpx.Response(404, text="<html>not here</html>"), id="html-404"),
        pytest.param(
            problem(404, "not_found", "Not Found", "Not Found", instance="/v2/payment_refunds"),
            id="problem-404",
        ),
        pytest.param(httpx.Response(400, json={"unexpected": True}), id="no-code"),
        pytest.param(httpx.Response(200, text="<html>proxy login</html>"), id="html-200"),
        pytest.param(
            httpx.Response(200, json={"id": PAYMENT_FLOW_ID, "object": "payment_flow"}),
            id="not-a-refund",
        ),
        pytest.param(httpx.Response(200, json=payjp_refund(status="on_hold")), id="new-status"),
        pytest.param(httpx.Response(200, json=payjp_refund(amount="3000")), id="text-amount"),
        pytest.param(httpx.Response(302, headers={"location": "/login"}), id="redirect"),
    ],
)
async def test_an_answer_the_gateway_does_not_recognise_leaves_the_outcome_unanswered(
    gateway: PayjpGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    router.post("/v2/payment_refunds").mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)


@pytest.mark.parametrize(
    "refund",
    [
        payjp_refund(payment_flow_id="pfw_someone_else"),
        payjp_refund(metadata={"refund_id": "rf_someone_else"}),
    ],
)
async def test_a_created_refund_of_another_payment_or_reference_is_not_taken_as_ours(
    gateway: PayjpGateway, router: respx.MockRouter, refund: dict[str, Any]
) -> None:
    router.post("/v2/payment_refunds").respond(200, json=refund)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)


async def test_an_unrecognised_error_never_carries_a_secret_into_the_reason(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    router.post("/v2/payment_refunds").mock(
        return_value=problem(
            400, "odd", "Odd", f"key {API_KEY}, token {WEBHOOK_TOKEN}, live sk_live_abc123"
        )
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert API_KEY not in result.reason
    assert WEBHOOK_TOKEN not in result.reason
    assert "sk_live_abc123" not in result.reason
    assert "[redacted]" in result.reason


async def test_a_key_of_any_shape_is_kept_out_of_messages(http: httpx.AsyncClient) -> None:
    secret = "restricted-key-7f3a9c"
    gateway = PayjpGateway(make_account(api_key=secret), http)
    with respx.mock(base_url=BASE_URL) as mock:
        mock.post("/v2/payment_refunds").mock(
            return_value=problem(401, "unauthorized", "Unauthorized", f"Bad key {secret}")
        )

        result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert result.message == "Bad key [redacted]"


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(
            problem(500, "internal_server_error", "Internal Server Error", "retry"), id="500"
        ),
        pytest.param(problem(429, "too_many_requests", "Too Many Requests", "slow"), id="429"),
        pytest.param(
            problem(
                503,
                "idempotency_infrastructure_error",
                "Idempotency Infrastructure Error",
                "Idempotency checks are unavailable.",
            ),
            id="503",
        ),
    ],
)
async def test_a_transient_answer_is_retried_with_the_same_key_and_body(
    gateway: PayjpGateway, router: respx.MockRouter, first: httpx.Response
) -> None:
    route = router.post("/v2/payment_refunds").mock(
        side_effect=[first, httpx.Response(200, json=payjp_refund(status="succeeded"))]
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.SUCCEEDED
    assert route.call_count == 2
    keys = [call.request.headers["idempotency-key"] for call in route.calls]
    assert keys == [IDEMPOTENCY_KEY, IDEMPOTENCY_KEY]
    assert route.calls[0].request.content == route.calls[1].request.content


async def test_server_errors_on_every_attempt_leave_the_outcome_unanswered(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v2/payment_refunds").mock(return_value=problem(502, None, "Bad Gateway"))

    result = await gateway.create_refund(make_submission())

    assert result == Unanswered(f"HTTP 502 after {MAX_ATTEMPTS} attempts")
    assert route.call_count == MAX_ATTEMPTS


async def test_a_timeout_on_every_attempt_leaves_the_outcome_unanswered(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    route = router.post("/v2/payment_refunds").mock(side_effect=httpx.ReadTimeout("timed out"))

    result = await gateway.create_refund(make_submission())

    assert result == Unanswered(f"timeout after {MAX_ATTEMPTS} attempts")
    assert route.call_count == MAX_ATTEMPTS


# --------------------------------------------------------------------------
# find_refund
# --------------------------------------------------------------------------


async def test_a_known_payjp_refund_id_is_looked_up_directly(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    by_id = router.get(f"/v2/payment_refunds/{REFUND_ID}").respond(
        200, json=payjp_refund(status="succeeded")
    )
    listing = router.get(FLOW_REFUNDS_PATH).respond(200, json=payjp_list([], has_more=False))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert result == Accepted(
        PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.SUCCEEDED,
            amount=Money(3000, "JPY"),
            reference=REFERENCE,
            pse_payment_ids=(PAYMENT_FLOW_ID,),
        )
    )
    request = by_id.calls.last.request
    assert request.method == "GET"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert "idempotency-key" not in request.headers
    assert listing.call_count == 0


async def test_an_unknown_payjp_refund_id_falls_back_to_the_payment_flow_refunds(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    router.get("/v2/payment_refunds/pyr_missing").mock(
        return_value=problem(
            404, "not_found", "Not Found", "No such refund", instance="/v2/payment_refunds/x"
        )
    )
    listing = router.get(FLOW_REFUNDS_PATH).respond(
        200, json=payjp_list([payjp_refund()], has_more=False)
    )

    result = await gateway.find_refund(make_submission(pse_refund_id="pyr_missing"))

    assert isinstance(result, Accepted)
    assert result.refund.reference == REFERENCE
    assert listing.call_count == 1


@pytest.mark.parametrize(
    "refund",
    [
        payjp_refund(metadata={"refund_id": "rf_someone_else"}),
        payjp_refund(payment_flow_id="pfw_someone_else"),
    ],
)
async def test_a_refund_found_by_id_for_another_reference_or_payment_is_not_taken_as_ours(
    gateway: PayjpGateway, router: respx.MockRouter, refund: dict[str, Any]
) -> None:
    router.get(f"/v2/payment_refunds/{REFUND_ID}").respond(200, json=refund)

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)


async def test_a_failing_look_up_by_id_does_not_fall_back_to_the_list(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    router.get(f"/v2/payment_refunds/{REFUND_ID}").mock(
        return_value=problem(500, None, "Internal Server Error")
    )
    listing = router.get(FLOW_REFUNDS_PATH).respond(200, json=payjp_list([], has_more=False))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)
    assert listing.call_count == 0


async def test_our_refund_is_found_by_reference_on_the_second_page(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    first_page = [
        payjp_refund(id="pyr_other_2", metadata={"refund_id": "rf_other_2"}),
        payjp_refund(id="pyr_dashboard", metadata={}),
    ]
    second_page = [payjp_refund(status="succeeded")]
    route = router.get(FLOW_REFUNDS_PATH).mock(
        side_effect=[
            httpx.Response(200, json=payjp_list(first_page, has_more=True)),
            httpx.Response(200, json=payjp_list(second_page, has_more=False)),
        ]
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.state is PseRefundState.SUCCEEDED
    first, second = (call.request for call in route.calls)
    assert first.method == "GET"
    assert first.url.path == FLOW_REFUNDS_PATH
    assert first.headers["authorization"] == f"Bearer {API_KEY}"
    assert dict(first.url.params) == {"limit": "100"}
    assert dict(second.url.params) == {"limit": "100", "starting_after": "pyr_dashboard"}
    assert "idempotency-key" not in first.headers


async def test_no_refund_with_our_reference_is_reported_as_not_found(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    others = [
        payjp_refund(id="pyr_other", metadata={"refund_id": "rf_other"}),
        payjp_refund(id="pyr_dashboard", metadata={}),
    ]
    router.get(FLOW_REFUNDS_PATH).respond(200, json=payjp_list(others, has_more=False))

    result = await gateway.find_refund(make_submission())

    assert result == NotFound()


async def test_an_empty_refund_list_is_reported_as_not_found(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    router.get(FLOW_REFUNDS_PATH).respond(200, json=payjp_list([], has_more=False))

    assert await gateway.find_refund(make_submission()) == NotFound()


async def test_of_several_refunds_with_our_reference_the_one_that_moved_money_is_reported(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    twins = [
        payjp_refund(id="pyr_failed", status="failed"),
        payjp_refund(id="pyr_paid", status="succeeded"),
        payjp_refund(id="pyr_waiting", status="pending"),
    ]
    router.get(FLOW_REFUNDS_PATH).respond(200, json=payjp_list(twins, has_more=False))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == "pyr_paid"


async def test_a_refund_list_longer_than_the_page_cap_leaves_the_outcome_unanswered(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    page = payjp_list([payjp_refund(id="pyr_other", metadata={})], has_more=True)
    route = router.get(FLOW_REFUNDS_PATH).respond(200, json=page)

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 20


async def test_a_failed_match_on_a_list_that_cannot_be_read_to_its_end_is_not_the_answer(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    # The unread pages may hold an older refund under our reference that paid:
    # reporting the failed one would invite a resend on top of it.
    first_page = [payjp_refund(id="pyr_newer_failed", status="failed")]
    router.get(FLOW_REFUNDS_PATH).mock(
        side_effect=[
            httpx.Response(200, json=payjp_list(first_page, has_more=True)),
            httpx.Response(200, json={"object": "list", "data": "not a list"}),
        ]
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"side_effect": httpx.ConnectTimeout("connect timed out")}, id="timeout"),
        pytest.param(
            {"return_value": problem(500, None, "Internal Server Error")}, id="server-error"
        ),
        pytest.param(
            {"return_value": problem(401, "unauthorized", "Unauthorized", "bad key")},
            id="unauthorized",
        ),
        pytest.param(
            {"return_value": problem(404, "not_found", "Not Found", "No such payment_flow")},
            id="unknown-payment-flow",
        ),
        pytest.param(
            {"return_value": httpx.Response(200, json={"object": "list", "data": []})},
            id="no-has-more",
        ),
        pytest.param({"return_value": httpx.Response(200, json=[])}, id="not-a-list"),
        pytest.param(
            {
                "return_value": httpx.Response(
                    200,
                    json=payjp_list([payjp_refund(status="on_hold")], has_more=False),
                )
            },
            id="unreadable-match",
        ),
    ],
)
async def test_a_look_up_without_a_clear_answer_leaves_the_outcome_unanswered(
    gateway: PayjpGateway, router: respx.MockRouter, answer: dict[str, Any]
) -> None:
    router.get(FLOW_REFUNDS_PATH).mock(**answer)

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)


# --------------------------------------------------------------------------
# parse_webhook
# --------------------------------------------------------------------------


async def test_a_webhook_with_the_account_token_is_accepted_and_translated(
    gateway: PayjpGateway,
) -> None:
    payload = payjp_event("refund.updated", payjp_refund(status="succeeded"), "evnt_1")

    event = gateway.parse_webhook(delivered(), payload.encode(), NOW)

    assert event.event_id == "evnt_1"
    assert event.event_type == "refund.updated"
    assert event.refund == PseRefund(
        pse_refund_id=REFUND_ID,
        state=PseRefundState.SUCCEEDED,
        amount=Money(3000, "JPY"),
        reference=REFERENCE,
        pse_payment_ids=(PAYMENT_FLOW_ID,),
    )


async def test_a_webhook_and_a_look_up_translate_the_same_refund_alike(
    gateway: PayjpGateway, router: respx.MockRouter
) -> None:
    refund = payjp_refund(status="canceled")
    router.get(f"/v2/payment_refunds/{REFUND_ID}").respond(200, json=refund)
    payload = payjp_event("refund.updated", refund)

    found = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))
    event = gateway.parse_webhook(delivered(), payload.encode(), NOW)

    assert isinstance(found, Accepted)
    assert event.refund == found.refund


async def test_a_webhook_with_the_previous_token_is_accepted_during_rotation(
    gateway: PayjpGateway,
) -> None:
    payload = payjp_event("refund.created", payjp_refund())

    event = gateway.parse_webhook(delivered(OLD_WEBHOOK_TOKEN), payload.encode(), NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.PENDING


async def test_every_configured_token_is_compared_in_constant_time(
    gateway: PayjpGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return bool(real_compare(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    payload = payjp_event("refund.created", payjp_refund())

    gateway.parse_webhook(delivered(WEBHOOK_TOKEN), payload.encode(), NOW)

    assert compared == [
        (WEBHOOK_TOKEN.encode(), WEBHOOK_TOKEN.encode()),
        (OLD_WEBHOOK_TOKEN.encode(), WEBHOOK_TOKEN.encode()),
    ]


async def test_a_failed_refund_event_carries_a_stable_failure_code(
    gateway: PayjpGateway,
) -> None:
    payload = payjp_event("refund.failed", payjp_refund(status="failed"))

    event = gateway.parse_webhook(delivered(), payload.encode(), NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.FAILED
    assert event.refund.failure_code == "refund_failed"


async def test_a_webhook_with_the_legacy_meta_data_key_still_names_our_refund(
    gateway: PayjpGateway,
) -> None:
    refund = payjp_refund(status="succeeded")
    del refund["metadata"]
    refund["meta_data"] = {"refund_id": REFERENCE}
    payload = payjp_event("refund.updated", refund)

    event = gateway.parse_webhook(delivered(), payload.encode(), NOW)

    assert event.refund is not None
    assert event.refund.reference == REFERENCE


async def test_an_event_without_an_id_gets_a_stable_one_from_its_body(
    gateway: PayjpGateway,
) -> None:
    payload = payjp_event("refund.updated", payjp_refund(status="succeeded"), event_id=None)
    other = payjp_event("refund.updated", payjp_refund(status="failed"), event_id=None)

    first = gateway.parse_webhook(delivered(), payload.encode(), NOW)
    again = gateway.parse_webhook(delivered(), payload.encode(), NOW)
    different = gateway.parse_webhook(delivered(), other.encode(), NOW)

    assert first.event_id == again.event_id == derived_event_id(payload.encode())
    assert first.event_id.startswith("payjp-sha256-")
    assert different.event_id != first.event_id


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("payment_flow.succeeded", {"id": PAYMENT_FLOW_ID, "object": "payment_flow"}),
        ("checkout.session.completed", {"id": "cs_1", "object": "checkout.session"}),
        ("customer.created", {"id": "cus_1", "object": "customer"}),
    ],
)
async def test_an_unrelated_event_is_acknowledged_without_a_refund(
    gateway: PayjpGateway, event_type: str, data: dict[str, Any]
) -> None:
    payload = payjp_event(event_type, data, "evnt_other")

    event = gateway.parse_webhook(delivered(), payload.encode(), NOW)

    assert (event.event_id, event.event_type, event.refund) == ("evnt_other", event_type, None)


_PAYLOAD = payjp_event("refund.updated", payjp_refund(status="succeeded"))


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(delivered("whook_someoneElse0000000000000"), id="wrong-token"),
        pytest.param(delivered(WEBHOOK_TOKEN.upper()), id="other-case"),
        pytest.param(delivered(WEBHOOK_TOKEN[:-1]), id="prefix"),
        pytest.param(delivered(WEBHOOK_TOKEN + "0"), id="longer"),
        pytest.param(delivered(""), id="empty"),
        pytest.param({"content-type": "application/json"}, id="missing"),
        pytest.param({"x-payjp-webhook-signature": WEBHOOK_TOKEN}, id="other-header"),
    ],
)
async def test_a_webhook_without_a_configured_token_is_rejected(
    gateway: PayjpGateway, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, _PAYLOAD.encode(), NOW)


@pytest.mark.parametrize("tokens", [(), ("",)])
async def test_a_webhook_is_rejected_when_no_token_is_configured(
    http: httpx.AsyncClient, tokens: tuple[str, ...]
) -> None:
    gateway = PayjpGateway(make_account(webhook_secrets=tokens), http)

    for presented in ("", "  ", WEBHOOK_TOKEN):
        with pytest.raises(InvalidWebhookSignature):
            gateway.parse_webhook(delivered(presented), _PAYLOAD.encode(), NOW)


async def test_the_token_authenticates_the_sender_but_does_not_bind_the_body(
    gateway: PayjpGateway,
) -> None:
    # A known limit of PAY.JP's scheme: whoever holds the token can send any body.
    altered = _PAYLOAD.replace('"succeeded"', '"failed"')

    event = gateway.parse_webhook(delivered(), altered.encode(), NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.FAILED


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("not json at all", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(json.dumps([1, 2, 3]), id="array"),
        pytest.param(json.dumps({"id": "evnt_1", "data": payjp_refund()}), id="no-type"),
        pytest.param(
            json.dumps({"id": "evnt_1", "object": "payment_refund", "type": "refund.updated"}),
            id="not-an-event",
        ),
        pytest.param(
            payjp_event("refund.updated", {"id": PAYMENT_FLOW_ID, "object": "payment_flow"}),
            id="not-a-refund",
        ),
        pytest.param(payjp_event("refund.updated", payjp_refund(status="on_hold")), id="status"),
        pytest.param(payjp_event("refund.created", payjp_refund(amount=None)), id="no-amount"),
    ],
)
async def test_a_body_with_a_valid_token_that_is_not_a_readable_event_is_rejected(
    gateway: PayjpGateway, payload: str | bytes
) -> None:
    body = payload if isinstance(payload, bytes) else payload.encode()

    with pytest.raises(InvalidWebhookPayload):
        gateway.parse_webhook(delivered(), body, NOW)
