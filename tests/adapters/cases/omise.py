"""Omise as a conformance case: answers shaped like Omise's API reference.

Omise has no Python helper that signs webhooks, so `sign` below implements the
documented scheme on its own: hex HMAC-SHA256 of "{timestamp}.{raw body}"
keyed with the base64-decoded webhook secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.omise import OMISE_API_VERSION, OmiseGateway
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    PseRefundState,
    RefundSubmission,
)
from tests.adapters.conformance import BASE_URL, IDEMPOTENCY_KEY, REFERENCE, SignedWebhook
from tests.adapters.test_omise_disputes import DISPUTE_ID, omise_dispute

SECRET_KEY = "skey_test_5xuy4w91xqz7d1w9u0t"
CHARGE_ID = "chrg_test_5xuy4w8uqh9m4gvfh8y"
REFUND_ID = "rfnd_test_5xuy4wgj2pj1qp9pl0x"
REFUNDS_PATH = f"/charges/{CHARGE_ID}/refunds"
# Omise shows webhook secrets base64-encoded; the HMAC key is the decoded bytes.
CURRENT_SECRET = base64.b64encode(b"omise-conformance-current-secret-32b").decode()
PREVIOUS_SECRET = base64.b64encode(b"omise-conformance-previous-secret-32").decode()

_STATUS = {PseRefundState.PENDING: "pending", PseRefundState.SUCCEEDED: "closed"}
# Ours -> (event key, Omise's dispute status). Omise's `closed` is a query
# meta-status that disputes do not carry: it is not sent here.
_DISPUTES = {
    DisputeStatus.OPEN: ("dispute.create", "open"),
    DisputeStatus.WON: ("dispute.close", "won"),
    DisputeStatus.LOST: ("dispute.close", "lost"),
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    try:
        key = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        key = secret.encode()  # a forged, non-base64 secret simply signs wrong
    return hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def omise_refund(
    status: str, reference: str = REFERENCE, refund_id: str = REFUND_ID
) -> dict[str, Any]:
    """Shaped like Omise's Refund object (API version 2019-05-29)."""
    return {
        "object": "refund",
        "id": refund_id,
        "livemode": False,
        "location": f"{REFUNDS_PATH}/{refund_id}",
        "acquirer_reference_number": None,
        "amount": 150000,
        "charge": CHARGE_ID,
        "created_at": "2026-11-27T08:00:00Z",
        "currency": "THB",
        "funding_amount": 150000,
        "funding_currency": "THB",
        "metadata": {"refund_id": reference, "reason": "requested_by_customer"},
        "status": status,
        "transaction": "trxn_test_5xuy4wgm0q7bkh6y5ve",
        "voided": False,
    }


def omise_list(refunds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": refunds,
        "limit": 100,
        "offset": 0,
        "total": len(refunds),
        "location": REFUNDS_PATH,
        "order": "chronological",
        "from": "1970-01-01T00:00:00Z",
        "to": "2026-11-27T08:00:05Z",
    }


