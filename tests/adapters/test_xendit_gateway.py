"""XenditGateway against Xendit-shaped answers (respx) and token-authenticated webhooks.

Fixtures follow Xendit's API reference and the models of its official SDKs:
the refund object, the list `{"data", "has_more"}`, the error body
`{"error_code", "message"}` and the refund webhook `{"event", "business_id",
"created", "data"}`. Xendit signs nothing (a static `x-callback-token`), so
there is no SDK signer: the tests set the header as Xendit does.
"""

from __future__ import annotations

import base64
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.xendit import XenditGateway
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
API_KEY = "xnd_development_RefundsServiceKeyForTestsOnly000000000000000000000"
CALLBACK_TOKEN = "cbtok_current_9Qm3Zr7Lx2Vb8Nc4Kd6Pf1Hs5Jt0Wy"
OLD_CALLBACK_TOKEN = "cbtok_previous_4Hs5Jt0Wy9Qm3Zr7Lx2Vb8Nc4Kd6Pf"
REFERENCE = "rf_01JD4M7Q2X8V5N6B3C9K0T1W2Y"
IDEMPOTENCY_KEY = "refund-rf_01JD4M7Q2X8V5N6B3C9K0T1W2Y"
PAYMENT_REQUEST_ID = "pr-1102feb0-bb79-47ae-9d1e-e69394d3949c"
PAYMENT_ID = "py-3cd658ae-25b9-4659-aa36-596ae41a809f"
INVOICE_ID = "65fc7522ff846905c2fc1c8d"
REFUND_ID = "rfd-6f4a377d-a201-437f-9119-f8b00cbbe857"
OTHER_REFUND_ID = "rfd-fca8d8bc-497c-42a5-b16f-97825323502a"
BUSINESS_ID = "5f27a14a9bf05c73dd040bc8"
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
MAX_ATTEMPTS = 4
BASIC = "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()


def make_account(**overrides: Any) -> PseAccount:
    settings: dict[str, Any] = {
        "name": "xendit_id",
        "provider": "xendit",
        "api_key": API_KEY,
        "base_url": BASE_URL,
        "webhook_secrets": (CALLBACK_TOKEN, OLD_CALLBACK_TOKEN),
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
        "pse_payment_id": PAYMENT_REQUEST_ID,
        "amount": Money(15_000_000, "IDR"),  # Rp150,000
        "reason": "requested_by_customer",
        "metadata": {"rma": "R-77"},
    }
    fields.update(overrides)
    return RefundSubmission(**fields)


def xendit_refund(**overrides: Any) -> dict[str, Any]:
    """Shaped like Xendit's refund object (API reference, "Refund a payment request")."""
    refund: dict[str, Any] = {
        "id": REFUND_ID,
        "payment_request_id": PAYMENT_REQUEST_ID,
        "payment_id": PAYMENT_ID,
        "invoice_id": "",
        "amount": 150000,
        "payment_method_type": "EWALLET",
        "channel_code": "OVO",
        "currency": "IDR",
        "status": "PENDING",
        "reason": "REQUESTED_BY_CUSTOMER",
        "reference_id": REFERENCE,
        "failure_code": None,
        "refund_fee_amount": None,
        "created": "2026-11-27T08:00:00.651482099Z",
        "updated": "2026-11-27T08:00:00.651482291Z",
        "metadata": {"refund_id": REFERENCE, "reason": "requested_by_customer", "rma": "R-77"},
    }
    refund.update(overrides)
    return refund


def xendit_list(refunds: list[dict[str, Any]], *, has_more: bool = False) -> dict[str, Any]:
    """Shaped like Xendit's RefundList."""
    return {"data": refunds, "has_more": has_more}


def xendit_error(status: int, code: str, message: str) -> httpx.Response:
    """Shaped like Xendit's error body."""
    return httpx.Response(status, json={"error_code": code, "message": message})


def xendit_event(event: str, data: Any, created: str = "2026-11-27T08:00:05.566Z") -> bytes:
    """Shaped like Xendit's refund webhook ("Refund webhook notification")."""
    envelope = {"event": event, "business_id": BUSINESS_ID, "created": created, "data": data}
    return json.dumps(envelope).encode()


def token(value: str = CALLBACK_TOKEN) -> dict[str, str]:
    # Headers arrive lower-cased (the PseGateway contract).
    return {"x-callback-token": value, "content-type": "application/json"}


def body_of(request: httpx.Request) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(request.content)
    return parsed


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> XenditGateway:
    return XenditGateway(make_account(), http)


# --------------------------------------------------------------------------
# create_refund: the request
# --------------------------------------------------------------------------


