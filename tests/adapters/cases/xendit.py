"""Xendit as a conformance case: requests and answers shaped as its API reference
documents them (`POST/GET /refunds`, refund webhooks with `x-callback-token`).

Xendit authenticates webhooks with a static token and signs nothing, so there is
no SDK signer to use: `webhook` sets the token header exactly as Xendit sends it.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.xendit import XenditGateway
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    PseRefundState,
    RefundSubmission,
)
from tests.adapters.conformance import BASE_URL, IDEMPOTENCY_KEY, REFERENCE, SignedWebhook
from tests.adapters.test_xendit_disputes import DISPUTE_ID, xendit_dispute

API_KEY = "xnd_development_ConformanceCaseKeyForTestsOnly0000000000000000"
PAYMENT_REQUEST_ID = "pr-1102feb0-bb79-47ae-9d1e-e69394d3949c"
REFUND_ID = "rfd-6f4a377d-a201-437f-9119-f8b00cbbe857"
BUSINESS_ID = "5f27a14a9bf05c73dd040bc8"
# Rp150,000: 15,000,000 ISO minor units (sen), 150000 on the wire.
AMOUNT = Money(15_000_000, "IDR")
XENDIT_AMOUNT = 150000

_STATUS = {
    PseRefundState.PENDING: "PENDING",
    PseRefundState.SUCCEEDED: "SUCCEEDED",
    PseRefundState.FAILED: "FAILED",
}


# Ours -> Xendit's dispute status (the event is `dispute.<status lower-cased>`).
# Xendit has no status for a dispute that ends undecided.
_DISPUTES = {
    DisputeStatus.OPEN: "ACTION_REQUIRED",
    DisputeStatus.WON: "WON",
    DisputeStatus.LOST: "LOST",
}
# Disputes name the payment by its Payments API v3 id.
DISPUTED_PAYMENT_ID = "py-3cd658ae-25b9-4659-aa36-596ae41a809f"


def _basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


class XenditCase:
    signs_body = False
    name = "xendit"
    listed_states = frozenset(PseRefundState)
    dispute_statuses = frozenset(_DISPUTES)

    def __init__(self) -> None:
        # Callback verification tokens as the dashboard shows them: long random strings.
        self.secrets = (secrets.token_urlsafe(36), secrets.token_urlsafe(36))

    def account(self) -> PseAccount:
        return PseAccount(
            name="xendit_id",
            provider="xendit",
            api_key=API_KEY,
            base_url=BASE_URL,
            webhook_secrets=self.secrets,
            max_attempts=3,
            backoff_initial_seconds=0.001,
            backoff_max_seconds=0.002,
        )

    def gateway(self, account: PseAccount, http: httpx.AsyncClient) -> PseGateway:
        return XenditGateway(account, http)

    def submission(self) -> RefundSubmission:
        return RefundSubmission(
            reference=REFERENCE,
            idempotency_key=IDEMPOTENCY_KEY,
            pse_payment_id=PAYMENT_REQUEST_ID,
            amount=AMOUNT,
            reason="requested_by_customer",
        )

    def expected_pse_refund_id(self) -> str:
        return REFUND_ID

    def _refund(self, state: PseRefundState) -> dict[str, Any]:
        """Shaped like Xendit's refund object (API reference, "Refund a payment request")."""
        return {
            "id": REFUND_ID,
            "payment_request_id": PAYMENT_REQUEST_ID,
            "payment_id": "py-3cd658ae-25b9-4659-aa36-596ae41a809f",
            "invoice_id": None,
            "amount": XENDIT_AMOUNT,
            "payment_method_type": "EWALLET",
            "channel_code": "OVO",
            "currency": "IDR",
            "status": _STATUS[state],
            "reason": "REQUESTED_BY_CUSTOMER",
            "reference_id": REFERENCE,
            "failure_code": "REFUND_FAILED" if state is PseRefundState.FAILED else None,
            "refund_fee_amount": None,
            "created": "2026-11-27T08:00:00.000Z",
            "updated": "2026-11-27T08:00:00.000Z",
            "metadata": {"refund_id": REFERENCE, "reason": "requested_by_customer"},
        }

    def mock_create(self, router: respx.MockRouter, state: PseRefundState) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            assert request.headers["authorization"] == _basic(API_KEY)
            assert request.headers["idempotency-key"] == IDEMPOTENCY_KEY
            assert request.headers["content-type"] == "application/json"
            body = json.loads(request.content)
            assert body["payment_request_id"] == PAYMENT_REQUEST_ID
            assert "invoice_id" not in body
            assert body["reference_id"] == REFERENCE
            assert body["amount"] == XENDIT_AMOUNT and isinstance(body["amount"], int)
            assert body["currency"] == "IDR"
            assert body["reason"] == "REQUESTED_BY_CUSTOMER"
            assert body["metadata"]["refund_id"] == REFERENCE
            return httpx.Response(200, json=self._refund(state))

        router.post("/refunds").mock(side_effect=answer)

    def mock_create_rejected(self, router: respx.MockRouter, reason: str) -> None:
        if reason == "window_passed":
            # Xendit has no immediate error for a payment past its refund period
            # (the immediate INELIGIBLE_TRANSACTION is a payment never collected):
            # the refund object comes back FAILED with that failure code.
            refund = {
                **self._refund(PseRefundState.FAILED),
                "failure_code": "INELIGIBLE_TRANSACTION",
            }
            router.post("/refunds").mock(return_value=httpx.Response(200, json=refund))
            return
        router.post("/refunds").mock(
            return_value=httpx.Response(
                400,
                json={
                    "error_code": "MAXIMUM_REFUND_AMOUNT_REACHED",
                    "message": "Refund amount has exceeded the remaining refundable amount "
                    "of the payment",
                },
            )
        )

    def mock_create_timeout(self, router: respx.MockRouter) -> None:
        router.post("/refunds").mock(side_effect=httpx.ReadTimeout("timed out"))

    def _list(self, refunds: list[dict[str, Any]]) -> httpx.Response:
        return httpx.Response(200, json={"data": refunds, "has_more": False})

    def mock_lookup_found(self, router: respx.MockRouter, state: PseRefundState) -> None:
        other = {
            **self._refund(PseRefundState.SUCCEEDED),
            "id": "rfd-0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "reference_id": "rf_someone_else",
            "metadata": None,
        }
        router.get("/refunds", params={"payment_request_id": PAYMENT_REQUEST_ID}).mock(
            return_value=self._list([other, self._refund(state)])
        )

    def mock_lookup_several(
        self, router: respx.MockRouter, states: Sequence[PseRefundState]
    ) -> list[str]:
        refunds = [
            {
                **self._refund(state),
                "id": f"rfd-6f4a377d-a201-437f-9119-f8b00cbbe85{n}",
                "created": f"2026-11-27T08:0{9 - n}:00.000Z",
                "updated": f"2026-11-27T08:0{9 - n}:00.000Z",
            }
            for n, state in enumerate(states)
        ]
        router.get("/refunds", params={"payment_request_id": PAYMENT_REQUEST_ID}).mock(
            return_value=self._list(refunds)
        )
        return [refund["id"] for refund in refunds]

    def mock_lookup_empty(self, router: respx.MockRouter) -> None:
        router.get("/refunds", params={"payment_request_id": PAYMENT_REQUEST_ID}).mock(
            return_value=self._list([])
        )

    def webhook(
        self, state: PseRefundState, secret: str, event_id: str = "evt_conformance_1"
    ) -> SignedWebhook:
        # Xendit's refund webhooks carry no event id: `event_id` has nowhere to go.
        event = "refund.succeeded" if state is PseRefundState.SUCCEEDED else "refund.failed"
        body = json.dumps(
            {
                "event": event,
                "business_id": BUSINESS_ID,
                "created": "2026-11-27T08:00:01.000Z",
                "data": self._refund(state),
            }
        )
        return SignedWebhook(
            headers={"x-callback-token": secret, "content-type": "application/json"},
            body=body.encode(),
        )

    def expected_dispute(self, status: DisputeStatus) -> DisputeReport:
        return DisputeReport(
            pse_dispute_id=DISPUTE_ID,
            status=status,
            amount=AMOUNT,
            reason="fraud",
            evidence_due_by=datetime(2026, 3, 15, 19, 50, 51, 724000, tzinfo=UTC),
            opened_at=datetime(2026, 3, 1, 19, 50, 51, 724000, tzinfo=UTC),
            pse_payment_ids=(DISPUTED_PAYMENT_ID,),
        )

    def dispute_webhook(
        self,
        status: DisputeStatus,
        secret: str,
        *,
        without: str | None = None,
        event_id: str = "evt_dispute_1",
    ) -> SignedWebhook:
        # Xendit's dispute webhooks carry no event id: `event_id` has nowhere to go.
        dispute = xendit_dispute(
            _DISPUTES[status],
            payment_id=DISPUTED_PAYMENT_ID,
            amount={"initial": f"{XENDIT_AMOUNT}.00", "terminal": None},
        )
        if without is not None:
            del dispute[without]
        return SignedWebhook(
            headers={"x-callback-token": secret, "content-type": "application/json"},
            body=json.dumps(dispute).encode(),
        )


CASE = XenditCase()
