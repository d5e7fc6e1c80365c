"""XenditGateway: `dispute.*` webhooks (Cards and QRIS), authenticated by the static
`x-callback-token` as Xendit sends it (there is no signature to compute)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.adapters.pse.xendit import XenditGateway
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.pse import InvalidWebhookPayload, InvalidWebhookSignature
from tests.adapters.test_xendit_gateway import (
    CALLBACK_TOKEN,
    NOW,
    OLD_CALLBACK_TOKEN,
    make_account,
    token,
    xendit_event,
    xendit_refund,
)

DISPUTE_ID = "mi-dspt-f44d259f-fd9d-4de9-80de-1eef3f1506b7"
PAYMENT_ID = "py-2a9c6a1e-1c1d-4c77-9a53-0f4d3c2b1a00"

_EVENTS = {
    "ACTION_REQUIRED": "dispute.action_required",
    "UNDER_REVIEW": "dispute.under_review",
    "WON": "dispute.won",
    "LOST": "dispute.lost",
}


def xendit_dispute(status: str = "ACTION_REQUIRED", **overrides: Any) -> dict[str, Any]:
    """Shaped like Xendit's dispute webhook ("Dispute webhook notifications"): the
    event name beside the dispute's own fields, at the top level."""
    dispute: dict[str, Any] = {
        "event": _EVENTS.get(status, "dispute.action_required"),
        "id": DISPUTE_ID,
        "channel_code": "CARDS",
        "card_brands": "VISA",
        "status": status,
        "currency": "IDR",
        "amount": {"initial": "150000.00", "terminal": None},
        "created_at": "2026-03-01T19:50:51.724Z",
        "updated_at": "2026-03-01T19:50:51.724Z",
        "due_date": "2026-03-15T19:50:51.724Z",
        "category": {"name": "fraud"},
        "payment_id": PAYMENT_ID,
        "reference_id": "order-12345",
    }
    dispute.update(overrides)
    return dispute


def body_of(dispute: dict[str, Any]) -> bytes:
    return json.dumps(dispute).encode()


def parse(gateway: XenditGateway, dispute: dict[str, Any], secret: str = CALLBACK_TOKEN) -> Any:
    return gateway.parse_webhook(token(secret), body_of(dispute), NOW)


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> XenditGateway:
    return XenditGateway(make_account(), http)


# --------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------


async def test_a_dispute_webhook_becomes_a_dispute_report(gateway: XenditGateway) -> None:
    event = parse(gateway, xendit_dispute())

    assert event.event_type == "dispute.action_required"
    assert event.refund is None
    assert event.dispute == DisputeReport(
        pse_dispute_id=DISPUTE_ID,
        status=DisputeStatus.OPEN,
        # Rp150,000.00 in major units: 15,000,000 ISO minor units (sen).
        amount=Money(15_000_000, "IDR"),
        reason="fraud",
        evidence_due_by=datetime(2026, 3, 15, 19, 50, 51, 724000, tzinfo=UTC),
        opened_at=datetime(2026, 3, 1, 19, 50, 51, 724000, tzinfo=UTC),
        pse_payment_ids=(PAYMENT_ID,),
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("ACTION_REQUIRED", DisputeStatus.OPEN),
        ("UNDER_REVIEW", DisputeStatus.OPEN),
        ("WON", DisputeStatus.WON),
        ("LOST", DisputeStatus.LOST),
    ],
)
async def test_every_xendit_dispute_status_maps_to_ours(
    gateway: XenditGateway, status: str, expected: DisputeStatus
) -> None:
    event = parse(gateway, xendit_dispute(status))

    assert event.event_type == _EVENTS[status]
    assert event.dispute.status is expected


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param("150000.00", "IDR", Money(15_000_000, "IDR"), id="rupiah-text"),
        pytest.param("150000", "IDR", Money(15_000_000, "IDR"), id="rupiah-whole"),
        pytest.param("1499.50", "PHP", Money(149_950, "PHP"), id="pesos-and-centavos"),
        pytest.param("5000", "JPY", Money(5000, "JPY"), id="yen"),
        pytest.param("250000", "VND", Money(250_000, "VND"), id="dong"),
    ],
)
async def test_decimal_major_units_become_exact_minor_units(
    gateway: XenditGateway, amount: str, currency: str, expected: Money
) -> None:
    dispute = xendit_dispute(amount={"initial": amount, "terminal": None}, currency=currency)

    assert parse(gateway, dispute).dispute.amount == expected


async def test_the_disputed_amount_is_the_initial_one_even_once_decided(
    gateway: XenditGateway,
) -> None:
    dispute = xendit_dispute("LOST", amount={"initial": "150000.00", "terminal": "100000.00"})

    assert parse(gateway, dispute).dispute.amount == Money(15_000_000, "IDR")


async def test_a_dispute_wrapped_in_data_like_refund_callbacks_is_read_too(
    gateway: XenditGateway,
) -> None:
    fields = xendit_dispute("WON")
    wrapped = {"event": fields.pop("event"), "business_id": "5f27a14a9bf05c73dd040bc8"}
    wrapped["data"] = fields

    event = parse(gateway, wrapped)

    assert event.dispute.pse_dispute_id == DISPUTE_ID
    assert event.dispute.status is DisputeStatus.WON