async def test_a_pending_refund_is_accepted_and_sent_as_xendit_expects(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").respond(200, json=xendit_refund())

    result = await gateway.create_refund(make_submission())

    assert result == Accepted(
        PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.PENDING,
            amount=Money(15_000_000, "IDR"),
            reference=REFERENCE,
            pse_payment_ids=(PAYMENT_REQUEST_ID, PAYMENT_ID),
        )
    )
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == "/refunds"
    assert request.headers["authorization"] == BASIC
    assert request.headers["idempotency-key"] == IDEMPOTENCY_KEY
    assert request.headers["content-type"] == "application/json"
    assert "for-user-id" not in request.headers
    assert body_of(request) == {
        "payment_request_id": PAYMENT_REQUEST_ID,
        "reference_id": REFERENCE,
        "amount": 150000,
        "currency": "IDR",
        "reason": "REQUESTED_BY_CUSTOMER",
        "metadata": {"refund_id": REFERENCE, "reason": "requested_by_customer", "rma": "R-77"},
    }


async def test_basic_auth_carries_the_secret_key_as_user_and_an_empty_password(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").respond(200, json=xendit_refund())

    await gateway.create_refund(make_submission())

    scheme, _, encoded = route.calls.last.request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"{API_KEY}:"


async def test_rupiah_travel_as_a_whole_number_of_rupiah_not_sen(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").respond(200, json=xendit_refund())

    await gateway.create_refund(make_submission(amount=Money(15_000_000, "IDR")))

    raw = route.calls.last.request.content.decode()
    assert '"amount": 150000,' in raw or '"amount":150000,' in raw
    assert isinstance(body_of(route.calls.last.request)["amount"], int)


async def test_rupiah_with_sen_are_refused_without_calling_xendit(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").respond(200, json=xendit_refund())

    result = await gateway.create_refund(make_submission(amount=Money(15_000_050, "IDR")))

    assert isinstance(result, Declined)
    assert result.code == "amount_not_supported"
    assert not result.offline and not result.retriable
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("amount", "wire", "wire_type"),
    [
        (Money(150_000, "PHP"), 1500, int),
        (Money(149_950, "PHP"), 1499.5, float),
        (Money(149_999, "PHP"), 1499.99, float),
        (Money(1, "PHP"), 0.01, float),
        (Money(250_000, "VND"), 250000, int),
        (Money(12_345, "THB"), 123.45, float),
    ],
)
async def test_amounts_travel_in_major_units_and_come_back_in_iso_minor_units(
    gateway: XenditGateway,
    router: respx.MockRouter,
    amount: Money,
    wire: float,
    wire_type: type,
) -> None:
    answer = xendit_refund(amount=wire, currency=amount.currency)
    route = router.post("/refunds").respond(200, json=answer)

    result = await gateway.create_refund(make_submission(amount=amount))

    sent = body_of(route.calls.last.request)
    assert sent["amount"] == wire
    assert type(sent["amount"]) is wire_type
    assert sent["currency"] == amount.currency
    assert isinstance(result, Accepted)
    assert result.refund.amount == amount


@pytest.mark.parametrize(
    "amount",
    [Money(1000, "KWD"), Money(1000, "CHF"), Money(1000, "INR"), Money(0, "IDR")],
)
async def test_an_amount_xendit_cannot_express_is_refused_without_calling_xendit(
    gateway: XenditGateway, router: respx.MockRouter, amount: Money
) -> None:
    route = router.post("/refunds").respond(200, json=xendit_refund())

    result = await gateway.create_refund(make_submission(amount=amount))

    assert isinstance(result, Declined)
    assert result.code == "amount_not_supported"
    assert route.call_count == 0


async def test_an_invoice_is_refunded_by_invoice_id(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").respond(
        200, json=xendit_refund(payment_request_id="", invoice_id=INVOICE_ID)
    )

    result = await gateway.create_refund(make_submission(pse_payment_id=INVOICE_ID))

    sent = body_of(route.calls.last.request)
    assert sent["invoice_id"] == INVOICE_ID
    assert "payment_request_id" not in sent
    assert isinstance(result, Accepted)


@pytest.mark.parametrize(
    "payment_id",
    [
        "py-1402feb0-8b79-85ae-9d1e-e69394d3949c",
        "ddpy-3cd658ae-25b9-4659-aa36-596ae41a809f",
        "ewc_bb8c3po-c3po-r2d2-c3po-r2d2c3por2d2",
        "pr-",
        "65fc7522ff846905c2fc1c8",
    ],
)
async def test_a_payment_id_that_is_neither_a_payment_request_nor_an_invoice_is_refused(
    gateway: XenditGateway, router: respx.MockRouter, payment_id: str
) -> None:
    route = router.post("/refunds").respond(200, json=xendit_refund())

    result = await gateway.create_refund(make_submission(pse_payment_id=payment_id))

    assert isinstance(result, Declined)
    assert result.code == "payment_id_not_supported"
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("reason", "xendit_reason"),
    [
        ("duplicate", "DUPLICATE"),
        ("fraudulent", "FRAUDULENT"),
        ("requested_by_customer", "REQUESTED_BY_CUSTOMER"),
        ("product_not_received", "REQUESTED_BY_CUSTOMER"),
        ("product_not_as_described", "REQUESTED_BY_CUSTOMER"),
        ("order_canceled", "CANCELLATION"),
        ("other", "OTHERS"),
        ("something_new", "OTHERS"),
    ],
)
async def test_our_reasons_map_to_xendits_and_travel_whole_in_metadata(
    gateway: XenditGateway, router: respx.MockRouter, reason: str, xendit_reason: str
) -> None:
    route = router.post("/refunds").respond(200, json=xendit_refund())

    await gateway.create_refund(make_submission(reason=reason))

    sent = body_of(route.calls.last.request)
    assert sent["reason"] == xendit_reason
    assert sent["metadata"]["reason"] == reason


async def test_metadata_is_fitted_to_xendit_limits_without_losing_the_reference(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").respond(200, json=xendit_refund())
    metadata = {
        "refund_id": "spoofed",
        "reason": "spoofed",
        "k" * 41: "key too long",
        "empty": "",
        "note": "x" * 600,
        **{f"extra_{n:02d}": str(n) for n in range(60)},
    }

    await gateway.create_refund(make_submission(metadata=metadata))

    sent = body_of(route.calls.last.request)
    assert sent["reference_id"] == REFERENCE
    assert len(sent["metadata"]) == 50
    assert sent["metadata"]["refund_id"] == REFERENCE
    assert sent["metadata"]["reason"] == "requested_by_customer"
    assert sent["metadata"]["note"] == "x" * 500
    assert "k" * 41 not in sent["metadata"]
    assert "empty" not in sent["metadata"]


async def test_a_xenplatform_sub_account_is_named_in_for_user_id(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    gateway = XenditGateway(make_account(options={"for_user_id": BUSINESS_ID}), http)
    create = router.post("/refunds").respond(200, json=xendit_refund())
    get = router.get(f"/refunds/{REFUND_ID}").respond(200, json=xendit_refund())

    await gateway.create_refund(make_submission())
    await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert create.calls.last.request.headers["for-user-id"] == BUSINESS_ID
    assert get.calls.last.request.headers["for-user-id"] == BUSINESS_ID


# --------------------------------------------------------------------------
# create_refund: the answer
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "failure_code", "state", "domain_failure_code"),
    [
        ("PENDING", None, PseRefundState.PENDING, None),
        ("SUCCEEDED", None, PseRefundState.SUCCEEDED, None),
        ("FAILED", "INSUFFICIENT_BALANCE", PseRefundState.FAILED, "insufficient_balance"),
        ("FAILED", "ACCOUNT_NOT_FOUND", PseRefundState.FAILED, "account_not_found"),
        ("FAILED", None, PseRefundState.FAILED, "unknown"),
        ("CANCELLED", None, PseRefundState.FAILED, "cancelled"),
    ],
)
async def test_every_xendit_refund_status_maps_to_a_domain_state(
    gateway: XenditGateway,
    router: respx.MockRouter,
    status: str,
    failure_code: str | None,
    state: PseRefundState,
    domain_failure_code: str | None,
) -> None:
    body = xendit_refund(status=status, failure_code=failure_code)
    router.post("/refunds").respond(200, json=body)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is state
    assert result.refund.failure_code == domain_failure_code
    if state is PseRefundState.FAILED and domain_failure_code != "unknown":
        assert result.refund.failure_message
    else:
        assert result.refund.failure_message is None


async def test_the_refund_fee_is_read_in_the_refund_currency(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    body = xendit_refund(status="SUCCEEDED", refund_fee_amount=2500)
    router.post("/refunds").respond(200, json=body)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.fee == Money(250_000, "IDR")


async def test_a_numeric_string_amount_as_in_the_reference_examples_is_read(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.post("/refunds").respond(200, json=xendit_refund(amount="150000"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.amount == Money(15_000_000, "IDR")


async def test_the_reference_is_read_from_metadata_when_reference_id_is_absent(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.post("/refunds").respond(200, json=xendit_refund(reference_id=None))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.reference == REFERENCE


@pytest.mark.parametrize(
    "body",
    [
        xendit_refund(status="REQUIRES_ACTION"),
        xendit_refund(status=None),
        xendit_refund(id=""),
        {"data": [xendit_refund()]},
        ["not", "an", "object"],
    ],
)
async def test_a_success_status_without_a_readable_refund_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter, body: Any
) -> None:
    router.post("/refunds").respond(200, json=body)

    assert isinstance(await gateway.create_refund(make_submission()), Unanswered)


async def test_a_success_status_with_a_body_that_is_not_json_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.post("/refunds").respond(200, text="<html>gateway</html>")

    assert isinstance(await gateway.create_refund(make_submission()), Unanswered)


async def test_an_answer_for_another_reference_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.post("/refunds").respond(200, json=xendit_refund(reference_id="rf_someone_else"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert "another reference" in result.reason


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (1499.995, "PHP"),
        (-1500, "PHP"),
        ("n/a", "PHP"),
        (True, "PHP"),
        (None, "PHP"),
        (1500, "XXQ"),
        (1500, None),
        # An exponent beyond decimal arithmetic's, a float past 64 bits, digits
        # that are not ASCII (Decimal() reads them), not a number.
        ("1e999999999", "PHP"),
        (1e300, "PHP"),
        ("\u0661\u0665\u0660\u0660", "PHP"),
        ("NaN", "PHP"),
    ],
)
async def test_an_amount_xendit_answers_that_cannot_be_read_exactly_is_left_out(
    gateway: XenditGateway, router: respx.MockRouter, amount: Any, currency: Any
) -> None:
    answer = xendit_refund(amount=amount, currency=currency)
    router.post("/refunds").respond(200, json=answer)

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.amount is None


# --------------------------------------------------------------------------
# create_refund: errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_code", "message", "code", "offline", "retriable"),
    [
        (
            400,
            "MAXIMUM_REFUND_AMOUNT_REACHED",
            "Refund amount has exceeded the refundable amount of the payment",
            "amount_exceeds_refundable",
            False,
            False,
        ),
        (
            400,
            "REFUND_AMOUNT_EXCEEDED",
            "Refund amount specified in refund request must be less than or equal to "
            "unrefunded capture amount.",
            "amount_exceeds_refundable",
            False,
            False,
        ),
        (
            400,
            "INSUFFICIENT_BALANCE",
            "There is insufficient balance in your account to perform a refund.",
            "insufficient_balance",
            False,
            True,
        ),
        (
            403,
            "INELIGIBLE_TRANSACTION",
            "Requested refund transaction cannot be processed as the transaction is in "
            '"FAILED", "PENDING", or "VOIDED" status',
            "payment_not_collected",
            False,
            False,
        ),
        (
            400,
            "INELIGIBLE_TRANSACTION_STATUS",
            "Feature is not allowed for the payment request because of its current status.",
            "payment_not_collected",
            False,
            False,
        ),
        (
            403,
            "REFUND_NOT_SUPPORTED",
            "Refund feature is not available for this payment channel.",
            "refund_not_supported",
            True,
            False,
        ),
        (
            400,
            "PARTIAL_REFUND_NOT_SUPPORTED",
            "Partial refund is not supported for this channel",
            "partial_refund_not_supported",
            False,
            False,
        ),
        (
            403,
            "PARTIAL_REFUND_NOT_SUPPORTED",
            "Partial Refund feature is not available for this payment channel.",
            "partial_refund_not_supported",
            False,
            False,
        ),
        (
            400,
            "PARTIAL_REFUND_COUNTS_EXCEEDED",
            "Number of partial refunds for this payment request has exceeded what is allowed.",
            "partial_refund_limit_reached",
            False,
            False,
        ),
        (
            404,
            "DATA_NOT_FOUND",
            "ID specified in request cannot be found.",
            "payment_not_found",
            False,
            False,
        ),
        (
            400,
            "TRANSACTION_NOT_FOUND",
            "Transaction not found",
            "payment_not_found",
            False,
            False,
        ),
        (
            400,
            "API_VALIDATION_ERROR",
            '"reason" must be one of [FRAUDULENT, DUPLICATE, REQUESTED_BY_CUSTOMER, '
            "CANCELLATION, OTHERS]",
            "invalid_request",
            False,
            False,
        ),
        (
            400,
            "TEMPORARILY_UNAVAILABLE",
            "Requested feature is unavailable during this timing.",
            "temporarily_unavailable",
            False,
            True,
        ),
    ],
)
async def test_xendit_refusals_map_to_domain_declines(
    gateway: XenditGateway,
    router: respx.MockRouter,
    status: int,
    error_code: str,
    message: str,
    code: str,
    offline: bool,
    retriable: bool,
) -> None:
    route = router.post("/refunds").mock(return_value=xendit_error(status, error_code, message))

    result = await gateway.create_refund(make_submission())

    assert result == Declined(code=code, message=message, offline=offline, retriable=retriable)
    assert route.call_count == 1  # an answer is never retried


@pytest.mark.parametrize(
    "message",
    [
        'Requested refund transaction cannot be processed as the transaction is in "FAILED", '
        '"PENDING", or "VOIDED" status',
        # Whatever the words say: the immediate error is about the payment's status.
        "The transaction is past the refund window of the channel",
    ],
)
async def test_an_immediate_ineligible_transaction_stops_for_a_person_and_is_never_paid_out(
    gateway: XenditGateway, router: respx.MockRouter, message: str
) -> None:
    # The payment is FAILED, PENDING or VOIDED: the payer was never charged.
    router.post("/refunds").mock(return_value=xendit_error(403, "INELIGIBLE_TRANSACTION", message))

    result = await gateway.create_refund(make_submission())

    assert result == Declined(code="payment_not_collected", message=message)
    assert not result.offline and not result.retriable


async def test_a_refund_failed_past_the_refund_period_goes_to_an_offline_payout(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    failed = xendit_refund(status="FAILED", failure_code="INELIGIBLE_TRANSACTION")
    router.post("/refunds").mock(return_value=httpx.Response(200, json=failed))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert (result.code, result.offline, result.retriable) == ("refund_window_passed", True, False)
    assert "another way" in result.message


async def test_a_refund_failed_past_the_refund_period_says_so_in_its_webhook(
    gateway: XenditGateway,
) -> None:
    body = xendit_event(
        "refund.failed", xendit_refund(status="FAILED", failure_code="INELIGIBLE_TRANSACTION")
    )

    event = gateway.parse_webhook(token(), body, NOW)

    assert event.refund is not None
    assert event.refund.failure_code == "ineligible_transaction"
    assert "refund period" in (event.refund.failure_message or "")


@pytest.mark.parametrize(
    ("status", "error_code"),
    [
        (409, "IDEMPOTENCY_ERROR"),
        (409, "DUPLICATE_ERROR"),
        (400, "REFUND_IN_PROGRESS"),
    ],
)
async def test_a_refusal_that_may_stand_for_our_own_refund_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter, status: int, error_code: str
) -> None:
    router.post("/refunds").mock(return_value=xendit_error(status, error_code, "see message"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert error_code in result.reason


@pytest.mark.parametrize(
    ("status", "error_code"),
    [(401, "INVALID_API_KEY"), (403, "REQUEST_FORBIDDEN_ERROR")],
)
async def test_a_rejected_key_is_an_authentication_failure_without_the_key_in_it(
    gateway: XenditGateway, router: respx.MockRouter, status: int, error_code: str
) -> None:
    message = f"API key {API_KEY} is invalid or lacks the refund permission ({BASIC})"
    router.post("/refunds").mock(return_value=xendit_error(status, error_code, message))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Declined)
    assert result.code == "pse_authentication_failed"
    assert API_KEY not in result.message
    assert BASIC.split()[1] not in result.message
    assert "[redacted]" in result.message


async def test_a_key_of_any_xendit_format_is_redacted_from_unanswered_reasons(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    other_key = "xnd_production_P9xKq2Lm4WkE1pZz0Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0"
    router.post("/refunds").mock(
        return_value=xendit_error(400, "SOMETHING_NEW", f"key {other_key} cannot do this")
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert other_key not in result.reason
    assert "SOMETHING_NEW" in result.reason


@pytest.mark.parametrize(
    "response",
    [
        xendit_error(400, "SOME_FUTURE_CODE", "Something Xendit added later"),
        xendit_error(422, "MAXIMUM_REFUND_AMOUNT_REACHED", "unexpected status for this code"),
        xendit_error(403, "CHANNEL_NOT_ACTIVATED", "not for refunds"),
        httpx.Response(400, text="Bad Request"),
        httpx.Response(404, text="Not Found"),
        httpx.Response(302, headers={"location": "https://example.invalid/"}),
    ],
)
async def test_an_answer_we_do_not_recognise_is_unanswered_never_a_guess(
    gateway: XenditGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    router.post("/refunds").mock(return_value=response)

    assert isinstance(await gateway.create_refund(make_submission()), Unanswered)


async def test_an_unavailable_channel_is_retried_with_the_same_key_then_unanswered(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").mock(
        return_value=xendit_error(
            503,
            "CHANNEL_UNAVAILABLE",
            "The channel requested is currently experiencing unexpected issues.",
        )
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == MAX_ATTEMPTS
    keys = {call.request.headers["idempotency-key"] for call in route.calls}
    assert keys == {IDEMPOTENCY_KEY}
    bodies = {call.request.content for call in route.calls}
    assert len(bodies) == 1


async def test_a_rate_limit_is_retried_with_the_same_key_until_xendit_answers(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").mock(
        side_effect=[
            xendit_error(429, "RATE_LIMIT_EXCEEDED", "Too many requests"),
            xendit_error(500, "SERVER_ERROR", "An unexpected error occured"),
            httpx.Response(200, json=xendit_refund()),
        ]
    )

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Accepted)
    assert route.call_count == 3
    assert {c.request.headers["idempotency-key"] for c in route.calls} == {IDEMPOTENCY_KEY}


async def test_timeouts_on_every_attempt_are_unanswered(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.post("/refunds").mock(side_effect=httpx.ReadTimeout("timed out"))

    result = await gateway.create_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert "timeout" in result.reason
    assert route.call_count == MAX_ATTEMPTS


# --------------------------------------------------------------------------
# find_refund
# --------------------------------------------------------------------------


async def test_a_known_refund_is_fetched_by_its_xendit_id(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.get(f"/refunds/{REFUND_ID}").respond(200, json=xendit_refund(status="SUCCEEDED"))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert result == Accepted(
        PseRefund(
            pse_refund_id=REFUND_ID,
            state=PseRefundState.SUCCEEDED,
            amount=Money(15_000_000, "IDR"),
            reference=REFERENCE,
            pse_payment_ids=(PAYMENT_REQUEST_ID, PAYMENT_ID),
        )
    )
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.headers["authorization"] == BASIC
    assert "idempotency-key" not in request.headers


async def test_a_refund_id_xendit_does_not_know_falls_back_to_the_payments_refunds(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.get(f"/refunds/{REFUND_ID}").mock(
        return_value=xendit_error(404, "DATA_NOT_FOUND", "Refund not found")
    )
    listing = router.get("/refunds").respond(200, json=xendit_list([xendit_refund()]))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert listing.calls.last.request.url.params["payment_request_id"] == PAYMENT_REQUEST_ID


@pytest.mark.parametrize(
    "response",
    [
        xendit_error(400, "API_VALIDATION_ERROR", "bad id"),
        xendit_error(401, "INVALID_API_KEY", "no"),
        httpx.Response(200, json=xendit_refund(status="WHATEVER")),
    ],
)
async def test_a_look_up_by_id_without_a_clear_answer_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    router.get(f"/refunds/{REFUND_ID}").mock(return_value=response)
    listing = router.get("/refunds").respond(200, json=xendit_list([]))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)
    assert listing.call_count == 0


async def test_a_look_up_by_id_that_times_out_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.get(f"/refunds/{REFUND_ID}").mock(side_effect=httpx.ConnectTimeout("slow"))

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)
    assert route.call_count == MAX_ATTEMPTS


async def test_a_refund_found_by_id_with_another_reference_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.get(f"/refunds/{REFUND_ID}").respond(
        200, json=xendit_refund(reference_id="rf_someone_else", metadata=None)
    )

    result = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    assert isinstance(result, Unanswered)


async def test_without_an_id_our_refund_is_found_among_the_payments_refunds_by_reference(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    someone_else = xendit_refund(
        id=OTHER_REFUND_ID, reference_id="rf_someone_else", status="SUCCEEDED", metadata=None
    )
    route = router.get("/refunds").respond(
        200,
        json=xendit_list(
            [someone_else, xendit_refund(status="FAILED", failure_code="REFUND_FAILED")]
        ),
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == REFUND_ID
    assert result.refund.state is PseRefundState.FAILED
    assert result.refund.failure_code == "refund_failed"
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.url.path == "/refunds"
    assert dict(request.url.params) == {"payment_request_id": PAYMENT_REQUEST_ID}
    assert request.headers["authorization"] == BASIC


async def test_an_invoices_refunds_are_listed_by_invoice_id(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.get("/refunds").respond(
        200, json=xendit_list([xendit_refund(payment_request_id="", invoice_id=INVOICE_ID)])
    )

    result = await gateway.find_refund(make_submission(pse_payment_id=INVOICE_ID))

    assert isinstance(result, Accepted)
    assert dict(route.calls.last.request.url.params) == {"invoice_id": INVOICE_ID}


async def test_a_refund_matched_by_the_metadata_copy_of_the_reference_is_found(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.get("/refunds").respond(200, json=xendit_list([xendit_refund(reference_id=None)]))

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.reference == REFERENCE


async def test_a_complete_list_without_our_reference_proves_xendit_has_nothing(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    someone_else = xendit_refund(id=OTHER_REFUND_ID, reference_id="rf_someone_else", metadata=None)
    router.get("/refunds").respond(200, json=xendit_list([someone_else]))

    assert isinstance(await gateway.find_refund(make_submission()), NotFound)


async def test_an_empty_list_proves_xendit_has_nothing(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.get("/refunds").respond(200, json=xendit_list([]))

    assert isinstance(await gateway.find_refund(make_submission()), NotFound)


async def test_the_list_is_followed_page_by_page_with_after_id(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    first_page = [
        xendit_refund(id=f"rfd-page1-{n}", reference_id=f"rf_other_{n}", metadata=None)
        for n in range(10)
    ]
    route = router.get("/refunds").mock(
        side_effect=[
            httpx.Response(200, json=xendit_list(first_page, has_more=True)),
            httpx.Response(200, json=xendit_list([xendit_refund(status="SUCCEEDED")])),
        ]
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.state is PseRefundState.SUCCEEDED
    assert route.call_count == 2
    assert "after_id" not in route.calls[0].request.url.params
    assert dict(route.calls[1].request.url.params) == {
        "payment_request_id": PAYMENT_REQUEST_ID,
        "after_id": "rfd-page1-9",
    }


async def test_when_several_refunds_carry_our_reference_the_one_that_moved_money_is_reported(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.get("/refunds").respond(
        200,
        json=xendit_list(
            [
                xendit_refund(id="rfd-a", status="FAILED", failure_code="REFUND_FAILED"),
                xendit_refund(id="rfd-b", status="SUCCEEDED"),
                xendit_refund(id="rfd-c", status="PENDING"),
            ]
        ),
    )

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Accepted)
    assert result.refund.pse_refund_id == "rfd-b"


@pytest.mark.parametrize(
    "body",
    [
        {"data": [xendit_refund(id="rfd-x", reference_id="rf_other", metadata=None)]},
        {"data": [], "has_more": "false"},
        {"data": [], "has_more": True},
        {"data": None, "has_more": False},
        {"has_more": False},
        [],
    ],
)
async def test_a_list_that_cannot_be_followed_to_its_end_proves_nothing(
    gateway: XenditGateway, router: respx.MockRouter, body: Any
) -> None:
    router.get("/refunds").respond(200, json=body)

    assert isinstance(await gateway.find_refund(make_submission()), Unanswered)


async def test_a_matching_refund_that_cannot_be_read_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    router.get("/refunds").respond(200, json=xendit_list([xendit_refund(status="REVERSED")]))

    assert isinstance(await gateway.find_refund(make_submission()), Unanswered)


@pytest.mark.parametrize(
    "response",
    [
        xendit_error(503, "SERVER_ERROR", "down"),
        xendit_error(400, "API_VALIDATION_ERROR", "bad filter"),
        xendit_error(401, "INVALID_API_KEY", "no"),
    ],
)
async def test_a_list_that_fails_is_unanswered(
    gateway: XenditGateway, router: respx.MockRouter, response: httpx.Response
) -> None:
    router.get("/refunds").mock(return_value=response)

    assert isinstance(await gateway.find_refund(make_submission()), Unanswered)


async def test_an_endless_list_is_unanswered_after_a_bounded_number_of_pages(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    pages = iter(range(1000))

    def page(request: httpx.Request) -> httpx.Response:
        n = next(pages)
        other = xendit_refund(id=f"rfd-{n}", reference_id="rf_other", metadata=None)
        return httpx.Response(200, json=xendit_list([other], has_more=True))

    route = router.get("/refunds").mock(side_effect=page)

    result = await gateway.find_refund(make_submission())

    assert isinstance(result, Unanswered)
    assert route.call_count == 20


async def test_a_payment_id_xendit_cannot_filter_on_is_unanswered_without_a_call(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    route = router.get("/refunds").respond(200, json=xendit_list([]))

    result = await gateway.find_refund(make_submission(pse_payment_id="py-unknown"))

    assert isinstance(result, Unanswered)
    assert route.call_count == 0


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------


async def test_a_refund_succeeded_webhook_translates_like_the_look_up(
    gateway: XenditGateway, router: respx.MockRouter
) -> None:
    refund = xendit_refund(status="SUCCEEDED", refund_fee_amount=2500)
    router.get(f"/refunds/{REFUND_ID}").respond(200, json=refund)
    looked_up = await gateway.find_refund(make_submission(pse_refund_id=REFUND_ID))

    event = gateway.parse_webhook(token(), xendit_event("refund.succeeded", refund), NOW)

    assert isinstance(looked_up, Accepted)
    assert event.event_type == "refund.succeeded"
    assert event.refund == looked_up.refund
    assert event.refund == PseRefund(
        pse_refund_id=REFUND_ID,
        state=PseRefundState.SUCCEEDED,
        amount=Money(15_000_000, "IDR"),
        reference=REFERENCE,
        fee=Money(250_000, "IDR"),
        pse_payment_ids=(PAYMENT_REQUEST_ID, PAYMENT_ID),
    )


async def test_a_refund_failed_webhook_carries_the_failure_code(gateway: XenditGateway) -> None:
    body = xendit_event(
        "refund.failed", xendit_refund(status="FAILED", failure_code="ACCOUNT_ACCESS_BLOCKED")
    )

    event = gateway.parse_webhook(token(), body, NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.FAILED
    assert event.refund.failure_code == "account_access_blocked"
    assert event.refund.failure_message


async def test_a_cancelled_refund_arrives_as_a_failed_event(gateway: XenditGateway) -> None:
    body = xendit_event("refund.failed", xendit_refund(status="CANCELLED"))

    event = gateway.parse_webhook(token(), body, NOW)

    assert event.refund is not None
    assert event.refund.state is PseRefundState.FAILED
    assert event.refund.failure_code == "cancelled"


async def test_a_webhook_with_the_previous_token_is_accepted(gateway: XenditGateway) -> None:
    body = xendit_event("refund.succeeded", xendit_refund(status="SUCCEEDED"))

    event = gateway.parse_webhook(token(OLD_CALLBACK_TOKEN), body, NOW)

    assert event.refund is not None and event.refund.state is PseRefundState.SUCCEEDED


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-callback-token": ""},
        {"x-callback-token": "forged-token"},
        {"x-callback-token": CALLBACK_TOKEN + "x"},
        {"x-callback-token": CALLBACK_TOKEN[:-1]},
        {"x-callback-token": "tökén-ñ"},
        {"x-xendit-callback-token": CALLBACK_TOKEN},
    ],
)
async def test_a_missing_or_wrong_token_is_refused(
    gateway: XenditGateway, headers: dict[str, str]
) -> None:
    body = xendit_event("refund.succeeded", xendit_refund(status="SUCCEEDED"))

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body, NOW)


async def test_a_token_is_checked_before_the_body_is_read(gateway: XenditGateway) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(token("forged-token"), b"not json at all", NOW)


async def test_an_account_without_tokens_refuses_every_webhook(http: httpx.AsyncClient) -> None:
    gateway = XenditGateway(make_account(webhook_secrets=("",)), http)
    body = xendit_event("refund.succeeded", xendit_refund(status="SUCCEEDED"))

    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook({"x-callback-token": ""}, body, NOW)
    with pytest.raises(InvalidWebhookSignature):
        XenditGateway(make_account(webhook_secrets=()), http).parse_webhook(token(), body, NOW)


async def test_tokens_are_compared_in_constant_time_against_every_configured_token(
    gateway: XenditGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    body = xendit_event("refund.succeeded", xendit_refund(status="SUCCEEDED"))

    gateway.parse_webhook(token(CALLBACK_TOKEN), body, NOW)

    assert {a for a, _ in compared} == {CALLBACK_TOKEN.encode(), OLD_CALLBACK_TOKEN.encode()}
    assert {b for _, b in compared} == {CALLBACK_TOKEN.encode()}


async def test_other_event_types_are_acknowledged_without_a_refund(gateway: XenditGateway) -> None:
    body = json.dumps(
        {
            "event": "payment.succeeded",
            "business_id": BUSINESS_ID,
            "created": "2026-11-27T08:00:05.566Z",
            "data": {"payment_id": "py-3cd658ae", "status": "SUCCEEDED"},
        }
    ).encode()

    event = gateway.parse_webhook(token(), body, NOW)

    assert event.event_type == "payment.succeeded"
    assert event.refund is None
    assert event.event_id.startswith("xnd_")


async def test_the_derived_event_id_is_stable_across_delivery_attempts(
    gateway: XenditGateway,
) -> None:
    refund = xendit_refund(status="SUCCEEDED")
    first = xendit_event("refund.succeeded", refund, created="2026-11-27T08:00:05.566Z")
    retry = xendit_event("refund.succeeded", refund, created="2026-11-27T08:15:05.912Z")
    reordered = json.dumps(
        {
            "data": refund,
            "created": "2026-11-27T09:00:00.000Z",
            "business_id": BUSINESS_ID,
            "event": "refund.succeeded",
        },
        indent=2,
    ).encode()

    ids = {gateway.parse_webhook(token(), body, NOW).event_id for body in (first, retry, reordered)}

    assert len(ids) == 1
    (event_id,) = ids
    assert event_id.startswith("xnd_") and len(event_id) == 4 + 64


async def test_different_events_get_different_derived_ids(gateway: XenditGateway) -> None:
    succeeded = xendit_event("refund.succeeded", xendit_refund(status="SUCCEEDED"))
    failed = xendit_event(
        "refund.failed",
        xendit_refund(
            status="FAILED", failure_code="REFUND_FAILED", updated="2026-11-28T00:00:00Z"
        ),
    )
    another = xendit_event(
        "refund.succeeded", xendit_refund(id=OTHER_REFUND_ID, status="SUCCEEDED")
    )

    ids = {
        gateway.parse_webhook(token(), body, NOW).event_id for body in (succeeded, failed, another)
    }

    assert len(ids) == 3


async def test_the_nested_envelope_of_the_reference_example_is_read_too(
    gateway: XenditGateway,
) -> None:
    inner = {
        "event": "refund.succeeded",
        "business_id": BUSINESS_ID,
        "created": "2026-11-27T08:00:05.566Z",
        "data": xendit_refund(status="SUCCEEDED"),
    }

    event = gateway.parse_webhook(token(), xendit_event("refund.succeeded", inner), NOW)

    assert event.refund is not None
    assert event.refund.pse_refund_id == REFUND_ID
    assert event.refund.state is PseRefundState.SUCCEEDED


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"refund.succeeded"',
        json.dumps({"business_id": BUSINESS_ID, "data": xendit_refund()}).encode(),
        json.dumps({"event": 42, "data": xendit_refund()}).encode(),
        xendit_event("refund.succeeded", None),
        xendit_event("refund.succeeded", xendit_refund(status="SUCCEEDED", id=None)),
        xendit_event("refund.succeeded", xendit_refund(status="SETTLED")),
        xendit_event("refund.succeeded", xendit_refund(status="FAILED")),
        xendit_event("refund.failed", xendit_refund(status="SUCCEEDED")),
        xendit_event("refund.failed", xendit_refund(status="PENDING")),
    ],
)
async def test_a_signed_body_that_is_not_a_readable_refund_event_is_an_invalid_payload(
    gateway: XenditGateway, body: bytes
) -> None:
    with pytest.raises(InvalidWebhookPayload):
        gateway.parse_webhook(token(), body, NOW)


async def test_the_webhook_time_does_not_matter_for_a_scheme_without_a_timestamp(
    gateway: XenditGateway,
) -> None:
    body = xendit_event("refund.succeeded", xendit_refund(status="SUCCEEDED"))

    late = gateway.parse_webhook(token(), body, datetime(2030, 1, 1, tzinfo=UTC))

    assert late.refund is not None
