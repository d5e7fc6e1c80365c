"""PAY.JP (API v2) as a conformance case.

Shapes follow PAY.JP's v2 reference: the `payment_refund` object, the refunds list
of a payment flow, RFC 9457 problem details, and v2 events delivered with the
account's static `X-Payjp-Webhook-Token` header (no body signature exists to sign).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.payjp import PayjpGateway
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    PseRefundState,
    RefundSubmission,
)
from tests.adapters.conformance import BASE_URL, IDEMPOTENCY_KEY, REFERENCE, SignedWebhook

API_KEY = "sk_test_0a1b2c3d4e5f60718293a4b5"
PAYMENT_FLOW_ID = "pfw_1a2b3c4d5e6f7a8b9c0d1e2f3a"
REFUND_ID = "pyr_5e6f7a8b9c0d1e2f3a4b5c6d7e"
CREATED_AT = "2026-11-27T08:00:00Z"


class PayjpCase:
    signs_body = False
    name = "payjp"
    listed_states = frozenset(PseRefundState)

    def __init__(self) -> None:
        self.secrets = (
            "whook_3f9a1c7e5b2d4f6a8c0e1b3d5f7a",
            "whook_8e2c4a6f0b1d3e5a7c9f2b4d6e8a",
        )

    def account(self) -> PseAccount:
        return PseAccount(
            name="payjp_jp",
            provider="payjp",
            api_key=API_KEY,
            base_url=BASE_URL,
            webhook_secrets=self.secrets,
            max_attempts=3,
            backoff_initial_seconds=0.001,
            backoff_max_seconds=0.002,
        )

    def gateway(self, account: PseAccount, http: httpx.AsyncClient) -> PseGateway:
        return PayjpGateway(account, http)

    def submission(self) -> RefundSubmission:
        return RefundSubmission(
            reference=REFERENCE,
            idempotency_key=IDEMPOTENCY_KEY,
            pse_payment_id=PAYMENT_FLOW_ID,
            amount=Money(3000, "JPY"),
            reason="requested_by_customer",
            payment_method="card",
        )

    def expected_pse_refund_id(self) -> str:
        return REFUND_ID

    def _refund(self, state: PseRefundState) -> dict[str, Any]:
        return {
            "object": "payment_refund",
            "id": REFUND_ID,
            "livemode": False,
            "payment_flow_id": PAYMENT_FLOW_ID,
            "amount": 3000,
            "status": state.value,
            "reason": "requested_by_customer",
            "metadata": {"refund_id": REFERENCE, "reason": "requested_by_customer"},
            "created_at": CREATED_AT,
            "updated_at": CREATED_AT,
        }

    @staticmethod
    def _problem(status: int, code: str, title: str, detail: str) -> httpx.Response:
        return httpx.Response(
            status,
            headers={"content-type": "application/problem+json"},
            content=json.dumps(
                {
                    "status": status,
                    "code": code,
                    "title": title,
                    "detail": detail,
                    "instance": "/v2/payment_refunds",
                    "type": f"https://docs.pay.jp/v2/errors/{code.replace('_', '-')}",
                }
            ).encode(),
        )

    def mock_create(self, router: respx.MockRouter, state: PseRefundState) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            assert request.method == "POST"
            assert request.headers["authorization"] == f"Bearer {API_KEY}"
            assert request.headers["idempotency-key"] == IDEMPOTENCY_KEY
            assert request.headers["content-type"] == "application/json"
            body = json.loads(request.content)
            assert body["payment_flow_id"] == PAYMENT_FLOW_ID
            assert body["amount"] == 3000  # whole yen
            assert body["reason"] == "requested_by_customer"
            assert body["metadata"]["refund_id"] == REFERENCE
            return httpx.Response(200, json=self._refund(state))

        router.post("/v2/payment_refunds").mock(side_effect=answer)

    def mock_create_rejected(self, router: respx.MockRouter, reason: str) -> None:
        if reason == "amount_too_large":
            response = self._problem(
                400,
                "refund_exceeds_payment",
                "Refund Exceeds Payment",
                "The refund amount exceeds the refundable amount of the payment flow.",
            )
        else:
            # v2 publishes no code for an expired refund period; v1 names it
            # `refund_limit_exceeded`, carried here in the v2 problem envelope.
            response = self._problem(
                400,
                "refund_limit_exceeded",
                "Refund Limit Exceeded",
                "The refund period of this payment has passed.",
            )
        router.post("/v2/payment_refunds").mock(return_value=response)

    def mock_create_timeout(self, router: respx.MockRouter) -> None:
        router.post("/v2/payment_refunds").mock(side_effect=httpx.ReadTimeout("timed out"))

    def _list(self, refunds: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "object": "list",
            "url": f"/v2/payment_flows/{PAYMENT_FLOW_ID}/refunds",
            "has_more": False,
            "data": refunds,
        }

    def mock_lookup_found(self, router: respx.MockRouter, state: PseRefundState) -> None:
        router.get(f"/v2/payment_flows/{PAYMENT_FLOW_ID}/refunds").mock(
            return_value=httpx.Response(200, json=self._list([self._refund(state)]))
        )

    def mock_lookup_several(
        self, router: respx.MockRouter, states: Sequence[PseRefundState]
    ) -> list[str]:
        # Newest first, as PAY.JP lists.
        refunds = [
            {
                **self._refund(state),
                "id": f"pyr_5e6f7a8b9c0d1e2f3a4b5c6d7{n}",
                "created_at": f"2026-11-27T08:0{9 - n}:00Z",
            }
            for n, state in enumerate(states)
        ]
        router.get(f"/v2/payment_flows/{PAYMENT_FLOW_ID}/refunds").mock(
            return_value=httpx.Response(200, json=self._list(refunds))
        )
        return [refund["id"] for refund in refunds]

    def mock_lookup_empty(self, router: respx.MockRouter) -> None:
        other = {
            **self._refund(PseRefundState.SUCCEEDED),
            "id": "pyr_dashboard0000000000000000",
            "metadata": {},
        }
        router.get(f"/v2/payment_flows/{PAYMENT_FLOW_ID}/refunds").mock(
            return_value=httpx.Response(200, json=self._list([other]))
        )

    def webhook(
        self, state: PseRefundState, secret: str, event_id: str = "evt_conformance_1"
    ) -> SignedWebhook:
        event_type = "refund.failed" if state is PseRefundState.FAILED else "refund.updated"
        body = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "livemode": False,
                "type": event_type,
                "pending_webhooks": 1,
                "data": self._refund(state),
                "created_at": CREATED_AT,
                "updated_at": CREATED_AT,
            }
        )
        # PAY.JP authenticates a delivery with the account's token, not a signature.
        return SignedWebhook(
            headers={"X-Payjp-Webhook-Token": secret, "Content-Type": "application/json"},
            body=body.encode(),
        )


CASE = PayjpCase()
