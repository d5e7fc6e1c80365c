"""OmiseGateway: `dispute.*` webhooks, signed with the documented scheme (see
test_omise_gateway.py: Omise publishes no signer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.adapters.pse.omise import OmiseGateway
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.pse import InvalidWebhookPayload, InvalidWebhookSignature
from tests.adapters.test_omise_gateway import (
    CHARGE_ID,
    NOW,
    OLD_WEBHOOK_SECRET,
    make_account,
    omise_event,
    omise_refund,
    signed,
)

DISPUTE_ID = "dspt_test_5089off452g5m5te7xs"


def omise_dispute(**overrides: Any) -> dict[str, Any]:
    """Shaped like Omise's Dispute object (Disputes API; omise-go and omise-java models)."""
    dispute: dict[str, Any] = {
        "object": "dispute",
        "id": DISPUTE_ID,
        "livemode": False,
        "location": f"/disputes/{DISPUTE_ID}",
        "amount": 150000,
        "currency": "THB",
        "funding_amount": 150000,
        "funding_currency": "THB",
        "status": "open",
        "reason_code": "goods_or_services_not_provided",
        "reason_message": "Services not provided or Merchandise not received",
        "message": None,
        "charge": CHARGE_ID,
        "documents": {"object": "list", "data": [], "total": 0},
        "transactions": [
            {"object": "transaction", "amount": 150000, "currency": "THB", "direction": "debit"}
        ],
        "closed_at": None,
        "created_at": "2026-11-26T03:00:00Z",
    }
    dispute.update(overrides)
    return dispute


def parse(gateway: OmiseGateway, body: bytes, secret: str | None = None) -> Any:
    headers = signed(body) if secret is None else signed(body, secret)
    return gateway.parse_webhook(headers, body, NOW)


@pytest.fixture
def gateway(http: httpx.AsyncClient) -> OmiseGateway:
    return OmiseGateway(make_account(), http)


# --------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------


async def test_a_signed_dispute_event_becomes_a_dispute_report(gateway: OmiseGateway) -> None:
    body = omise_event("dispute.create", omise_dispute(), "evnt_test_5xyzdispute01")

    event = parse(gateway, body)

    assert (event.event_id, event.event_type, event.refund) == (
        "evnt_test_5xyzdispute01",
        "dispute.create",
        None,
    )
    assert event.dispute == DisputeReport(
        pse_dispute_id=DISPUTE_ID,
        status=DisputeStatus.OPEN,
        amount=Money(150000, "THB"),
        reason="goods_or_services_not_provided",
        # Omise documents no evidence deadline.
        evidence_due_by=None,
        opened_at=datetime(2026, 11, 26, 3, 0, tzinfo=UTC),
        pse_payment_ids=(CHARGE_ID,),
    )


@pytest.mark.parametrize(
    ("key", "status", "expected"),
    [
        ("dispute.create", "open", DisputeStatus.OPEN),
        ("dispute.update", "pending", DisputeStatus.OPEN),
        ("dispute.close", "won", DisputeStatus.WON),
        ("dispute.close", "lost", DisputeStatus.LOST),
        # A meta-status for queries that disputes are not documented to carry.
        ("dispute.close", "closed", DisputeStatus.CLOSED),
    ],
)
async def test_every_omise_dispute_status_maps_to_ours(
    gateway: OmiseGateway, key: str, status: str, expected: DisputeStatus
) -> None:
    closed_at = None if status in ("open", "pending") else "2026-11-27T07:00:00Z"
    body = omise_event(key, omise_dispute(status=status, closed_at=closed_at))

    event = parse(gateway, body)

    assert event.event_type == key
    assert event.dispute.status is expected


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param(150000, "THB", Money(150000, "THB"), id="satang"),
        pytest.param(150000, "thb", Money(150000, "THB"), id="older-lower-case"),
        pytest.param(5000, "JPY", Money(5000, "JPY"), id="whole-yen"),
        pytest.param(2500, "SGD", Money(2500, "SGD"), id="cents"),
    ],
)
async def test_the_amount_is_read_in_the_smallest_unit(
    gateway: OmiseGateway, amount: int, currency: str, expected: Money
) -> None:
    body = omise_event("dispute.create", omise_dispute(amount=amount, currency=currency))

    assert parse(gateway, body).dispute.amount == expected


