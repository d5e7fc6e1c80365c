"""Razorpay as a conformance case. Webhooks are signed as Razorpay documents it
(hex HMAC-SHA256 of the raw body) and every signature is checked against the
official `razorpay` SDK before it is used."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import razorpay
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.razorpay import RazorpayGateway
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    PseRefundState,
    RefundSubmission,
)
from tests.adapters.conformance import BASE_URL, IDEMPOTENCY_KEY, REFERENCE, SignedWebhook
from tests.adapters.test_razorpay_disputes import (
    CREATED_AT,
    DISPUTE_ID,
    RESPOND_BY,
    dispute_event,
    razorpay_dispute,
)
from tests.adapters.test_razorpay_gateway import (
    razorpay_collection,
    razorpay_error,
    razorpay_event,
    razorpay_payment,
    razorpay_refund,
    sign,
)

KEY_ID = "rzp_test_Conformance0001"
KEY_SECRET = "conformanceKeySecret000000"
PAYMENT_ID = "pay_Conform0000001"
REFUND_ID = "rfnd_Conform000001"
AMOUNT_PAISE = 125000

_STATUS = {
    PseRefundState.PENDING: "pending",
    PseRefundState.SUCCEEDED: "processed",
    PseRefundState.FAILED: "failed",
}
_EVENT = {
    PseRefundState.PENDING: "refund.created",
    PseRefundState.SUCCEEDED: "refund.processed",
    PseRefundState.FAILED: "refund.failed",
}
# Ours -> (event type, Razorpay's dispute status).
_DISPUTES = {
    DisputeStatus.OPEN: ("payment.dispute.created", "open"),
    DisputeStatus.WON: ("payment.dispute.won", "won"),
    DisputeStatus.LOST: ("payment.dispute.lost", "lost"),
    DisputeStatus.CLOSED: ("payment.dispute.closed", "closed"),
}
_REFUSALS = {
    "amount_too_large": "The refund amount provided is greater than amount captured.",
    "window_passed": "Payment is more than 6 months old, only instant refund is supported",
}


class RazorpayCase:
    signs_body = True
    name = "razorpay"
    listed_states = frozenset(PseRefundState)
    secrets = ("conformance_webhook_secret_current", "conformance_webhook_secret_previous")
    dispute_statuses = frozenset(_DISPUTES)

    def account(self) -> PseAccount:
        return PseAccount(
            name="razorpay_in",
            provider="razorpay",
            api_key=KEY_SECRET,
            base_url=BASE_URL,
            webhook_secrets=self.secrets,
            max_attempts=3,
            backoff_initial_seconds=0.001,
            backoff_max_seconds=0.002,
            options={"key_id": KEY_ID},
        )

    def gateway(self, account: PseAccount, http: httpx.AsyncClient) -> PseGateway:
        return RazorpayGateway(account, http)

    def submission(self) -> RefundSubmission:
        return RefundSubmission(
            reference=REFERENCE,
            idempotency_key=IDEMPOTENCY_KEY,
            pse_payment_id=PAYMENT_ID,
            amount=Money(AMOUNT_PAISE, "INR"),
            reason="requested_by_customer",
        )

    def expected_pse_refund_id(self) -> str:
        return REFUND_ID

    def _refund(self, state: PseRefundState) -> dict[str, Any]:
        return razorpay_refund(
            id=REFUND_ID,
            payment_id=PAYMENT_ID,
            amount=AMOUNT_PAISE,
            currency="INR",
            status=_STATUS[state],
            receipt=REFERENCE,
            notes={"refund_id": REFERENCE, "reason": "requested_by_customer"},
        )

    def mock_create(self, router: respx.MockRouter, state: PseRefundState) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            credentials = base64.b64encode(f"{KEY_ID}:{KEY_SECRET}".encode()).decode()
            assert request.method == "POST"
            assert request.headers["authorization"] == f"Basic {credentials}"
            assert request.headers["x-refund-idempotency"] == IDEMPOTENCY_KEY
            body = json.loads(request.content)
            assert body["amount"] == AMOUNT_PAISE
            assert body["speed"] == "normal"
            assert body["receipt"] == REFERENCE
            assert body["notes"]["refund_id"] == REFERENCE
            return httpx.Response(200, json=self._refund(state))

        router.post(f"/v1/payments/{PAYMENT_ID}/refund").mock(side_effect=answer)

    def mock_create_rejected(self, router: respx.MockRouter, reason: str) -> None:
        router.post(f"/v1/payments/{PAYMENT_ID}/refund").mock(
            return_value=razorpay_error(400, _REFUSALS[reason])
        )

    def mock_create_timeout(self, router: respx.MockRouter) -> None:
        router.post(f"/v1/payments/{PAYMENT_ID}/refund").mock(
            side_effect=httpx.ReadTimeout("timed out")
        )

    def mock_lookup_found(self, router: respx.MockRouter, state: PseRefundState) -> None:
        someone_else = razorpay_refund(
            id="rfnd_Conform000002",
            payment_id=PAYMENT_ID,
            notes={"refund_id": "rf_someone_else"},
            receipt=None,
        )
        router.get(f"/v1/payments/{PAYMENT_ID}/refunds").mock(
            return_value=httpx.Response(
                200, json=razorpay_collection([someone_else, self._refund(state)])
            )
        )

    def mock_lookup_several(
        self, router: respx.MockRouter, states: Sequence[PseRefundState]
    ) -> list[str]:
        # Newest first, as Razorpay lists.
        refunds = [
            {
                **self._refund(state),
                "id": f"rfnd_Conform00001{n}",
                "amount": 10000,
                "created_at": 1795766400 - n,
            }
            for n, state in enumerate(states)
        ]
        router.get(f"/v1/payments/{PAYMENT_ID}/refunds").mock(
            return_value=httpx.Response(200, json=razorpay_collection(refunds))
        )
        return [refund["id"] for refund in refunds]

    def mock_lookup_empty(self, router: respx.MockRouter) -> None:
        router.get(f"/v1/payments/{PAYMENT_ID}/refunds").mock(
            return_value=httpx.Response(200, json=razorpay_collection([]))
        )

    def webhook(
        self, state: PseRefundState, secret: str, event_id: str = "evt_conformance_1"
    ) -> SignedWebhook:
        body = razorpay_event(_EVENT[state], self._refund(state))
        signature = sign(body, secret)
        # The official SDK is the independent judge of the signature.
        client = razorpay.Client(auth=(KEY_ID, KEY_SECRET))
        assert client.utility.verify_webhook_signature(body.decode("utf-8"), signature, secret)
        return SignedWebhook(
            headers={
                "X-Razorpay-Signature": signature,
                "X-Razorpay-Event-Id": event_id,
                "Content-Type": "application/json",
            },
            body=body,
        )

    def expected_dispute(self, status: DisputeStatus) -> DisputeReport:
        return DisputeReport(
            pse_dispute_id=DISPUTE_ID,
            status=status,
            amount=Money(AMOUNT_PAISE, "INR"),
            reason="goods_not_received",
            evidence_due_by=datetime.fromtimestamp(RESPOND_BY, UTC),
            opened_at=datetime.fromtimestamp(CREATED_AT, UTC),
            pse_payment_ids=(PAYMENT_ID,),
        )

    def dispute_webhook(
        self,
        status: DisputeStatus,
        secret: str,
        *,
        without: str | None = None,
        event_id: str = "evt_dispute_1",
    ) -> SignedWebhook:
        event_type, razorpay_status = _DISPUTES[status]
        dispute = razorpay_dispute(
            payment_id=PAYMENT_ID, amount=AMOUNT_PAISE, currency="INR", status=razorpay_status
        )
        if without is not None:
            del dispute[without]
        body = dispute_event(event_type, dispute, razorpay_payment(id=PAYMENT_ID))
        signature = sign(body, secret)
        client = razorpay.Client(auth=(KEY_ID, KEY_SECRET))
        assert client.utility.verify_webhook_signature(body.decode("utf-8"), signature, secret)
        return SignedWebhook(
            headers={
                "X-Razorpay-Signature": signature,
                "X-Razorpay-Event-Id": event_id,
                "Content-Type": "application/json",
            },
            body=body,
        )


CASE = RazorpayCase()
