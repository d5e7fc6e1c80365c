"""KomojuGateway against KOMOJU-shaped answers (respx) and independently signed webhooks.

KOMOJU has no official Python SDK, so webhooks are signed here with a plain
HMAC-SHA256 of the raw body (tests/adapters/cases/komoju.py `sign`), written from
KOMOJU's webhook documentation rather than from the adapter.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.komoju import KomojuGateway
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
from tests.adapters.cases.komoju import (
    PAYMENT_ID,
    PAYMENT_PATH,
    REFUND_ID,
    REFUND_PATH,
    SECRET_KEY,
    basic_auth,
    komoju_error,
    komoju_event,
    komoju_payment,
    komoju_refund,
    sign,
    webhook_headers,
)

# Loopback only: respx answers every call, nothing may leave the machine.
BASE_URL = "http://127.0.0.1:9"
WEBHOOK_SECRET = "whk_current_9ad2c6e1f04b"
OLD_WEBHOOK_SECRET = "whk_previous_51be7a0c3d92"
REFERENCE = "rf_01JD4M7Q2X8V5N6B3C9K0T1W2Y"
IDEMPOTENCY_KEY = "refund-rf_01JD4M7Q2X8V5N6B3C9K0T1W2Y"
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
MAX_ATTEMPTS = 4


def make_account(**overrides: Any) -> PseAccount:
    settings: dict[str, Any] = {
        "name": "komoju_jp",
        "provider": "komoju",
        "api_key": SECRET_KEY,
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
        "pse_payment_id": PAYMENT_ID,
        "amount": Money(3000, "JPY"),
        "reason": "requested_by_customer",
        "payment_method": "credit_card",
        "metadata": {"rma": "R-77"},
    }
    fields.update(overrides)
    return RefundSubmission(**fields)


def ours(**overrides: Any) -> dict[str, Any]:
    return komoju_refund(**{"description": REFERENCE, **overrides})


def signed(payload: str, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    """Headers as KOMOJU sends them, lower-cased as the service hands them over."""
    try:
        event_type = str(json.loads(payload)["type"])
    except (ValueError, KeyError, TypeError):
        event_type = "unknown"
    headers = webhook_headers(payload.encode(), secret, event_type)
    return {name.lower(): value for name, value in headers.items()}


OUR_REFUND = PseRefund(
    pse_refund_id=REFUND_ID,
    state=PseRefundState.SUCCEEDED,
    amount=Money(3000, "JPY"),
    reference=REFERENCE,
    pse_payment_ids=(PAYMENT_ID,),
)


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> KomojuGateway:
    return KomojuGateway(make_account(), http)


# --------------------------------------------------------------------------
# create_refund
# --------------------------------------------------------------------------


async def test_a_card_refund_is_accepted_as_succeeded_and_sent_as_komoju_expects(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    route = router.post(REFUND_PATH).respond(200, json=komoju_payment([ours()]))

    result = await gateway.create_refund(make_submission())

    assert result == Accepted(OUR_REFUND)
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == f"/api/v1/payments/{PAYMENT_ID}/refund"
    assert request.headers["authorization"] == basic_auth(SECRET_KEY)
    assert request.headers["x-komoju-idempotency"] == IDEMPOTENCY_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert "x-komoju-api-version" not in request.headers
    assert json.loads(request.content) == {"amount": 3000, "description": REFERENCE}


async def test_our_refund_is_told_apart_from_the_other_refunds_of_the_payment(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    refunds = [
        komoju_refund(id="1k0dn3jq5wqv2m9fxe8r7t6ya", amount=500, description="rf_earlier"),
        ours(amount=1000, created_at="2026-11-27T07:59:00Z"),
        # Made from the dashboard a second later: newer, but not ours.
        komoju_refund(id="0zq8r2y3u5m1c7v4b9n6x0kjd", amount=200, description=None),
    ]
    router.post(REFUND_PATH).respond(200, json=komoju_payment(refunds))

    result = await gateway.create_refund(make_submission(amount=Money(1000, "JPY")))

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.amount == Money(1000, "JPY")


async def test_a_cash_pickup_refund_is_accepted_as_pending_until_the_payer_collects(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    refund = ours(redirect_url=f"https://komoju.com/refunds/{REFUND_ID}")
    router.post(REFUND_PATH).respond(200, json=komoju_payment([refund]))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.PENDING


@pytest.mark.parametrize(
    "amount",
    [
        Money(1500, "JPY"),
        Money(1, "JPY"),
        Money(50000, "KRW"),
        Money(120000, "VND"),
        Money(1234, "USD"),
        Money(999, "EUR"),
        Money(150050, "TWD"),
    ],
)
async def test_amounts_travel_in_the_lowest_denomination_and_come_back_the_same(
    gateway: KomojuGateway, router: respx.MockRouter, amount: Money
) -> None:
    body = komoju_payment(
        [ours(amount=amount.amount, currency=amount.currency)], currency=amount.currency
    )
    route = router.post(REFUND_PATH).respond(200, json=body)

    result = await gateway.create_refund(make_submission(amount=amount))

    assert json.loads(route.calls.last.request.content)["amount"] == amount.amount
    assert isinstance(result, Accepted)
    assert result.refund.amount == amount


async def test_a_refund_without_its_own_currency_takes_the_payment_currency(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    refund = ours()
    del refund["currency"]
    router.post(REFUND_PATH).respond(200, json=komoju_payment([refund]))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.amount == Money(3000, "JPY")


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (Money(0, "JPY"), "invalid_amount"),
        (Money(5000, "KWD"), "currency_not_supported"),
        (Money(5000, "INR"), "currency_not_supported"),
    ],
)
async def test_an_amount_komoju_cannot_take_is_declined_without_calling_komoju(
    gateway: KomojuGateway, router: respx.MockRouter, amount: Money, code: str
) -> None:
    route = router.post(REFUND_PATH).respond(200, json=komoju_payment([ours()]))

    result = await gateway.create_refund(make_submission(amount=amount))

    assert isinstance(result, Declined)
    assert (result.code, result.offline, result.retriable) == (code, False, False)
    assert route.call_count == 0


@pytest.mark.parametrize("key", ["k" * 101, "refund-rf_日本-01", "tab\tkey"])
async def test_an_idempotency_key_komoju_cannot_take_is_sent_as_a_stable_hash(
    gateway: KomojuGateway, router: respx.MockRouter, key: str
) -> None:
    route = router.post(REFUND_PATH).respond(200, json=komoju_payment([ours()]))

    await gateway.create_refund(make_submission(idempotency_key=key))
    await gateway.create_refund(make_submission(idempotency_key=key))

    first, second = (call.request.headers["x-komoju-idempotency"] for call in route.calls)
    assert first == second == "sha256-" + hashlib.sha256(key.encode()).hexdigest()
    assert len(first) <= 100 and first.isascii()


async def test_the_api_version_option_is_sent_on_every_call(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    gateway = KomojuGateway(make_account(options={"api_version": "2025-01-28"}), http)
    post = router.post(REFUND_PATH).respond(200, json=komoju_payment([ours()]))
    get = router.get(PAYMENT_PATH).respond(200, json=komoju_payment([ours()]))

    await gateway.create_refund(make_submission())
    await gateway.find_refund(make_submission())

    assert post.calls.last.request.headers["x-komoju-api-version"] == "2025-01-28"
    assert get.calls.last.request.headers["x-komoju-api-version"] == "2025-01-28"


@pytest.mark.parametrize(
    ("response", "code", "retriable"),
    [
        (
            komoju_error(422, "invalid_parameter", "The value of amount is invalid.", "amount"),
            "amount_exceeds_refundable",
            False,
        ),
        (
            komoju_error(
                422,
                "unprocessable_entity",
                "Refund amount exceeds the refundable amount of the payment",
            ),
            "amount_exceeds_refundable",
            False,
        ),
        (
            komoju_error(400, "bad_request", "This payment has already been fully refunded"),
            "already_refunded",
            False,
        ),
        (
            komoju_error(422, "insufficient_funds", "Insufficient funds."),
            "insufficient_balance",
            True,
        ),
        (
            komoju_error(404, "not_found", "The requested resource could not be found."),
            "payment_not_found",
            False,
        ),
    ],
)
async def test_a_definitive_komoju_error_is_declined_with_a_stable_code_and_not_retried(
    gateway: KomojuGateway,
    router: respx.MockRouter,
    response: httpx.Response,
    code: str,
    retriable: bool,
) -> None:
    route = router.post(REFUND_PATH).mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert (result.code, result.offline, result.retriable) == (code, False, retriable)
    assert response.json()["error"]["message"] in result.message
    assert route.call_count == 1


NOT_REFUNDABLE = komoju_error(422, "not_refundable", "The payment you requested is not refundable.")


def paid_by(kind: str, **overrides: Any) -> dict[str, Any]:
    return komoju_payment([], payment_details={"type": kind, "email": "b@example.jp"}, **overrides)


@pytest.mark.parametrize(
    ("payment", "code", "offline"),
    [
        pytest.param(
            komoju_payment([komoju_refund(amount=5000, description="rf_other")]),
            "already_refunded",
            False,
            id="fully-refunded",
        ),
        pytest.param(paid_by("konbini"), "bank_account_refund_required", True, id="konbini"),
        pytest.param(
            paid_by("bank_transfer"), "bank_account_refund_required", True, id="bank-transfer"
        ),
        pytest.param(paid_by("pay_easy"), "bank_account_refund_required", True, id="pay-easy"),
        pytest.param(
            komoju_payment([], status="authorized"), "payment_not_captured", False, id="authorized"
        ),
        pytest.param(
            komoju_payment([], status="cancelled"), "payment_not_captured", False, id="cancelled"
        ),
        pytest.param(
            komoju_payment([komoju_refund(amount=2000, description=None, chargeback=True)]),
            "payment_disputed",
            False,
            id="chargeback",
        ),
        pytest.param(
            komoju_payment([], created_at="2026-03-02T01:00:00Z"),
            "not_refundable",
            True,
            id="card-past-refund-period",
        ),
    ],
)
async def test_not_refundable_is_explained_by_the_payment(
    gateway: KomojuGateway,
    router: respx.MockRouter,
    payment: dict[str, Any],
    code: str,
    offline: bool,
) -> None:
    post = router.post(REFUND_PATH).mock(return_value=NOT_REFUNDABLE)
    get = router.get(PAYMENT_PATH).respond(200, json=payment)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert (result.code, result.offline, result.retriable) == (code, offline, False)
    assert "The payment you requested is not refundable." in result.message
    assert post.call_count == 1
    assert get.calls.last.request.headers["authorization"] == basic_auth(SECRET_KEY)
    assert "x-komoju-idempotency" not in get.calls.last.request.headers


async def test_not_refundable_because_our_earlier_send_went_through_is_accepted(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    router.post(REFUND_PATH).mock(return_value=NOT_REFUNDABLE)
    router.get(PAYMENT_PATH).respond(200, json=komoju_payment([ours(amount=5000)]))

    result = await gateway.create_refund(make_submission(amount=Money(5000, "JPY")))

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID


@pytest.mark.parametrize(
    "answer",
    [
        {"side_effect": httpx.ConnectError("refused")},
        {"return_value": komoju_error(500, "internal_server_error", "Something went wrong")},
        {"return_value": httpx.Response(200, json={"resource": "list", "data": []})},
        {"return_value": httpx.Response(200, json=komoju_payment([], status="on_hold"))},
    ],
)
async def test_not_refundable_with_a_payment_that_cannot_be_read_stays_unanswered(
    gateway: KomojuGateway, router: respx.MockRouter, answer: dict[str, Any]
) -> None:
    router.post(REFUND_PATH).mock(return_value=NOT_REFUNDABLE)
    router.get(PAYMENT_PATH).mock(**answer)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_secret_key_is_declined_without_echoing_the_key(
    gateway: KomojuGateway, router: respx.MockRouter, status: int
) -> None:
    router.post(REFUND_PATH).mock(
        return_value=komoju_error(
            status, "unauthorized", f"Invalid API key {SECRET_KEY} (also sk_live_abcdef123)"
        )
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert result.code == "pse_authentication_failed"
    assert SECRET_KEY not in result.message
    assert "sk_live_abcdef123" not in result.message
    assert "[redacted]" in result.message


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(409, text=""),
        komoju_error(409, "conflict", "A request with this idempotency key is in progress"),
        komoju_error(423, "locked", "Processing."),
    ],
)
async def test_a_request_still_in_progress_under_our_key_leaves_the_outcome_unanswered(
    gateway: KomojuGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    route = router.post(REFUND_PATH).mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 1


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            komoju_error(
                422, "invalid_parameter", "The value of description is invalid.", "description"
            ),
            id="other-parameter",
        ),
        pytest.param(
            komoju_error(422, "missing_parameter", "A required parameter (amount) is missing."),
            id="missing-parameter",
        ),
        pytest.param(
            komoju_error(422, "unprocessable_entity", "The request could not be processed."),
            id="generic-without-a-known-reason",
        ),
        pytest.param(httpx.Response(404, text="<html>not here</html>"), id="html-404"),
        pytest.param(httpx.Response(200, text="<html>proxy login</html>"), id="html-200"),
        pytest.param(
            httpx.Response(200, json={"resource": "refund", "id": REFUND_ID}), id="not-a-payment"
        ),
        pytest.param(
            httpx.Response(200, json=komoju_payment([ours()], id="7mom8rbw56emtroziokdt9q2i")),
            id="another-payment",
        ),
        pytest.param(
            httpx.Response(200, json=komoju_payment([komoju_refund(description="rf_other")])),
            id="no-refund-of-ours",
        ),
        pytest.param(
            httpx.Response(200, json=komoju_payment([ours(id=None)])), id="refund-without-id"
        ),
    ],
)
async def test_an_answer_the_gateway_does_not_recognise_leaves_the_outcome_unanswered(
    gateway: KomojuGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    router.post(REFUND_PATH).mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)


async def test_an_unrecognised_error_never_passes_a_key_on(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    router.post(REFUND_PATH).mock(
        return_value=komoju_error(400, "bad_request", f"bad key {SECRET_KEY}")
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert SECRET_KEY not in result.reason


async def test_a_server_error_is_retried_with_the_same_idempotency_key_and_body(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    route = router.post(REFUND_PATH).mock(
        side_effect=[
            komoju_error(503, "service_unavailable", "The server is down for maintenance."),
            httpx.Response(429, json={"error": {"code": "too_many_requests"}}),
            httpx.Response(200, json=komoju_payment([ours()])),
        ]
    )

    result = await gateway.create_refund(make_submission())

    assert result == Accepted(OUR_REFUND)
    assert route.call_count == 3
    keys = {call.request.headers["x-komoju-idempotency"] for call in route.calls}
    bodies = {call.request.content for call in route.calls}
    assert keys == {IDEMPOTENCY_KEY}
    assert len(bodies) == 1


async def test_a_client_error_is_never_retried(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    route = router.post(REFUND_PATH).mock(
        return_value=komoju_error(422, "missing_parameter", "A required parameter is missing.")
    )

    await gateway.create_refund(make_submission())

    assert route.call_count == 1


async def test_a_timeout_on_every_attempt_leaves_the_outcome_unanswered(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    route = router.post(REFUND_PATH).mock(side_effect=httpx.ReadTimeout("read timed out"))

    result = await gateway.create_refund(make_submission())

    assert result == Unanswered(f"timeout after {MAX_ATTEMPTS} attempts")
    assert route.call_count == MAX_ATTEMPTS


async def test_a_bad_gateway_on_every_attempt_leaves_the_outcome_unanswered(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    route = router.post(REFUND_PATH).mock(
        return_value=komoju_error(502, "bad_gateway", "Invalid response from the upstream.")
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == MAX_ATTEMPTS


# --------------------------------------------------------------------------
# find_refund
# --------------------------------------------------------------------------


async def test_our_refund_is_found_in_the_payment_by_its_reference(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    refunds = [komoju_refund(id="1k0dn3jq5wqv2m9fxe8r7t6ya", description="rf_other"), ours()]
    route = router.get(PAYMENT_PATH).respond(200, json=komoju_payment(refunds))

    result = await gateway.find_refund(make_submission())

    assert result == Accepted(OUR_REFUND)
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.url.path == f"/api/v1/payments/{PAYMENT_ID}"
    assert request.headers["authorization"] == basic_auth(SECRET_KEY)
    assert "x-komoju-idempotency" not in request.headers
    assert request.content == b""


async def test_a_known_komoju_refund_id_is_found_even_without_a_description(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    router.get(PAYMENT_PATH).respond(200, json=komoju_payment([ours(description=None)]))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.reference is None


async def test_a_refund_found_by_id_under_another_reference_is_not_taken_as_ours(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    router.get(PAYMENT_PATH).respond(200, json=komoju_payment([ours(description="rf_other")]))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)


async def test_a_known_refund_that_is_no_longer_listed_is_not_reported_missing(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    router.get(PAYMENT_PATH).respond(200, json=komoju_payment([]))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)


async def test_no_refund_with_our_reference_is_reported_as_not_found(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    others = [komoju_refund(id="1k0dn3jq5wqv2m9fxe8r7t6ya", description="rf_other")]
    router.get(PAYMENT_PATH).respond(200, json=komoju_payment(others))

    result = await gateway.find_refund(make_submission())

    assert result == NotFound()


async def test_a_payment_komoju_does_not_know_has_no_refund_of_ours(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    router.get(PAYMENT_PATH).mock(
        return_value=komoju_error(404, "not_found", "The requested resource could not be found.")
    )

    assert await gateway.find_refund(make_submission()) == NotFound()
    assert isinstance(
        await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID)), Unanswered
    )


async def test_a_cash_pickup_refund_is_found_still_pending(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    refund = ours(redirect_url=f"https://komoju.com/refunds/{REFUND_ID}")
    router.get(PAYMENT_PATH).respond(200, json=komoju_payment([refund]))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.PENDING


@pytest.mark.parametrize(
    "answer",
    [
        {"side_effect": httpx.ConnectTimeout("connect timed out")},
        {"return_value": komoju_error(500, "internal_server_error", "Something went wrong")},
        {"return_value": komoju_error(401, "unauthorized", "User authorization failed.")},
        {"return_value": httpx.Response(404, text="<html>not here</html>")},
        {"return_value": httpx.Response(200, json={"resource": "list", "data": []})},
        {"return_value": httpx.Response(200, json=komoju_payment() | {"refunds": None})},
    ],
)
async def test_a_look_up_without_a_clear_answer_leaves_the_outcome_unanswered(
    gateway: KomojuGateway, router: respx.MockRouter, answer: dict[str, Any]
) -> None:
    router.get(PAYMENT_PATH).mock(**answer)

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)


# --------------------------------------------------------------------------
# parse_webhook
# --------------------------------------------------------------------------


async def test_a_signed_refund_created_event_is_accepted_and_translated(
    gateway: KomojuGateway,
) -> None:
    payload = komoju_event("payment.refund.created", komoju_payment([ours()]), "evt1")

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert (event.event_id, event.event_type) == ("evt1", "payment.refund.created")
    assert event.refund == OUR_REFUND


async def test_the_webhook_and_the_look_up_translate_a_refund_alike(
    gateway: KomojuGateway, router: respx.MockRouter
) -> None:
    payment = komoju_payment([ours(redirect_url="https://komoju.com/refunds/x")])
    router.get(PAYMENT_PATH).respond(200, json=payment)
    payload = komoju_event("payment.refund.created", payment)

    found = await gateway.find_refund(make_submission())
    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert isinstance(found, Accepted)
    assert event.refund == found.refund


async def test_a_webhook_signed_with_the_previous_secret_is_accepted_during_rotation(
    gateway: KomojuGateway,
) -> None:
    payload = komoju_event("payment.refund.created", komoju_payment([ours()]))

    event = gateway.parse_webhook(signed(payload, OLD_WEBHOOK_SECRET), payload.encode(), NOW)

    assert event.refund == OUR_REFUND


async def test_a_signature_in_upper_case_hex_is_the_same_signature(
    gateway: KomojuGateway,
) -> None:
    payload = komoju_event("payment.refund.created", komoju_payment([ours()]))
    headers = {"x-komoju-signature": sign(payload.encode(), WEBHOOK_SECRET).upper()}

    event = gateway.parse_webhook(headers, payload.encode(), NOW)

    assert event.refund is not None


_PAYLOAD = komoju_event("payment.refund.created", komoju_payment([ours()]))
_RESERIALISED = json.dumps(json.loads(_PAYLOAD), indent=2)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(signed(_PAYLOAD, "whk_someone_else"), _PAYLOAD, id="wrong-secret"),
        pytest.param(signed(_PAYLOAD), _PAYLOAD.replace("3000", "30000"), id="tampered"),
        pytest.param(signed(_PAYLOAD), _RESERIALISED, id="same-json-other-bytes"),
        pytest.param({}, _PAYLOAD, id="missing-header"),
        pytest.param({"x-komoju-signature": ""}, _PAYLOAD, id="empty-header"),
        pytest.param({"x-komoju-signature": "z" * 64}, _PAYLOAD, id="not-hex"),
        pytest.param(
            {"x-komoju-signature": sign(_PAYLOAD.encode(), WEBHOOK_SECRET)[:63]},
            _PAYLOAD,
            id="truncated",
        ),
        pytest.param(
            {"x-komoju-signature": "sha256=" + sign(_PAYLOAD.encode(), WEBHOOK_SECRET)},
            _PAYLOAD,
            id="prefixed",
        ),
        pytest.param(
            {"x-komoju-signature": hashlib.sha256(_PAYLOAD.encode()).hexdigest()},
            _PAYLOAD,
            id="plain-hash-without-key",
        ),
    ],
)
async def test_a_webhook_without_a_valid_signature_is_rejected(
    gateway: KomojuGateway, headers: dict[str, str], body: str
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body.encode(), NOW)


async def test_a_webhook_is_rejected_when_no_secret_is_configured(
    http: httpx.AsyncClient,
) -> None:
    gateway = KomojuGateway(make_account(webhook_secrets=()), http)

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(signed(_PAYLOAD), _PAYLOAD.encode(), NOW)


@pytest.mark.parametrize(
    "other_created_at",
    [
        "2026-11-26T10:00:00Z",
        # Outside 1970-2999: no real time, ranked below every real one.
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00+01:00",
        "2999-12-31T23:59:59-01:00",
    ],
)
async def test_a_payment_refunded_event_yields_the_newest_refund(
    gateway: KomojuGateway, other_created_at: str
) -> None:
    refunds = [
        # Listed out of order on purpose: `created_at` decides.
        ours(amount=2000, created_at="2026-11-27T08:00:00Z"),
        komoju_refund(
            id="1k0dn3jq5wqv2m9fxe8r7t6ya",
            amount=3000,
            description="rf_other",
            created_at=other_created_at,
        ),
    ]
    payload = komoju_event("payment.refunded", komoju_payment(refunds), "evt_full")

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert event.event_type == "payment.refunded"
    assert event.refund is not None
    assert (event.refund.pse_refund_id, event.refund.reference) == (REFUND_ID, REFERENCE)


async def test_a_chargeback_is_not_taken_for_the_newest_refund(gateway: KomojuGateway) -> None:
    refunds = [
        ours(created_at="2026-11-27T08:00:00Z"),
        komoju_refund(
            id="8c2bk4xq1t6nq0v5w3z7m9ery",
            description=None,
            chargeback=True,
            created_at="2026-11-27T09:00:00Z",
        ),
    ]
    payload = komoju_event("payment.refund.created", komoju_payment(refunds))

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert event.refund is not None
    assert event.refund.pse_refund_id == REFUND_ID


async def test_a_cash_refund_is_pending_when_created_and_succeeded_once_fully_refunded(
    gateway: KomojuGateway,
) -> None:
    refund = ours(amount=5000, redirect_url=f"https://komoju.com/refunds/{REFUND_ID}")
    created = komoju_event("payment.refund.created", komoju_payment([refund]), "evt_a")
    refunded = komoju_event("payment.refunded", komoju_payment([refund]), "evt_b")

    first = gateway.parse_webhook(signed(created), created.encode(), NOW)
    second = gateway.parse_webhook(signed(refunded), refunded.encode(), NOW)

    assert first.refund is not None and first.refund.state is PseRefundState.PENDING
    assert second.refund is not None and second.refund.state is PseRefundState.SUCCEEDED


@pytest.mark.parametrize("event_type", ["payment.captured", "ping", "refund_request.updated"])
async def test_an_unrelated_event_is_acknowledged_without_a_refund(
    gateway: KomojuGateway, event_type: str
) -> None:
    payload = komoju_event(event_type, komoju_payment([ours()]), "evt_other")

    event = gateway.parse_webhook(signed(payload), payload.encode(), NOW)

    assert (event.event_id, event.event_type, event.refund) == ("evt_other", event_type, None)


async def test_an_event_without_an_id_gets_a_stable_id_from_its_body(
    gateway: KomojuGateway,
) -> None:
    first = json.dumps({"type": "payment.refund.created", "data": komoju_payment([ours()])})
    other = json.dumps({"type": "payment.refund.created", "data": komoju_payment([ours(amount=1)])})

    once = gateway.parse_webhook(signed(first), first.encode(), NOW)
    again = gateway.parse_webhook(signed(first), first.encode(), NOW)
    different = gateway.parse_webhook(signed(other), other.encode(), NOW)

    assert once.event_id == again.event_id == "sha256-" + hashlib.sha256(first.encode()).hexdigest()
    assert different.event_id != once.event_id


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("not json at all", id="not-json"),
        pytest.param(json.dumps([1, 2, 3]), id="array"),
        pytest.param(json.dumps({"id": "evt", "data": komoju_payment([ours()])}), id="no-type"),
        pytest.param(
            json.dumps({"id": "evt", "type": "payment.refunded", "resource": "payment"}),
            id="not-an-event",
        ),
        pytest.param(
            komoju_event("payment.refund.created", {"id": REFUND_ID, "resource": "refund"}),
            id="data-not-a-payment",
        ),
        pytest.param(komoju_event("payment.refunded", komoju_payment([])), id="no-refunds"),
        pytest.param(
            komoju_event("payment.refund.created", komoju_payment([ours(id="")])),
            id="refund-without-id",
        ),
    ],
)
async def test_a_correctly_signed_body_that_is_not_a_readable_event_is_rejected(
    gateway: KomojuGateway, payload: str
) -> None:
    with pytest.raises(InvalidWebhookPayload):
        gateway.parse_webhook(signed(payload), payload.encode(), NOW)
