"""KOMOJU as a conformance case, with answers shaped like KOMOJU's API reference
(payment object with `refunds[]`, error envelope, webhook event envelope).

The builders here are shared with tests/adapters/test_komoju_gateway.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

import httpx
import respx

from app.adapters.pse.base import PseAccount
from app.adapters.pse.komoju import KomojuGateway
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    PseRefundState,
    RefundSubmission,
)
from tests.adapters.conformance import BASE_URL, IDEMPOTENCY_KEY, REFERENCE, SignedWebhook

SECRET_KEY = "sk_test_7ckv0rnf9q2hxwz3m1bdy4ejl"
PAYMENT_ID = "3d2w3jk1v0mm7m4jyq0jomb0i"
REFUND_ID = "6bqx1q5w9xkuj5f1ahkvv1hzs"
PAYMENT_PATH = f"/api/v1/payments/{PAYMENT_ID}"
REFUND_PATH = f"{PAYMENT_PATH}/refund"


def basic_auth(secret_key: str = SECRET_KEY) -> str:
    """HTTP Basic as KOMOJU documents it: the secret key as user, an empty password."""
    return "Basic " + base64.b64encode(f"{secret_key}:".encode()).decode()


def komoju_refund(**overrides: Any) -> dict[str, Any]:
    """One entry of a KOMOJU payment's `refunds[]`."""
    refund: dict[str, Any] = {
        "id": REFUND_ID,
        "resource": "refund",
        "amount": 3000,
        "currency": "JPY",
        "payment": PAYMENT_ID,
        "description": REFERENCE,
        "created_at": "2026-11-27T08:00:00Z",
        "chargeback": False,
    }
    refund.update(overrides)
    return refund


def komoju_payment(refunds: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    """A KOMOJU payment object (`GET /api/v1/payments/{id}`, and the refund answer)."""
    refunds = [] if refunds is None else refunds
    refunded = sum(r["amount"] for r in refunds if isinstance(r.get("amount"), int))
    payment: dict[str, Any] = {
        "id": PAYMENT_ID,
        "resource": "payment",
        "status": "refunded" if refunded >= 5000 else "captured",
        "amount": 5000,
        "tax": 0,
        "customer": None,
        "payment_deadline": "2026-11-20T14:59:59Z",
        "payment_details": {
            "type": "credit_card",
            "email": "buyer@example.jp",
            "brand": "visa",
            "last_four_digits": "1111",
            "month": 12,
            "year": 2030,
        },
        "payment_method_fee": 0,
        "total": 5000,
        "currency": "JPY",
        "description": None,
        "captured_at": "2026-11-17T03:12:40Z",
        "external_order_num": "ORDER-1042",
        "metadata": {"order_id": "1042"},
        "created_at": "2026-11-17T03:12:31Z",
        "amount_refunded": refunded,
        "locale": "ja",
        "session": None,
        "customer_family_name": None,
        "customer_given_name": None,
        "mcc": None,
        "statement_descriptor": None,
        "refunds": refunds,
        "refund_requests": [],
    }
    payment.update(overrides)
    return payment


def komoju_error(status: int, code: str, message: str, param: str | None = None) -> httpx.Response:
    """KOMOJU's error envelope."""
    return httpx.Response(
        status,
        json={"error": {"code": code, "message": message, "param": param, "details": {}}},
    )


def komoju_event(
    event_type: str, payment: dict[str, Any], event_id: str = "9h3cd0fk5lo8e1ujgpchm0xwd"
) -> str:
    """A KOMOJU webhook event envelope."""
    return json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "resource": "event",
            "data": payment,
            "created_at": "2026-11-27T08:00:01Z",
            "reason": None,
        }
    )


