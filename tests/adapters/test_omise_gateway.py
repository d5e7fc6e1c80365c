"""OmiseGateway against Omise-shaped answers (respx) and independently signed webhooks.

Fixtures follow Omise's API reference (API version 2019-05-29): the Refund
object, the list object and the error object. Omise publishes no helper that
signs webhooks, so `omise_signature` implements the documented scheme here,
apart from the adapter: hex HMAC-SHA256 of "{timestamp}.{raw body}" keyed with
the base64-decoded webhook secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.omise import OMISE_API_VERSION, OmiseGateway
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
SECRET_KEY = "skey_test_5xuy4w91xqz7d1w9u0tRefundsTests"
BASIC_AUTH = "Basic " + base64.b64encode(f"{SECRET_KEY}:".encode()).decode()
WEBHOOK_SECRET = base64.b64encode(b"current webhook secret for omise tests").decode()
OLD_WEBHOOK_SECRET = base64.b64encode(b"previous webhook secret for omise tests").decode()
REFERENCE = "rf_01JD4M7Q2X8V5N6B3C9K0T1W2Y"
IDEMPOTENCY_KEY = "refund-rf_01JD4M7Q2X8V5N6B3C9K0T1W2Y"
CHARGE_ID = "chrg_test_5xuy4w8uqh9m4gvfh8y"
REFUND_ID = "rfnd_test_5xuy4wgj2pj1qp9pl0x"
REFUNDS_PATH = f"/charges/{CHARGE_ID}/refunds"
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
MAX_ATTEMPTS = 4


def make_account(**overrides: Any) -> PseAccount:
    settings: dict[str, Any] = {
        "name": "omise_th",
        "provider": "omise",
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
        "pse_payment_id": CHARGE_ID,
        "amount": Money(150000, "THB"),
        "reason": "requested_by_customer",
        "metadata": {"rma": "R-77"},
    }
    fields.update(overrides)
    return RefundSubmission(**fields)


def omise_refund(**overrides: Any) -> dict[str, Any]:
    """Shaped like Omise's Refund object ("Refund API", attributes and example)."""
    refund_id = overrides.get("id", REFUND_ID)
    refund: dict[str, Any] = {
        "object": "refund",
        "id": refund_id,
        "livemode": False,
        "location": f"{REFUNDS_PATH}/{refund_id}",
        "acquirer_reference_number": None,
        "amount": 150000,
        "approval_code": None,
        "charge": CHARGE_ID,
        "created_at": "2026-11-27T07:59:58Z",
        "currency": "THB",
        "funding_amount": 150000,
        "funding_currency": "THB",
        "metadata": {
            "refund_id": REFERENCE,
            "reason": "requested_by_customer",
            "rma": "R-77",
        },
        "status": "closed",
        "terminal": None,
        "transaction": "trxn_test_5xuy4wgm0q7bkh6y5ve",
        "voided": False,
    }
    refund.update(overrides)
    return refund


def omise_list(
    refunds: list[dict[str, Any]], *, total: int | None = None, offset: int = 0
) -> dict[str, Any]:
    """Shaped like Omise's list object."""
    return {
        "object": "list",
        "data": refunds,
        "limit": 100,
        "offset": offset,
        "total": len(refunds) if total is None else total,
        "location": REFUNDS_PATH,
        "order": "chronological",
        "from": "1970-01-01T00:00:00Z",
        "to": "2026-11-27T08:00:00Z",
    }


def omise_error(status: int, code: str, message: str) -> httpx.Response:
    """Shaped like Omise's error object."""
    anchor = code.replace("_", "-")
    body = {
        "object": "error",
        "location": f"https://www.omise.co/api-errors#{anchor}",
        "code": code,
        "message": message,
    }
    return httpx.Response(status, json=body)


def omise_event(key: str, data: dict[str, Any], event_id: str = "evnt_test_5xuy4x1f") -> bytes:
    """Shaped like an Omise Event as delivered to a webhook endpoint."""
    event = {
        "object": "event",
        "id": event_id,
        "livemode": False,
        "location": f"/events/{event_id}",
        "webhook_deliveries": [],
        "data": data,
        "key": key,
        "created_at": "2026-11-27T08:00:00Z",
    }
    return json.dumps(event).encode()


