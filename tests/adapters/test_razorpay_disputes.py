"""RazorpayGateway: `payment.dispute.*` webhooks, signed as Razorpay signs them and
checked against the official `razorpay` SDK."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import razorpay
from razorpay.errors import SignatureVerificationError

from app.adapters.pse.razorpay import RazorpayGateway, derived_event_id
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.pse import InvalidWebhookPayload, InvalidWebhookSignature
from tests.adapters.test_razorpay_gateway import (
    ACCOUNT_ID,
    KEY_ID,
    KEY_SECRET,
    NOW,
    OLD_WEBHOOK_SECRET,
    PAYMENT_ID,
    WEBHOOK_SECRET,
    delivery,
    make_account,
    razorpay_payment,
    sign,
)

DISPUTE_ID = "disp_AHfqOvkldwsbqt"
RESPOND_BY = 1795939200  # 2026-11-29T08:00:00Z
CREATED_AT = 1795680000  # 2026-11-26T08:00:00Z

DISPUTE_EVENTS = {
    "payment.dispute.created": "open",
    "payment.dispute.action_required": "open",
    "payment.dispute.under_review": "under_review",
    "payment.dispute.won": "won",
    "payment.dispute.lost": "lost",
    "payment.dispute.closed": "closed",
}


def razorpay_dispute(**overrides: Any) -> dict[str, Any]:
    """Shaped like Razorpay's dispute entity (API reference, "Disputes: entity")."""
    dispute: dict[str, Any] = {
        "id": DISPUTE_ID,
        "entity": "dispute",
        "payment_id": PAYMENT_ID,
        "amount": 50000,
        "currency": "INR",
        "amount_deducted": 0,
        "reason_code": "goods_not_received",
        "reason_description": "The customer says the goods were never delivered.",
        "respond_by": RESPOND_BY,
        "status": "open",
        "phase": "chargeback",
        "comments": None,
        "evidence": {"amount": 50000, "summary": None, "submitted_at": None},
        "created_at": CREATED_AT,
    }
    dispute.update(overrides)
    return dispute


def dispute_event(
    event_type: str = "payment.dispute.created",
    dispute: Any = None,
    payment: Any = None,
) -> bytes:
    """Shaped like Razorpay's dispute webhook: the standard event envelope with the
    dispute and its payment (Webhooks, "Disputes")."""
    event: dict[str, Any] = {
        "entity": "event",
        "account_id": ACCOUNT_ID,
        "event": event_type,
        "contains": ["payment", "dispute"],
        "payload": {
            "payment": {"entity": razorpay_payment() if payment is None else payment},
            "dispute": {"entity": razorpay_dispute() if dispute is None else dispute},
        },
        "created_at": int(NOW.timestamp()),
    }
    return json.dumps(event, indent=2, ensure_ascii=False).encode("utf-8")


def sdk_checked(body: bytes, secret: str = WEBHOOK_SECRET, **kwargs: Any) -> dict[str, str]:
    """The delivery's headers, after the official SDK agreed with the signature."""
    headers = delivery(body, secret, **kwargs)
    client = razorpay.Client(auth=(KEY_ID, KEY_SECRET))
    assert client.utility.verify_webhook_signature(
        body.decode("utf-8"), headers["x-razorpay-signature"], secret
    )
    return headers


def parse(gateway: RazorpayGateway, body: bytes) -> Any:
    return gateway.parse_webhook(sdk_checked(body), body, NOW)


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> RazorpayGateway:
    return RazorpayGateway(make_account(), http)


# --------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------


async def test_a_signed_dispute_event_becomes_a_dispute_report(gateway: RazorpayGateway) -> None:
    body = dispute_event()

    event = gateway.parse_webhook(sdk_checked(body, event_id="evt_disp0001"), body, NOW)

    assert (event.event_id, event.event_type, event.refund) == (
        "evt_disp0001",
        "payment.dispute.created",
        None,
    )
    assert event.dispute == DisputeReport(
        pse_dispute_id=DISPUTE_ID,
        status=DisputeStatus.OPEN,
        amount=Money(50000, "INR"),
        reason="goods_not_received",
        evidence_due_by=datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        opened_at=datetime(2026, 11, 26, 8, 0, tzinfo=UTC),
        pse_payment_ids=(PAYMENT_ID,),
    )


@pytest.mark.parametrize(("event_type", "status"), DISPUTE_EVENTS.items())
async def test_every_dispute_event_carries_the_dispute(
    gateway: RazorpayGateway, event_type: str, status: str
) -> None:
    event = parse(gateway, dispute_event(event_type, razorpay_dispute(status=status)))

    assert event.event_type == event_type
    assert event.refund is None
    assert event.dispute is not None and event.dispute.pse_dispute_id == DISPUTE_ID


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("open", DisputeStatus.OPEN),
        ("under_review", DisputeStatus.OPEN),
        ("won", DisputeStatus.WON),
        ("lost", DisputeStatus.LOST),
        ("closed", DisputeStatus.CLOSED),
    ],
)
async def test_every_razorpay_dispute_status_maps_to_ours(
    gateway: RazorpayGateway, status: str, expected: DisputeStatus
) -> None:
    event = parse(gateway, dispute_event(dispute=razorpay_dispute(status=status)))

    assert event.dispute.status is expected