def sign(body: bytes, secret: str) -> str:
    """The reference signer (no official KOMOJU SDK for Python): hex HMAC-SHA256 of
    the raw body keyed with the webhook secret token, as KOMOJU documents it."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_headers(body: bytes, secret: str, event_type: str) -> dict[str, str]:
    return {
        "X-Komoju-ID": "2tf1b9ytdb2t4b1e6z3u8rbxl",
        "X-Komoju-Signature": sign(body, secret),
        "X-Komoju-Event": event_type,
        "User-Agent": "Komoju-Webhook",
        "Content-Type": "application/json",
    }


def _refund_in(state: PseRefundState) -> dict[str, Any]:
    if state is PseRefundState.SUCCEEDED:
        return komoju_refund()
    # Only KOMOJU's cash pick-up flow leaves a refund waiting (for the payer).
    return komoju_refund(redirect_url=f"https://komoju.com/refunds/{REFUND_ID}")


class KomojuCase:
    signs_body = True
    name = "komoju"
    listed_states = frozenset({PseRefundState.SUCCEEDED, PseRefundState.PENDING})

    def __init__(self) -> None:
        self.secrets = ("whk_current_4f1c2a9b7e", "whk_previous_0d8e3b6a51")

    def account(self) -> PseAccount:
        return PseAccount(
            name="komoju_jp",
            provider="komoju",
            api_key=SECRET_KEY,
            base_url=BASE_URL,
            webhook_secrets=self.secrets,
            max_attempts=3,
            backoff_initial_seconds=0.001,
            backoff_max_seconds=0.002,
        )

    def gateway(self, account: PseAccount, http: httpx.AsyncClient) -> PseGateway:
        return KomojuGateway(account, http)

    def submission(self) -> RefundSubmission:
        return RefundSubmission(
            reference=REFERENCE,
            idempotency_key=IDEMPOTENCY_KEY,
            pse_payment_id=PAYMENT_ID,
            amount=Money(3000, "JPY"),
            reason="requested_by_customer",
            payment_method="credit_card",
        )

    def expected_pse_refund_id(self) -> str:
        return REFUND_ID

    def mock_create(self, router: respx.MockRouter, state: PseRefundState) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            assert request.headers["authorization"] == basic_auth()
            assert request.headers["x-komoju-idempotency"] == IDEMPOTENCY_KEY
            assert request.headers["content-type"] == "application/json"
            assert json.loads(request.content) == {"amount": 3000, "description": REFERENCE}
            return httpx.Response(200, json=komoju_payment([_refund_in(state)]))

        router.post(REFUND_PATH).mock(side_effect=answer)

    def mock_create_rejected(self, router: respx.MockRouter, reason: str) -> None:
        if reason == "amount_too_large":
            router.post(REFUND_PATH).mock(
                return_value=komoju_error(
                    422, "invalid_parameter", "The value of amount is invalid.", "amount"
                )
            )
            return
        # A card payment past its refund period: KOMOJU refuses with `not_refundable`,
        # and the payment (captured, nothing refunded, card) shows why.
        router.post(REFUND_PATH).mock(
            return_value=komoju_error(
                422, "not_refundable", "The payment you requested is not refundable."
            )
        )
        router.get(PAYMENT_PATH).mock(
            return_value=httpx.Response(
                200,
                json=komoju_payment(
                    [], created_at="2026-03-02T01:00:00Z", captured_at="2026-03-02T01:00:09Z"
                ),
            )
        )

    def mock_create_timeout(self, router: respx.MockRouter) -> None:
        router.post(REFUND_PATH).mock(side_effect=httpx.ReadTimeout("timed out"))

    def mock_lookup_found(self, router: respx.MockRouter, state: PseRefundState) -> None:
        router.get(PAYMENT_PATH).mock(
            return_value=httpx.Response(200, json=komoju_payment([_refund_in(state)]))
        )

    def mock_lookup_several(
        self, router: respx.MockRouter, states: Sequence[PseRefundState]
    ) -> list[str]:
        # `refunds[]` in the order they were made, oldest first.
        newest_first = [
            {
                **_refund_in(state),
                "id": f"6bqx1q5w9xkuj5f1ahkvv1hz{n}",
                "amount": 1000,
                "created_at": f"2026-11-27T08:0{9 - n}:00Z",
            }
            for n, state in enumerate(states)
        ]
        router.get(PAYMENT_PATH).mock(
            return_value=httpx.Response(200, json=komoju_payment(newest_first[::-1]))
        )
        return [refund["id"] for refund in newest_first]

    def mock_lookup_empty(self, router: respx.MockRouter) -> None:
        router.get(PAYMENT_PATH).mock(return_value=httpx.Response(200, json=komoju_payment([])))

    def webhook(
        self, state: PseRefundState, secret: str, event_id: str = "evt_conformance_1"
    ) -> SignedWebhook:
        body = komoju_event(
            "payment.refund.created", komoju_payment([_refund_in(state)]), event_id
        ).encode()
        return SignedWebhook(
            headers=webhook_headers(body, secret, "payment.refund.created"), body=body
        )


CASE = KomojuCase()