class OmiseCase:
    signs_body = True
    name = "omise"
    # Omise documents `pending` and `closed` refunds only.
    listed_states = frozenset({PseRefundState.PENDING, PseRefundState.SUCCEEDED})
    dispute_statuses = frozenset(_DISPUTES)

    def __init__(self) -> None:
        self.secrets = (CURRENT_SECRET, PREVIOUS_SECRET)

    def account(self) -> PseAccount:
        return PseAccount(
            name="omise_th",
            provider="omise",
            api_key=SECRET_KEY,
            base_url=BASE_URL,
            webhook_secrets=self.secrets,
            max_attempts=3,
            backoff_initial_seconds=0.001,
            backoff_max_seconds=0.002,
        )

    def gateway(self, account: PseAccount, http: httpx.AsyncClient) -> PseGateway:
        return OmiseGateway(account, http)

    def submission(self) -> RefundSubmission:
        return RefundSubmission(
            reference=REFERENCE,
            idempotency_key=IDEMPOTENCY_KEY,
            pse_payment_id=CHARGE_ID,
            amount=Money(150000, "THB"),  # ฿1,500.00 in satang
            reason="requested_by_customer",
        )

    def expected_pse_refund_id(self) -> str:
        return REFUND_ID

    def mock_create(self, router: respx.MockRouter, state: PseRefundState) -> None:
        basic = "Basic " + base64.b64encode(f"{SECRET_KEY}:".encode()).decode()

        def answer(request: httpx.Request) -> httpx.Response:
            assert request.method == "POST"
            assert request.headers["authorization"] == basic
            assert request.headers["omise-version"] == OMISE_API_VERSION
            assert request.headers["omise-idempotency-key"] == IDEMPOTENCY_KEY
            body = json.loads(request.content)
            assert body["amount"] == 150000
            assert body["metadata"]["refund_id"] == REFERENCE
            return httpx.Response(200, json=omise_refund(_STATUS[state]))

        router.post(REFUNDS_PATH).mock(side_effect=answer)

    def mock_create_rejected(self, router: respx.MockRouter, reason: str) -> None:
        # Omise documents the codes; the wording of `message` is an example.
        message = {
            "amount_too_large": "amount must be less than or equal to the refundable amount",
            "window_passed": "charge can't be refunded after 365 days",
        }[reason]
        router.post(REFUNDS_PATH).mock(
            return_value=httpx.Response(
                400,
                json={
                    "object": "error",
                    "location": "https://www.omise.co/api-errors#failed-refund",
                    "code": "failed_refund",
                    "message": message,
                },
            )
        )

    def mock_create_timeout(self, router: respx.MockRouter) -> None:
        router.post(REFUNDS_PATH).mock(side_effect=httpx.ReadTimeout("timed out"))

    def mock_lookup_found(self, router: respx.MockRouter, state: PseRefundState) -> None:
        other = omise_refund("closed", reference="rf_someone_else", refund_id="rfnd_test_other")
        router.get(REFUNDS_PATH).mock(
            return_value=httpx.Response(200, json=omise_list([other, omise_refund(_STATUS[state])]))
        )

    def mock_lookup_several(
        self, router: respx.MockRouter, states: Sequence[PseRefundState]
    ) -> list[str]:
        newest_first = [
            {
                **omise_refund(_STATUS[state], refund_id=f"rfnd_test_5xuy4wgj2pj1qp9pl0{n}"),
                "amount": 50000,
                "funding_amount": 50000,
                "created_at": f"2026-11-27T08:0{9 - n}:00Z",
            }
            for n, state in enumerate(states)
        ]
        # The adapter asks for `order=chronological`: oldest first.
        router.get(REFUNDS_PATH).mock(
            return_value=httpx.Response(200, json=omise_list(newest_first[::-1]))
        )
        return [refund["id"] for refund in newest_first]

    def mock_lookup_empty(self, router: respx.MockRouter) -> None:
        other = omise_refund("closed", reference="rf_someone_else", refund_id="rfnd_test_other")
        router.get(REFUNDS_PATH).mock(return_value=httpx.Response(200, json=omise_list([other])))

    def webhook(
        self, state: PseRefundState, secret: str, event_id: str = "evt_conformance_1"
    ) -> SignedWebhook:
        body = json.dumps(
            {
                "object": "event",
                "id": event_id,
                "livemode": False,
                "location": f"/events/{event_id}",
                "webhook_deliveries": [],
                "data": omise_refund(_STATUS[state]),
                "key": "refund.create",
                "created_at": "2026-11-27T08:00:01Z",
            }
        ).encode()
        timestamp = str(int(datetime.now(UTC).timestamp()))
        return SignedWebhook(
            headers={
                "Omise-Signature": sign(secret, timestamp, body),
                "Omise-Signature-Timestamp": timestamp,
                "Content-Type": "application/json",
            },
            body=body,
        )

    def expected_dispute(self, status: DisputeStatus) -> DisputeReport:
        return DisputeReport(
            pse_dispute_id=DISPUTE_ID,
            status=status,
            amount=Money(150000, "THB"),
            reason="goods_or_services_not_provided",
            evidence_due_by=None,  # Omise documents no deadline
            opened_at=datetime(2026, 11, 26, 3, 0, tzinfo=UTC),
            pse_payment_ids=(CHARGE_ID,),
        )

    def dispute_webhook(
        self,
        status: DisputeStatus,
        secret: str,
        *,
        without: str | None = None,
        event_id: str = "evt_dispute_1",
    ) -> SignedWebhook:
        key, omise_status = _DISPUTES[status]
        dispute = omise_dispute(charge=CHARGE_ID, amount=150000, status=omise_status)
        if without is not None:
            del dispute[without]
        body = json.dumps(
            {
                "object": "event",
                "id": event_id,
                "livemode": False,
                "location": f"/events/{event_id}",
                "webhook_deliveries": [],
                "data": dispute,
                "key": key,
                "created_at": "2026-11-27T08:00:01Z",
            }
        ).encode()
        timestamp = str(int(datetime.now(UTC).timestamp()))
        return SignedWebhook(
            headers={
                "Omise-Signature": sign(secret, timestamp, body),
                "Omise-Signature-Timestamp": timestamp,
                "Content-Type": "application/json",
            },
            body=body,
        )


CASE = OmiseCase()