async def test_the_status_comes_from_the_entity_not_from_the_event_name(
    gateway: RazorpayGateway,
) -> None:
    # `action_required` keeps the dispute `open`; the entity says so.
    body = dispute_event("payment.dispute.lost", razorpay_dispute(status="open"))

    assert parse(gateway, body).dispute.status is DisputeStatus.OPEN


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param(50000, "INR", Money(50000, "INR"), id="paise"),
        pytest.param(1999, "USD", Money(1999, "USD"), id="cents"),
        pytest.param(5000, "JPY", Money(5000, "JPY"), id="yen"),
        pytest.param(12340, "KWD", Money(12340, "KWD"), id="three-decimal"),
    ],
)
async def test_the_amount_is_read_in_currency_subunits(
    gateway: RazorpayGateway, amount: int, currency: str, expected: Money
) -> None:
    dispute = razorpay_dispute(amount=amount, currency=currency)

    assert parse(gateway, dispute_event(dispute=dispute)).dispute.amount == expected


@pytest.mark.parametrize(
    ("respond_by", "expected"),
    [
        pytest.param(RESPOND_BY, datetime(2026, 11, 29, 8, 0, tzinfo=UTC), id="unix-seconds"),
        pytest.param(None, None, id="null"),
        pytest.param(0, None, id="zero"),
    ],
)
async def test_the_evidence_deadline_is_respond_by(
    gateway: RazorpayGateway, respond_by: Any, expected: datetime | None
) -> None:
    dispute = razorpay_dispute(respond_by=respond_by)

    assert parse(gateway, dispute_event(dispute=dispute)).dispute.evidence_due_by == expected


async def test_the_reason_description_stands_in_for_a_missing_reason_code(
    gateway: RazorpayGateway,
) -> None:
    dispute = razorpay_dispute(reason_code=None)

    event = parse(gateway, dispute_event(dispute=dispute))

    assert event.dispute.reason == "The customer says the goods were never delivered."


async def test_the_payment_entity_names_the_payment_when_the_dispute_does_not(
    gateway: RazorpayGateway,
) -> None:
    dispute = razorpay_dispute()
    del dispute["payment_id"]

    event = parse(gateway, dispute_event(dispute=dispute))

    assert event.dispute.pse_payment_ids == (PAYMENT_ID,)


async def test_without_an_event_id_header_the_event_id_is_a_hash_of_the_raw_body(
    gateway: RazorpayGateway,
) -> None:
    body = dispute_event("payment.dispute.won", razorpay_dispute(status="won"))

    event = gateway.parse_webhook(sdk_checked(body, event_id=None), body, NOW)

    assert event.event_id == derived_event_id(body)


# --------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------


async def test_a_dispute_event_signed_with_the_previous_secret_is_accepted(
    gateway: RazorpayGateway,
) -> None:
    body = dispute_event()

    event = gateway.parse_webhook(sdk_checked(body, OLD_WEBHOOK_SECRET), body, NOW)

    assert event.dispute is not None


_BODY = dispute_event("payment.dispute.won", razorpay_dispute(status="won"))


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({"content-type": "application/json"}, _BODY, id="unsigned"),
        pytest.param(delivery(_BODY, "someone-elses-secret"), _BODY, id="forged"),
        pytest.param(delivery(_BODY), _BODY.replace(b'"won"', b'"lost"'), id="tampered"),
    ],
)
async def test_an_unsigned_or_forged_dispute_event_is_refused(
    gateway: RazorpayGateway, headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body, NOW)


def test_the_official_sdk_refuses_the_forged_signature_too() -> None:
    client = razorpay.Client(auth=(KEY_ID, KEY_SECRET))

    with pytest.raises(SignatureVerificationError):
        client.utility.verify_webhook_signature(
            _BODY.decode("utf-8"), sign(_BODY, "someone-elses-secret"), WEBHOOK_SECRET
        )


# --------------------------------------------------------------------------
# Malformed disputes
# --------------------------------------------------------------------------


def _without(*keys: str) -> dict[str, Any]:
    dispute = razorpay_dispute()
    for key in keys:
        del dispute[key]
    return dispute


def _no_dispute() -> bytes:
    event = json.loads(dispute_event())
    del event["payload"]["dispute"]
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(_no_dispute(), "not a Razorpay dispute entity", id="no-dispute"),
        pytest.param(
            dispute_event(dispute=razorpay_payment()), "not a Razorpay dispute", id="a-payment"
        ),
        pytest.param(dispute_event(dispute=_without("id")), "no id", id="no-id"),
        pytest.param(
            dispute_event(dispute=razorpay_dispute(status="pre_arbitration")),
            "pre_arbitration",
            id="unknown-status",
        ),
        pytest.param(dispute_event(dispute=_without("status")), "status", id="no-status"),
        pytest.param(dispute_event(dispute=_without("amount")), "amount", id="no-amount"),
        pytest.param(
            dispute_event(dispute=razorpay_dispute(amount=100.5)), "amount", id="fractional"
        ),
        # CLF has four decimals; Razorpay documents no subunit for it.
        pytest.param(
            dispute_event(dispute=razorpay_dispute(currency="CLF")), "amount", id="undocumented"
        ),
        pytest.param(
            dispute_event(dispute=_without("payment_id"), payment={}),
            "no payment",
            id="no-payment",
        ),
        pytest.param(
            dispute_event(payment=razorpay_payment(id="pay_SomeoneElse00")),
            "delivered with payment",
            id="payments-disagree",
        ),
        pytest.param(
            dispute_event(dispute=razorpay_dispute(respond_by="tomorrow")),
            "respond_by",
            id="respond-by-text",
        ),
    ],
)
async def test_a_signed_dispute_event_without_a_readable_dispute_is_an_invalid_payload(
    gateway: RazorpayGateway, body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidWebhookPayload, match="readable dispute") as raised:
        parse(gateway, body)

    assert reason in str(raised.value)