async def test_an_older_api_version_names_the_creation_time_created(
    gateway: OmiseGateway,
) -> None:
    dispute = omise_dispute()
    dispute["created"] = dispute.pop("created_at")

    event = parse(gateway, omise_event("dispute.create", dispute))

    assert event.dispute.opened_at == datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


async def test_an_expanded_charge_names_the_payment(gateway: OmiseGateway) -> None:
    dispute = omise_dispute(charge={"object": "charge", "id": CHARGE_ID, "amount": 150000})

    assert parse(gateway, omise_event("dispute.update", dispute)).dispute.pse_payment_ids == (
        CHARGE_ID,
    )


async def test_refund_events_are_read_as_before(gateway: OmiseGateway) -> None:
    event = parse(gateway, omise_event("refund.create", omise_refund(status="closed")))

    assert event.refund is not None and event.dispute is None


# --------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------


async def test_a_dispute_event_signed_with_the_previous_secret_is_accepted(
    gateway: OmiseGateway,
) -> None:
    body = omise_event("dispute.create", omise_dispute())

    assert parse(gateway, body, OLD_WEBHOOK_SECRET).dispute is not None


_BODY = omise_event("dispute.close", omise_dispute(status="won"))
_FORGED_SECRET = "c29tZW9uZSBlbHNlJ3Mgc2VjcmV0"  # base64 of "someone else's secret"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({}, _BODY, id="unsigned"),
        pytest.param(signed(_BODY, _FORGED_SECRET), _BODY, id="forged"),
        pytest.param(signed(_BODY), _BODY.replace(b'"won"', b'"lost"'), id="tampered"),
        pytest.param(signed(_BODY, at=NOW - timedelta(seconds=301)), _BODY, id="stale"),
    ],
)
async def test_an_unsigned_or_forged_dispute_event_is_refused(
    gateway: OmiseGateway, headers: dict[str, str], body: bytes
) -> None:
    with pytest.raises(InvalidWebhookSignature):
        gateway.parse_webhook(headers, body, NOW)


# --------------------------------------------------------------------------
# Malformed disputes
# --------------------------------------------------------------------------


def _without(*keys: str) -> dict[str, Any]:
    dispute = omise_dispute()
    for key in keys:
        del dispute[key]
    return dispute


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(omise_refund(status="closed"), "not an Omise dispute", id="a-refund"),
        pytest.param(None, "not an Omise dispute", id="no-data"),
        pytest.param(_without("id"), "dspt_", id="no-id"),
        pytest.param(omise_dispute(id="chrg_test_x"), "dspt_", id="not-a-dispute-id"),
        pytest.param(omise_dispute(status="reversed"), "reversed", id="unknown-status"),
        pytest.param(_without("status"), "status", id="no-status"),
        pytest.param(_without("amount"), "amount", id="no-amount"),
        pytest.param(omise_dispute(amount="1500.00"), "amount", id="amount-as-text"),
        # Omise documents every currency but JPY as two-decimal: KWD is not one of them.
        pytest.param(omise_dispute(currency="KWD"), "amount", id="undocumented-currency"),
        pytest.param(_without("charge"), "no payment", id="no-charge"),
        pytest.param(omise_dispute(created_at="2026-11-26T03:00:00"), "zone", id="naive-time"),
        pytest.param(omise_dispute(created_at="yesterday"), "created_at", id="bad-time"),
    ],
)
async def test_a_signed_dispute_event_without_a_readable_dispute_is_an_invalid_payload(
    gateway: OmiseGateway, data: Any, reason: str
) -> None:
    body = omise_event("dispute.update", data)

    with pytest.raises(InvalidWebhookPayload, match="readable dispute") as raised:
        parse(gateway, body)

    assert reason in str(raised.value)