def omise_signature(secret: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret)
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed(body: bytes, secret: str = WEBHOOK_SECRET, at: datetime = NOW) -> dict[str, str]:
    timestamp = str(int(at.timestamp()))
    return {
        "omise-signature": omise_signature(secret, timestamp, body),
        "omise-signature-timestamp": timestamp,
    }


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> OmiseGateway:
    return OmiseGateway(make_account(), http)


# --------------------------------------------------------------------------
# create_refund
# --------------------------------------------------------------------------


async def test_a_refund_is_sent_as_omise_expects_and_a_closed_one_is_accepted_as_succeeded(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    route = router.post(REFUNDS_PATH).respond(200, json=omise_refund(status="closed"))

    result = await gateway.create_refund(make_submission())

    assert result == Accepted(
        PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.SUCCEEDED,
            amount=Money(150000, "THB"),
            reference=REFERENCE,
            settlement_amount=Money(150000, "THB"),
            pse_payment_ids=(CHARGE_ID,),
        )
    )
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == f"/charges/{CHARGE_ID}/refunds"
    assert request.headers["authorization"] == BASIC_AUTH
    assert request.headers["omise-version"] == OMISE_API_VERSION
    assert request.headers["omise-idempotency-key"] == IDEMPOTENCY_KEY
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "amount": 150000,
        "metadata": {
            "refund_id": REFERENCE,
            "reason": "requested_by_customer",
            "rma": "R-77",
        },
    }


async def test_the_basic_auth_header_is_the_secret_key_with_an_empty_password(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    route = router.post(REFUNDS_PATH).respond(200, json=omise_refund())

    await gateway.create_refund(make_submission())

    scheme, _, token = route.calls.last.request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == f"{SECRET_KEY}:"


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        pytest.param({"status": "pending"}, PseRefundState.PENDING, id="pending"),
        pytest.param({"status": "closed"}, PseRefundState.SUCCEEDED, id="closed"),
        pytest.param(
            {"status": "closed", "voided": True}, PseRefundState.SUCCEEDED, id="closed-voided"
        ),
        pytest.param(
            {"status": None, "voided": True}, PseRefundState.SUCCEEDED, id="no-status-voided"
        ),
        pytest.param({"status": None, "voided": False}, PseRefundState.PENDING, id="no-status"),
    ],
)
async def test_every_documented_refund_status_maps_to_a_domain_state(
    gateway: OmiseGateway,
    router: respx.MockRouter,
    fields: dict[str, Any],
    state: PseRefundState,
) -> None:
    router.post(REFUNDS_PATH).respond(200, json=omise_refund(**fields))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is state
    assert result.refund.failure_code is None


async def test_a_refund_object_from_an_older_api_version_without_status_is_pending(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    legacy = {
        "object": "refund",
        "id": REFUND_ID,
        "location": f"{REFUNDS_PATH}/{REFUND_ID}",
        "amount": 150000,
        "currency": "thb",
        "charge": CHARGE_ID,
        "transaction": "trxn_test_5xuy4wgm0q7bkh6y5ve",
        "created": "2015-01-16T07:23:45Z",
    }
    router.post(REFUNDS_PATH).respond(200, json=legacy)

    result = await gateway.create_refund(make_submission())

    assert result == Accepted(
        PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.PENDING,
            amount=Money(150000, "THB"),
            pse_payment_ids=(CHARGE_ID,),
        )
    )


@pytest.mark.parametrize("status", ["failed", "reversed", "successful", 3])
async def test_a_refund_status_omise_does_not_document_leaves_the_outcome_unanswered(
    gateway: OmiseGateway, router: respx.MockRouter, status: Any
) -> None:
    router.post(REFUNDS_PATH).respond(200, json=omise_refund(status=status))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)


@pytest.mark.parametrize(
    ("amount", "omise_amount", "currency_in_answer"),
    [
        (Money(150000, "THB"), 150000, "THB"),
        (Money(3000, "JPY"), 3000, "JPY"),
        (Money(3000, "JPY"), 3000, "jpy"),
        (Money(2550, "SGD"), 2550, "SGD"),
        (Money(1999, "USD"), 1999, "usd"),
    ],
)
async def test_amounts_travel_in_the_smallest_unit_and_come_back_in_iso_units(
    gateway: OmiseGateway,
    router: respx.MockRouter,
    amount: Money,
    omise_amount: int,
    currency_in_answer: str,
) -> None:
    body = omise_refund(
        amount=omise_amount,
        currency=currency_in_answer,
        funding_amount=omise_amount,
        funding_currency=currency_in_answer,
    )
    route = router.post(REFUNDS_PATH).respond(200, json=body)

    result = await gateway.create_refund(make_submission(amount=amount))

    assert json.loads(route.calls.last.request.content)["amount"] == omise_amount
    assert isinstance(result, Accepted)
    assert result.refund.amount == amount


