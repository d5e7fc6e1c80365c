"""StripeGateway: `charge.dispute.*` webhooks, signed by the official `stripe` SDK."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import stripe

from app.adapters.pse.stripe import StripeGateway
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.pse import InvalidWebhookPayload, InvalidWebhookSignature
from tests.adapters.test_stripe_gateway import (
    CHARGE,
    NOW,
    OLD_WEBHOOK_SECRET,
    PAYMENT_INTENT,
    WEBHOOK_SECRET,
    make_account,
    signed,
    stripe_event,
)

DISPUTE_ID = "du_1Q2w3E4r5T6y7U8iDisp01"
DUE_BY = 1768953599  # 2026-01-20T23:59:59Z
CREATED = 1767225590  # 2026-01-01T00:59:50Z

DISPUTE_EVENTS = [
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
]


def stripe_dispute(**overrides: Any) -> dict[str, Any]:
    """Shaped like Stripe's Dispute object (API reference, "The Dispute object",
    2024-06-20), as in the `charge.dispute.funds_withdrawn` research example."""
    dispute: dict[str, Any] = {
        "id": DISPUTE_ID,
        "object": "dispute",
        "amount": 5000,
        "balance_transactions": [
            {
                "id": "txn_3Q2w3E4r5T6y7U8i0txn",
                "object": "balance_transaction",
                "type": "adjustment",
                "reporting_category": "dispute",
                "amount": -5000,
                "fee": 2000,
                "net": -7000,
                "currency": "jpy",
                "source": DISPUTE_ID,
                "description": f"Chargeback withdrawal for {CHARGE}",
            }
        ],
        "charge": CHARGE,
        "created": CREATED,
        "currency": "jpy",
        "evidence": {"customer_name": None, "uncategorized_text": None},
        "evidence_details": {
            "due_by": DUE_BY,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": PAYMENT_INTENT,
        "reason": "fraudulent",
        "status": "needs_response",
    }
    dispute.update(overrides)
    return dispute


def dispute_event(
    event_type: str = "charge.dispute.funds_withdrawn",
    event_id: str = "evt_1Q2w3E4r5T6y7U8i",
    **overrides: Any,
) -> str:
    return stripe_event(event_type, stripe_dispute(**overrides), event_id)


def parse(gateway: StripeGateway, payload: str, secret: str = WEBHOOK_SECRET) -> Any:
    return gateway.parse_webhook(signed(payload, secret), payload.encode(), NOW)


def at(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> StripeGateway:
    return StripeGateway(make_account(), http)


# --------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------


async def test_a_signed_dispute_event_becomes_a_dispute_report(gateway: StripeGateway) -> None:
    payload = dispute_event()

    event = parse(gateway, payload)

    assert event.event_id == "evt_1Q2w3E4r5T6y7U8i"
    assert event.event_type == "charge.dispute.funds_withdrawn"
    assert event.refund is None
    assert event.dispute == DisputeReport(
        pse_dispute_id=DISPUTE_ID,
        status=DisputeStatus.OPEN,
        amount=Money(5000, "JPY"),
        reason="fraudulent",
        evidence_due_by=datetime(2026, 1, 20, 23, 59, 59, tzinfo=UTC),
        opened_at=at(CREATED),
        pse_payment_ids=(CHARGE, PAYMENT_INTENT),
    )


@pytest.mark.parametrize("event_type", DISPUTE_EVENTS)
async def test_every_dispute_event_carries_the_dispute(
    gateway: StripeGateway, event_type: str
) -> None:
    event = parse(gateway, dispute_event(event_type, status="under_review"))

    assert event.event_type == event_type
    assert event.refund is None
    assert event.dispute is not None
    assert event.dispute.pse_dispute_id == DISPUTE_ID


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("warning_needs_response", DisputeStatus.OPEN),
        ("warning_under_review", DisputeStatus.OPEN),
        ("needs_response", DisputeStatus.OPEN),
        ("under_review", DisputeStatus.OPEN),
        ("won", DisputeStatus.WON),
        ("lost", DisputeStatus.LOST),
        ("warning_closed", DisputeStatus.CLOSED),
        ("prevented", DisputeStatus.CLOSED),
    ],
)
@pytest.mark.parametrize(
    "event_type", ["charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed"]
)
async def test_every_stripe_dispute_status_maps_to_ours(
    gateway: StripeGateway, event_type: str, status: str, expected: DisputeStatus
) -> None:
    event = parse(gateway, dispute_event(event_type, status=status))

    assert event.dispute.status is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        # The funds came back: the dispute was decided for us.
        ("won", DisputeStatus.WON),
        ("under_review", DisputeStatus.WON),
        ("needs_response", DisputeStatus.WON),
        # "Partially won": Stripe gives back only the partially refunded amount of a
        # dispute it sets to `lost` (support.stripe.com, "Dispute for full charge
        # amount after a partial refund was issued"). It stays lost.
        ("lost", DisputeStatus.LOST),
        ("warning_closed", DisputeStatus.CLOSED),
        ("prevented", DisputeStatus.CLOSED),
    ],
)
async def test_funds_reinstated_is_won_unless_the_dispute_says_how_it_ended(
    gateway: StripeGateway, status: str, expected: DisputeStatus
) -> None:
    event = parse(gateway, dispute_event("charge.dispute.funds_reinstated", status=status))

    assert event.dispute.status is expected


async def test_funds_withdrawn_follows_the_status_it_carries(gateway: StripeGateway) -> None:
    event = parse(gateway, dispute_event("charge.dispute.funds_withdrawn", status="lost"))

    assert event.dispute.status is DisputeStatus.LOST


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param(5000, "jpy", Money(5000, "JPY"), id="zero-decimal"),
        pytest.param(1234, "usd", Money(1234, "USD"), id="two-decimal"),
        pytest.param(5120, "kwd", Money(5120, "KWD"), id="three-decimal"),
        # Stripe keeps ISK two-decimal: 500 ISK travels as 50000.
        pytest.param(50000, "isk", Money(500, "ISK"), id="isk-hundredfold"),
        # MGA is zero-decimal at Stripe, two-decimal in ISO 4217.
        pytest.param(5000, "mga", Money(500000, "MGA"), id="mga-whole-units"),
    ],
)
async def test_the_amount_is_converted_from_stripe_units_as_refund_amounts_are(
    gateway: StripeGateway, amount: int, currency: str, expected: Money
) -> None:
    event = parse(gateway, dispute_event(amount=amount, currency=currency))

    assert event.dispute.amount == expected


@pytest.mark.parametrize(
    ("evidence_details", "expected"),
    [
        pytest.param({"due_by": DUE_BY}, at(DUE_BY), id="unix-seconds"),
        # "Will be 0 if the customer's bank or credit card company doesn't allow a response."
        pytest.param({"due_by": 0}, None, id="zero-no-response"),
        pytest.param({"due_by": None}, None, id="null"),
        pytest.param({}, None, id="absent"),
        pytest.param(None, None, id="no-evidence-details"),
    ],
)
async def test_the_evidence_deadline_is_read_from_due_by(
    gateway: StripeGateway, evidence_details: Any, expected: datetime | None
) -> None:
    event = parse(gateway, dispute_event(evidence_details=evidence_details))

    assert event.dispute.evidence_due_by == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, (CHARGE, PAYMENT_INTENT), id="both"),
        pytest.param({"payment_intent": None}, (CHARGE,), id="charge-only"),
        pytest.param(
            {"charge": {"id": CHARGE, "object": "charge"}, "payment_intent": PAYMENT_INTENT},
            (CHARGE, PAYMENT_INTENT),
            id="expanded-charge",
        ),
        pytest.param(
            {"charge": "py_3Q2w3E4r5T6y7U8i0sep", "payment_intent": None},
            ("py_3Q2w3E4r5T6y7U8i0sep",),
            id="non-card-payment",
        ),
    ],
)
async def test_both_the_charge_and_the_payment_intent_name_the_payment(
    gateway: StripeGateway, fields: dict[str, Any], expected: tuple[str, ...]
) -> None:
    event = parse(gateway, dispute_event(**fields))

    assert event.dispute.pse_payment_ids == expected


# --------------------------------------------------------------------------
# Signatures: the same scheme as every Stripe event
# --------------------------------------------------------------------------


async def test_the_gateway_accepts_exactly_what_the_official_sdk_verifies(
    gateway: StripeGateway,
) -> None:
    payload = dispute_event()
    header = signed(payload)["stripe-signature"]
    # The SDK is the independent judge (its own clock: the header is signed at NOW).
    assert stripe.WebhookSignature.verify_header(payload, header, WEBHOOK_SECRET, tolerance=None)

    assert gateway.parse_webhook({"stripe-signature": header}, payload.encode(), NOW).dispute


async def test_a_dispute_event_signed_with_the_previous_secret_is_accepted(
    gateway: StripeGateway,
) -> None:
    event = parse(gateway, dispute_event(), OLD_WEBHOOK_SECRET)

    assert event.dispute is not None


_PAYLOAD = dispute_event("charge.dispute.closed", status="won")


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({}, _PAYLOAD, id="unsigned"),
        pytest.param(signed(_PAYLOAD, "whsec_someoneElse0000000000"), _PAYLOAD, id="forged"),
        pytest.param(signed(_PAYLOAD), _PAYLOAD.replace('"won"', '"lost"'), id="tampered"),
        pytest.param(signed(_PAYLOAD, at=NOW - timedelta(seconds=301)), _PAYLOAD, id="stale"),
    ],
)
async def test_an_unsigned_or_forged_dispute_event_is_refused(
    gateway: StripeGateway, headers: dict[str, str], body: str
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body.encode(), NOW)


# --------------------------------------------------------------------------
# Malformed disputes: refused with a reason, never guessed at
# --------------------------------------------------------------------------


def _without(*keys: str) -> dict[str, Any]:
    dispute = stripe_dispute()
    for key in keys:
        del dispute[key]
    return dispute


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        pytest.param({"id": CHARGE, "object": "charge"}, "not a Stripe dispute", id="a-charge"),
        pytest.param(None, "not a Stripe dispute", id="no-object"),
        pytest.param(_without("id"), "no id", id="no-id"),
        pytest.param(stripe_dispute(id=""), "no id", id="empty-id"),
        pytest.param(_without("status"), "unknown dispute status None", id="no-status"),
        # A status Stripe no longer sends (or has not yet documented) is never guessed.
        pytest.param(
            stripe_dispute(status="charge_refunded"), "charge_refunded", id="unknown-status"
        ),
        pytest.param(_without("amount"), "amount", id="no-amount"),
        pytest.param(stripe_dispute(amount="5000"), "amount", id="amount-as-text"),
        pytest.param(stripe_dispute(amount=True), "amount", id="amount-bool"),
        pytest.param(stripe_dispute(amount=0), "positive", id="zero-amount"),
        pytest.param(stripe_dispute(currency="xxx"), "amount", id="unknown-currency"),
        # 500.5 ISK has no ISO form.
        pytest.param(stripe_dispute(amount=50050, currency="isk"), "amount", id="isk-fraction"),
        pytest.param(_without("charge", "payment_intent"), "no payment", id="no-payment"),
        pytest.param(
            stripe_dispute(evidence_details={"due_by": "soon"}), "due_by", id="due-by-text"
        ),
        pytest.param(stripe_dispute(evidence_details={"due_by": -1}), "due_by", id="due-by-neg"),
        pytest.param(stripe_dispute(created="yesterday"), "created", id="created-text"),
    ],
)
async def test_a_signed_dispute_event_without_a_readable_dispute_is_an_invalid_payload(
    gateway: StripeGateway, obj: Any, reason: str
) -> None:
    payload = stripe_event("charge.dispute.updated", obj)

    with pytest.raises(InvalidWebhookPayload, match="readable dispute") as raised:
        parse(gateway, payload)

    assert reason in str(raised.value)