# --------------------------------------------------------------------------
# Derived event ids: Xendit sends none
# --------------------------------------------------------------------------


async def test_the_event_id_is_derived_from_the_dispute_id_status_and_update_time(
    gateway: XenditGateway,
) -> None:
    first = parse(gateway, xendit_dispute())
    # A redelivery, even reserialised in another key order with another delivery time.
    dispute = xendit_dispute()
    again = gateway.parse_webhook(
        token(), json.dumps(dict(reversed(dispute.items())), indent=2).encode(), NOW
    )
    moved = parse(gateway, xendit_dispute("UNDER_REVIEW", updated_at="2026-03-02T08:00:00.000Z"))
    touched = parse(gateway, xendit_dispute(updated_at="2026-03-02T09:00:00.000Z"))
    other = parse(gateway, xendit_dispute(id="mi-dspt-0a0b0c0d-0000-4000-8000-000000000001"))

    assert first.event_id == again.event_id
    assert first.event_id.startswith("xnd_dspt_") and len(first.event_id) == 9 + 64
    assert len({first.event_id, moved.event_id, touched.event_id, other.event_id}) == 4


async def test_without_an_update_time_the_envelope_derives_the_event_id(
    gateway: XenditGateway,
) -> None:
    dispute = xendit_dispute()
    del dispute["updated_at"]

    first = parse(gateway, dispute)
    changed = parse(gateway, {**dispute, "due_date": "2026-03-20T00:00:00.000Z"})

    assert first.event_id.startswith("xnd_dspt_")
    assert first.event_id == parse(gateway, dispute).event_id
    assert first.event_id != changed.event_id


async def test_refund_ids_and_dispute_ids_never_collide(gateway: XenditGateway) -> None:
    refund = gateway.parse_webhook(
        token(), xendit_event("refund.succeeded", xendit_refund(status="SUCCEEDED")), NOW
    )

    assert refund.event_id.startswith("xnd_") and not refund.event_id.startswith("xnd_dspt_")


# --------------------------------------------------------------------------
# The callback token
# --------------------------------------------------------------------------


async def test_a_dispute_webhook_with_the_previous_token_is_accepted(
    gateway: XenditGateway,
) -> None:
    assert parse(gateway, xendit_dispute(), OLD_CALLBACK_TOKEN).dispute is not None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="unsigned"),
        pytest.param({"x-callback-token": ""}, id="empty"),
        pytest.param({"x-callback-token": "forged-token"}, id="forged"),
        pytest.param({"x-callback-token": CALLBACK_TOKEN + "x"}, id="near-miss"),
    ],
)
async def test_a_dispute_webhook_without_the_callback_token_is_refused(
    gateway: XenditGateway, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body_of(xendit_dispute("WON")), NOW)


# --------------------------------------------------------------------------
# Malformed disputes
# --------------------------------------------------------------------------


def _without(*keys: str, status: str = "ACTION_REQUIRED") -> dict[str, Any]:
    dispute = xendit_dispute(status)
    for key in keys:
        del dispute[key]
    return dispute


@pytest.mark.parametrize(
    ("dispute", "reason"),
    [
        pytest.param(_without("id"), "no id", id="no-id"),
        pytest.param(_without("status"), "status", id="no-status"),
        pytest.param(
            xendit_dispute("EXPIRED", event="dispute.expired"), "EXPIRED", id="unknown-status"
        ),
        # Each documented event names its status: another pairing is not Xendit's.
        pytest.param(xendit_dispute("LOST", event="dispute.won"), "dispute.won", id="mismatch"),
        pytest.param(_without("amount"), "amount", id="no-amount"),
        pytest.param(xendit_dispute(amount={"initial": None}), "amount", id="no-initial"),
        pytest.param(xendit_dispute(amount={"initial": "abc"}), "amount", id="not-a-number"),
        # Not a whole number of sen: no exact ISO amount.
        pytest.param(xendit_dispute(amount={"initial": "1.005"}), "amount", id="inexact"),
        pytest.param(xendit_dispute(amount={"initial": "-1"}), "amount", id="negative"),
        pytest.param(_without("currency"), "amount", id="no-currency"),
        pytest.param(_without("payment_id"), "no payment", id="no-payment"),
        pytest.param(xendit_dispute(due_date="15/03/2026"), "due_date", id="bad-deadline"),
        pytest.param(xendit_dispute(due_date="2026-03-15T19:50:51"), "zone", id="naive-time"),
    ],
)
async def test_a_dispute_webhook_without_a_readable_dispute_is_an_invalid_payload(
    gateway: XenditGateway, dispute: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidWebhookPayload, match="readable dispute") as raised:
        parse(gateway, dispute)

    assert reason in str(raised.value)


@pytest.mark.parametrize("missing", ["id", "status"])
async def test_a_dispute_webhook_that_cannot_be_identified_is_an_invalid_payload(
    gateway: XenditGateway, missing: str
) -> None:
    with pytest.raises(InvalidWebhookPayload, match="readable dispute"):
        parse(gateway, _without(missing, "updated_at"))