async def test_the_settlement_amount_is_the_funding_amount_of_a_multi_currency_charge(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    body = omise_refund(amount=1999, currency="USD", funding_amount=69870, funding_currency="THB")
    router.post(REFUNDS_PATH).respond(200, json=body)

    result = await gateway.create_refund(make_submission(amount=Money(1999, "USD")))

    assert isinstance(result, Accepted)
    assert result.refund.amount == Money(1999, "USD")
    assert result.refund.settlement_amount == Money(69870, "THB")


@pytest.mark.parametrize(
    "amount",
    [Money(5120, "KWD"), Money(15000, "KRW"), Money(10000, "CLF"), Money(0, "THB")],
)
async def test_an_amount_omise_cannot_express_is_refused_without_calling_omise(
    gateway: OmiseGateway, router: respx.MockRouter, amount: Money
) -> None:
    route = router.post(REFUNDS_PATH).respond(200, json=omise_refund())

    result = await gateway.create_refund(make_submission(amount=amount))

    assert isinstance(result, Declined)
    assert result.code == "amount_not_supported"
    assert not result.retriable and not result.offline
    assert route.call_count == 0


async def test_our_reference_in_metadata_cannot_be_overwritten_by_caller_metadata(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    route = router.post(REFUNDS_PATH).respond(200, json=omise_refund())
    metadata = {"refund_id": "spoofed", "reason": "spoofed", "": "no key", "note": "x" * 600}

    await gateway.create_refund(make_submission(metadata=metadata))

    sent = json.loads(route.calls.last.request.content)["metadata"]
    assert sent == {
        "refund_id": REFERENCE,
        "reason": "requested_by_customer",
        "note": "x" * 500,
    }


async def test_an_api_version_chosen_in_the_account_options_is_sent(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    gateway = OmiseGateway(make_account(options={"omise_version": "2017-11-02"}), http)
    route = router.post(REFUNDS_PATH).respond(200, json=omise_refund())

    await gateway.create_refund(make_submission())

    assert route.calls.last.request.headers["omise-version"] == "2017-11-02"


@pytest.mark.parametrize(
    ("code", "message", "declined", "offline", "retriable"),
    [
        (
            "failed_refund",
            "amount must be less than or equal to the refundable amount",
            "amount_exceeds_refundable",
            False,
            False,
        ),
        (
            "invalid_amount",
            "refund amount is greater than the remaining amount of the charge",
            "amount_exceeds_refundable",
            False,
            False,
        ),
        ("invalid_charge", "charge has been fully refunded", "already_refunded", False, False),
        ("failed_refund", "charge was already refunded", "already_refunded", False, False),
        (
            "failed_refund",
            "charge can't be refunded after 365 days",
            "refund_window_passed",
            True,
            False,
        ),
        (
            "invalid_charge",
            "charge is too old to be refunded",
            "refund_window_passed",
            True,
            False,
        ),
        (
            "failed_refund",
            "maximum number of refunds has been reached for this charge",
            "refund_limit_reached",
            True,
            False,
        ),
        (
            "failed_refund",
            "this payment must be refunded to a bank account",
            "bank_account_refund_required",
            True,
            False,
        ),
        (
            "failed_refund",
            "refund is not supported for this payment method",
            "refund_not_supported",
            True,
            False,
        ),
        (
            "failed_refund",
            "insufficient balance to make the refund",
            "insufficient_balance",
            False,
            True,
        ),
        ("invalid_charge", "charge is disputed", "payment_disputed", False, False),
        ("failed_refund", "charge can't be refunded", "not_refundable", False, False),
    ],
)
async def test_a_definitive_omise_refusal_is_declined_with_a_stable_code_and_not_retried(
    gateway: OmiseGateway,
    router: respx.MockRouter,
    code: str,
    message: str,
    declined: str,
    offline: bool,
    retriable: bool,
) -> None:
    route = router.post(REFUNDS_PATH).mock(return_value=omise_error(400, code, message))

    result = await gateway.create_refund(make_submission())

    assert result == Declined(code=declined, message=message, offline=offline, retriable=retriable)
    assert route.call_count == 1


async def test_a_charge_omise_does_not_know_is_declined_as_payment_not_found(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    router.post(REFUNDS_PATH).mock(
        return_value=omise_error(404, "not_found", f"charge {CHARGE_ID} was not found")
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert result.code == "payment_not_found"
    assert not result.offline and not result.retriable


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_secret_key_is_declined_without_echoing_any_key(
    gateway: OmiseGateway, router: respx.MockRouter, status: int
) -> None:
    router.post(REFUNDS_PATH).mock(
        return_value=omise_error(
            status,
            "authentication_failure",
            f"authentication failed for {SECRET_KEY} (skey_test_4xc6eevsmz5phbtjcaf)",
        )
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert result.code == "pse_authentication_failed"
    assert SECRET_KEY not in result.message
    assert "skey_" not in result.message
    assert "authentication failed" in result.message


@pytest.mark.parametrize(
    "response",
    [
        omise_error(400, "invalid_charge", "charge is not something we expected"),
        omise_error(400, "bad_request", "metadata is invalid"),
        omise_error(422, "unprocessable_entity", "cannot process"),
        omise_error(409, "conflict", "a request with this key is in progress"),
        httpx.Response(404, text="<html>not here</html>"),
        httpx.Response(400, text="not json"),
        httpx.Response(200, text="<html>proxy login</html>"),
        httpx.Response(200, json={"object": "charge", "id": CHARGE_ID}),
        httpx.Response(200, json=omise_refund(id="re_not_an_omise_id")),
        httpx.Response(200, json=omise_refund(currency="XXX")),
    ],
)
async def test_an_answer_the_gateway_does_not_recognise_leaves_the_outcome_unanswered(
    gateway: OmiseGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    router.post(REFUNDS_PATH).mock(return_value=response)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)


@pytest.mark.parametrize(
    "answer",
    [
        {"side_effect": httpx.ReadTimeout("read timed out")},
        {"side_effect": httpx.ConnectError("connection refused")},
        {"return_value": omise_error(500, "internal_server_error", "internal server error")},
        {"return_value": omise_error(503, "service_unavailable", "service unavailable")},
        {"return_value": omise_error(429, "too_many_requests", "too many requests")},
    ],
)
async def test_a_create_without_an_answer_is_never_resent_because_omise_could_refund_twice(
    gateway: OmiseGateway, router: respx.MockRouter, answer: dict[str, Any]
) -> None:
    route = router.post(REFUNDS_PATH).mock(**answer)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 1


async def test_an_unanswered_create_says_why_without_leaking_the_key(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    router.post(REFUNDS_PATH).mock(side_effect=httpx.ReadTimeout("read timed out"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert result.reason.startswith("timeout after 1 attempts")
    assert SECRET_KEY not in result.reason


# --------------------------------------------------------------------------
# find_refund
# --------------------------------------------------------------------------


async def test_a_known_omise_refund_id_is_looked_up_under_its_charge(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    by_id = router.get(f"{REFUNDS_PATH}/{REFUND_ID}").respond(200, json=omise_refund())
    listing = router.get(REFUNDS_PATH).respond(200, json=omise_list([]))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.state is PseRefundState.SUCCEEDED
    request = by_id.calls.last.request
    assert request.method == "GET"
    assert request.headers["authorization"] == BASIC_AUTH
    assert request.headers["omise-version"] == OMISE_API_VERSION
    assert listing.call_count == 0


async def test_an_unknown_omise_refund_id_falls_back_to_the_charge_refund_list(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    router.get(f"{REFUNDS_PATH}/rfnd_test_missing").mock(
        return_value=omise_error(404, "not_found", "refund rfnd_test_missing was not found")
    )
    listing = router.get(REFUNDS_PATH).respond(200, json=omise_list([omise_refund()]))

    result = await gateway.find_refund(make_submission(pse_refund_id="rfnd_test_missing"))

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert listing.call_count == 1


async def test_a_refund_found_by_id_under_another_reference_is_not_taken_as_ours(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    other = omise_refund(metadata={"refund_id": "rf_someone_else"})
    router.get(f"{REFUNDS_PATH}/{REFUND_ID}").respond(200, json=other)

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)


async def test_a_look_up_by_id_that_keeps_failing_is_retried_then_unanswered(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    route = router.get(f"{REFUNDS_PATH}/{REFUND_ID}").mock(
        return_value=omise_error(503, "service_unavailable", "service unavailable")
    )

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert result == Unanswered(f"HTTP 503 after {MAX_ATTEMPTS} attempts")
    assert route.call_count == MAX_ATTEMPTS


async def test_our_refund_is_found_among_the_charge_refunds_by_its_metadata(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    refunds = [
        omise_refund(id="rfnd_test_other1", metadata={"refund_id": "rf_other"}),
        omise_refund(id="rfnd_test_dashboard", metadata={}),
        omise_refund(status="pending"),
    ]
    route = router.get(REFUNDS_PATH).respond(200, json=omise_list(refunds))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.state is PseRefundState.PENDING
    assert result.refund.reference == REFERENCE
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.url.path == REFUNDS_PATH
    assert dict(request.url.params) == {"limit": "100", "offset": "0", "order": "chronological"}
    assert request.headers["authorization"] == BASIC_AUTH
    assert "omise-idempotency-key" not in request.headers


async def test_the_look_up_follows_the_offset_to_the_second_page(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    first_page = [
        omise_refund(id=f"rfnd_test_other{n:03d}", metadata={"refund_id": f"rf_other_{n}"})
        for n in range(100)
    ]
    second_page = [omise_refund(status="closed")]
    route = router.get(REFUNDS_PATH).mock(
        side_effect=[
            httpx.Response(200, json=omise_list(first_page, total=101)),
            httpx.Response(200, json=omise_list(second_page, total=101, offset=100)),
        ]
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    first, second = (call.request for call in route.calls)
    assert first.url.params["offset"] == "0"
    assert second.url.params["offset"] == "100"


async def test_no_refund_with_our_reference_is_reported_as_not_found(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    others = [omise_refund(id="rfnd_test_other", metadata={"refund_id": "rf_other"})]
    router.get(REFUNDS_PATH).respond(200, json=omise_list(others))

    result = await gateway.find_refund(make_submission())

    assert result == NotFound()


async def test_a_charge_without_refunds_is_reported_as_not_found(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    router.get(REFUNDS_PATH).respond(200, json=omise_list([]))

    assert await gateway.find_refund(make_submission()) == NotFound()


async def test_when_our_reference_was_refunded_twice_the_refund_that_moved_money_is_reported(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    refunds = [
        omise_refund(id="rfnd_test_first", status="pending"),
        omise_refund(id="rfnd_test_second", status="closed"),
    ]
    router.get(REFUNDS_PATH).respond(200, json=omise_list(refunds))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == "rfnd_test_second"
    assert result.refund.state is PseRefundState.SUCCEEDED


async def test_a_listing_that_fails_once_is_retried_because_reading_is_safe(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    route = router.get(REFUNDS_PATH).mock(
        side_effect=[
            omise_error(500, "internal_server_error", "internal server error"),
            httpx.Response(200, json=omise_list([omise_refund()])),
        ]
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert route.call_count == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"side_effect": httpx.ConnectTimeout("connect timed out")},
        {"return_value": omise_error(500, "internal_server_error", "internal server error")},
        {"return_value": omise_error(404, "not_found", f"charge {CHARGE_ID} was not found")},
        {"return_value": omise_error(401, "authentication_failure", "authentication failed")},
        {"return_value": httpx.Response(200, json={"object": "list", "data": []})},
        {"return_value": httpx.Response(200, json={"data": [], "total": 0})},
        {"return_value": httpx.Response(200, json=omise_list([omise_refund(status="weird")]))},
        {"return_value": httpx.Response(200, json=omise_list([], total=3))},
        {"return_value": httpx.Response(200, text="<html>maintenance</html>")},
    ],
)
async def test_a_look_up_without_a_clear_answer_leaves_the_outcome_unanswered(
    gateway: OmiseGateway, router: respx.MockRouter, answer: dict[str, Any]
) -> None:
    router.get(REFUNDS_PATH).mock(**answer)

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)


async def test_a_refund_list_longer_than_the_page_cap_leaves_the_outcome_unanswered(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    page = [omise_refund(id="rfnd_test_other", metadata={"refund_id": "rf_other"})] * 100
    route = router.get(REFUNDS_PATH).respond(200, json=omise_list(page, total=5000))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 10


# --------------------------------------------------------------------------
# parse_webhook
# --------------------------------------------------------------------------


async def test_a_signed_refund_event_is_accepted_and_translated_like_the_create_answer(
    gateway: OmiseGateway, router: respx.MockRouter
) -> None:
    refund = omise_refund(status="closed")
    router.post(REFUNDS_PATH).respond(200, json=refund)
    created = await gateway.create_refund(make_submission())
    body = omise_event("refund.create", refund, "evnt_test_5xuy4x1f")

    event = gateway.parse_webhook(signed(body), body, NOW)

    assert event.event_id == "evnt_test_5xuy4x1f"
    assert event.event_type == "refund.create"
    assert isinstance(created, Accepted)
    assert event.refund == created.refund
    assert event.refund == PseRefund(
        pse_refund_id=REFUND_ID,
        state=PseRefundState.SUCCEEDED,
        amount=Money(150000, "THB"),
        reference=REFERENCE,
        settlement_amount=Money(150000, "THB"),
        pse_payment_ids=(CHARGE_ID,),
    )


async def test_a_pending_refund_event_is_translated_as_pending(gateway: OmiseGateway) -> None:
    body = omise_event("refund.create", omise_refund(status="pending"))

    event = gateway.parse_webhook(signed(body), body, NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.PENDING


async def test_a_webhook_signed_with_the_previous_secret_is_accepted_during_rotation(
    gateway: OmiseGateway,
) -> None:
    body = omise_event("refund.create", omise_refund())

    event = gateway.parse_webhook(signed(body, OLD_WEBHOOK_SECRET), body, NOW)

    assert event.refund is not None


async def test_either_of_two_comma_separated_signatures_may_match(gateway: OmiseGateway) -> None:
    body = omise_event("refund.create", omise_refund())
    headers = signed(body)
    foreign = omise_signature(base64.b64encode(b"rolled-away").decode(), "1", body)
    headers["omise-signature"] = f"{foreign}, {headers['omise-signature'].upper()}"

    event = gateway.parse_webhook(headers, body, NOW)

    assert event.refund is not None


async def test_a_webhook_is_verified_over_the_raw_bytes_not_a_reserialised_body(
    gateway: OmiseGateway,
) -> None:
    body = b'{"object":"event","id":"evnt_test_raw","key":"charge.complete",  "data":{}}'

    event = gateway.parse_webhook(signed(body), body, NOW)

    assert event.event_id == "evnt_test_raw"
    with pytest.raises(InvalidWebhookSignature):
        reserialised = json.dumps(json.loads(body)).encode()
        gateway.parse_webhook(signed(body), reserialised, NOW)


@pytest.mark.parametrize("offset", [timedelta(seconds=300), timedelta(seconds=-300)])
async def test_a_timestamp_exactly_at_the_tolerance_is_accepted(
    gateway: OmiseGateway, offset: timedelta
) -> None:
    body = omise_event("refund.create", omise_refund())

    event = gateway.parse_webhook(signed(body, at=NOW - offset), body, NOW)

    assert event.event_type == "refund.create"


async def test_the_account_tolerance_decides_how_old_a_webhook_may_be(
    http: httpx.AsyncClient,
) -> None:
    gateway = OmiseGateway(make_account(webhook_tolerance_seconds=60), http)
    body = omise_event("refund.create", omise_refund())

    gateway.parse_webhook(signed(body, at=NOW - timedelta(seconds=60)), body, NOW)
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(signed(body, at=NOW - timedelta(seconds=61)), body, NOW)


_BODY = omise_event("refund.create", omise_refund(status="closed"))
_TS = str(int(NOW.timestamp()))
_GOOD = omise_signature(WEBHOOK_SECRET, _TS, _BODY)
# The secret used as text instead of decoded from base64: a near miss of the scheme.
_UNDECODED = hmac.new(WEBHOOK_SECRET.encode(), f"{_TS}.".encode() + _BODY, hashlib.sha256)
# The body alone, without the timestamp: another near miss.
_BODY_ONLY = hmac.new(base64.b64decode(WEBHOOK_SECRET), _BODY, hashlib.sha256)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(
            signed(_BODY, base64.b64encode(b"someone else").decode()), _BODY, id="wrong-secret"
        ),
        pytest.param(signed(_BODY), _BODY.replace(b"closed", b"pending"), id="tampered"),
        pytest.param({}, _BODY, id="no-headers"),
        pytest.param({"omise-signature-timestamp": _TS}, _BODY, id="no-signature"),
        pytest.param({"omise-signature": _GOOD}, _BODY, id="no-timestamp"),
        pytest.param(
            {"omise-signature": "", "omise-signature-timestamp": _TS}, _BODY, id="empty-signature"
        ),
        pytest.param(
            {"omise-signature": "not-hex", "omise-signature-timestamp": _TS},
            _BODY,
            id="not-hex",
        ),
        pytest.param(
            {"omise-signature": _GOOD, "omise-signature-timestamp": "soon"},
            _BODY,
            id="non-numeric-timestamp",
        ),
        pytest.param(
            {"omise-signature": _GOOD, "omise-signature-timestamp": "9" * 5000},
            _BODY,
            id="5000-digits",
        ),
        pytest.param(
            {"omise-signature": _GOOD, "omise-signature-timestamp": str(int(_TS) + 1)},
            _BODY,
            id="other-timestamp",
        ),
        pytest.param(
            {"omise-signature": _UNDECODED.hexdigest(), "omise-signature-timestamp": _TS},
            _BODY,
            id="secret-not-decoded",
        ),
        pytest.param(
            {"omise-signature": _BODY_ONLY.hexdigest(), "omise-signature-timestamp": _TS},
            _BODY,
            id="body-without-timestamp",
        ),
        pytest.param(
            {
                "omise-signature": base64.b64encode(bytes.fromhex(_GOOD)).decode(),
                "omise-signature-timestamp": _TS,
            },
            _BODY,
            id="base64-instead-of-hex",
        ),
        pytest.param(signed(_BODY, at=NOW - timedelta(seconds=301)), _BODY, id="301-seconds-old"),
        pytest.param(signed(_BODY, at=NOW + timedelta(seconds=301)), _BODY, id="301-seconds-ahead"),
    ],
)
async def test_a_webhook_without_a_valid_fresh_signature_is_rejected(
    gateway: OmiseGateway, headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body, NOW)


async def test_a_webhook_is_rejected_when_no_secret_is_configured(
    http: httpx.AsyncClient,
) -> None:
    gateway = OmiseGateway(make_account(webhook_secrets=()), http)

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(signed(_BODY), _BODY, NOW)


async def test_a_configured_secret_that_is_not_base64_is_skipped_and_the_others_still_work(
    http: httpx.AsyncClient,
) -> None:
    gateway = OmiseGateway(make_account(webhook_secrets=("not base64!", WEBHOOK_SECRET)), http)

    event = gateway.parse_webhook(signed(_BODY), _BODY, NOW)

    assert event.refund is not None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json at all", id="not-json"),
        pytest.param(b"[1, 2, 3]", id="json-list"),
        pytest.param(json.dumps(omise_refund()).encode(), id="bare-refund"),
        pytest.param(
            json.dumps(
                {"object": "event", "key": "refund.create", "data": omise_refund()}
            ).encode(),
            id="no-event-id",
        ),
        pytest.param(
            omise_event("refund.create", {"object": "charge", "id": CHARGE_ID}),
            id="refund-event-with-a-charge",
        ),
        pytest.param(
            omise_event("refund.create", omise_refund(status="weird")), id="unknown-status"
        ),
    ],
)
async def test_a_correctly_signed_body_that_is_not_a_readable_event_is_rejected(
    gateway: OmiseGateway, body: bytes
) -> None:
    with pytest.raises(InvalidWebhookPayload):
        gateway.parse_webhook(signed(body), body, NOW)


async def test_an_unrelated_event_is_acknowledged_without_a_refund(
    gateway: OmiseGateway,
) -> None:
    charge = {"object": "charge", "id": CHARGE_ID, "status": "successful", "amount": 150000}
    body = omise_event("charge.complete", charge, "evnt_test_charge")

    event = gateway.parse_webhook(signed(body), body, NOW)

    assert (event.event_id, event.event_type, event.refund) == (
        "evnt_test_charge",
        "charge.complete",
        None,
    )
