"""Stripe as a conformance case, with webhooks signed by the official `stripe` package."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import httpx
import respx
import stripe

from app.adapters.pse.base import PseAccount
from app.adapters.pse.stripe import StripeGateway
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    PseRefundState,
    RefundSubmission,
)
from tests.adapters.conformance import BASE_URL, IDEMPOTENCY_KEY, REFERENCE, SignedWebhook
from tests.adapters.test_stripe_disputes import CREATED, DISPUTE_ID, DUE_BY, stripe_dispute
from tests.adapters.test_stripe_gateway import CHARGE, stripe_error, stripe_refund

PAYMENT_INTENT = "pi_3QJx2aLkdIwHu7ix0c4Gv1Rm"
API_KEY = "sk_test_conformance_0000000000000000"

# Ours -> (event type, Stripe's dispute status).
_DISPUTES = {
    DisputeStatus.OPEN: ("charge.dispute.created", "needs_response"),
    DisputeStatus.WON: ("charge.dispute.closed", "won"),
    DisputeStatus.LOST: ("charge.dispute.closed", "lost"),
    DisputeStatus.CLOSED: ("charge.dispute.closed", "warning_closed"),
}


class StripeCase:
    signs_body = True
    name = "stripe"
    listed_states = frozenset(PseRefundState)
    secrets = ("whsec_conformance_current_secret", "whsec_conformance_previous_secret")
    dispute_statuses = frozenset(_DISPUTES)

    def account(self) -> PseAccount:
        return PseAccount(
            name="stripe_us",
            provider="stripe",
            api_key=API_KEY,
            base_url=BASE_URL,
            webhook_secrets=self.secrets,
            max_attempts=3,
            backoff_initial_seconds=0.001,
            backoff_max_seconds=0.002,
        )

    def gateway(self, account: PseAccount, http: httpx.AsyncClient) -> PseGateway:
        return StripeGateway(account, http)

    def submission(self) -> RefundSubmission:
        return RefundSubmission(
            reference=REFERENCE,
            idempotency_key=IDEMPOTENCY_KEY,
            pse_payment_id=PAYMENT_INTENT,
            amount=Money(3000, "USD"),
            reason="requested_by_customer",
        )

    def expected_pse_refund_id(self) -> str:
        return stripe_refund()["id"]

    def _refund(self, state: PseRefundState) -> dict:
        return stripe_refund(
            status=state.value,
            payment_intent=PAYMENT_INTENT,
            metadata={"refund_id": REFERENCE, "reason": "requested_by_customer"},
        )

    def mock_create(self, router: respx.MockRouter, state: PseRefundState) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            form = dict(parse_qsl(request.content.decode()))
            assert request.headers["authorization"] == f"Bearer {API_KEY}"
            assert request.headers["idempotency-key"] == IDEMPOTENCY_KEY
            assert form["payment_intent"] == PAYMENT_INTENT
            assert form["amount"] == "3000"
            assert form["metadata[refund_id]"] == REFERENCE
            return httpx.Response(200, json=self._refund(state))

        router.post("/v1/refunds").mock(side_effect=answer)

    def mock_create_rejected(self, router: respx.MockRouter, reason: str) -> None:
        if reason == "amount_too_large":
            response = stripe_error(
                400,
                "amount_too_large",
                "Refund amount ($40.00) is greater than unrefunded amount on charge ($30.00)",
                param="amount",
            )
        else:
            response = stripe_error(
                400,
                "charge_not_refundable",
                "This payment is too old to be refunded. Its refund window has passed.",
            )
        router.post("/v1/refunds").mock(return_value=response)

    def mock_create_timeout(self, router: respx.MockRouter) -> None:
        router.post("/v1/refunds").mock(side_effect=httpx.ReadTimeout("timed out"))

    def mock_lookup_found(self, router: respx.MockRouter, state: PseRefundState) -> None:
        router.get("/v1/refunds", params={"payment_intent": PAYMENT_INTENT}).mock(
            return_value=httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [self._refund(state)],
                    "has_more": False,
                    "url": "/v1/refunds",
                },
            )
        )

    def mock_lookup_several(
        self, router: respx.MockRouter, states: Sequence[PseRefundState]
    ) -> list[str]:
        # Stripe lists refunds newest first.
        refunds = [
            {
                **self._refund(state),
                "id": f"re_3QJx2aLkdIwHu7ix0Several{n}",
                "created": 1795766400 - n,
            }
            for n, state in enumerate(states)
        ]
        router.get("/v1/refunds", params={"payment_intent": PAYMENT_INTENT}).mock(
            return_value=httpx.Response(
                200,
                json={"object": "list", "data": refunds, "has_more": False, "url": "/v1/refunds"},
            )
        )
        return [refund["id"] for refund in refunds]

    def mock_lookup_empty(self, router: respx.MockRouter) -> None:
        router.get("/v1/refunds", params={"payment_intent": PAYMENT_INTENT}).mock(
            return_value=httpx.Response(
                200, json={"object": "list", "data": [], "has_more": False, "url": "/v1/refunds"}
            )
        )

    def webhook(
        self, state: PseRefundState, secret: str, event_id: str = "evt_conformance_1"
    ) -> SignedWebhook:
        payload = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "api_version": "2024-06-20",
                "created": int(time.time()),
                "data": {"object": self._refund(state)},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": "refund.updated",
            }
        )
        header = stripe.WebhookSignature.generate_signature_header(
            payload, secret, timestamp=int(time.time())
        )
        return SignedWebhook(
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            body=payload.encode(),
        )

    def expected_dispute(self, status: DisputeStatus) -> DisputeReport:
        return DisputeReport(
            pse_dispute_id=DISPUTE_ID,
            status=status,
            amount=Money(3000, "USD"),
            reason="fraudulent",
            evidence_due_by=datetime.fromtimestamp(DUE_BY, UTC),
            opened_at=datetime.fromtimestamp(CREATED, UTC),
            pse_payment_ids=(CHARGE, PAYMENT_INTENT),
        )

    def dispute_webhook(
        self,
        status: DisputeStatus,
        secret: str,
        *,
        without: str | None = None,
        event_id: str = "evt_dispute_1",
    ) -> SignedWebhook:
        event_type, stripe_status = _DISPUTES[status]
        dispute = stripe_dispute(
            amount=3000, currency="usd", status=stripe_status, payment_intent=PAYMENT_INTENT
        )
        if without is not None:
            del dispute[without]
        payload = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "api_version": "2024-06-20",
                "created": int(time.time()),
                "data": {"object": dispute},
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": event_type,
            }
        )
        header = stripe.WebhookSignature.generate_signature_header(
            payload, secret, timestamp=int(time.time())
        )
        return SignedWebhook(
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            body=payload.encode(),
        )


CASE = StripeCase()
