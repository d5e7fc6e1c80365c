"""The sandbox PSE as a conformance case (the reference example for providers)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
import respx
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from app.adapters.pse.base import PseAccount
from app.adapters.pse.sandbox import SandboxGateway
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    PseRefundState,
    RefundSubmission,
)
from app.sandbox.config import new_webhook_secret
from tests.adapters.conformance import BASE_URL, IDEMPOTENCY_KEY, REFERENCE, SignedWebhook

PAYMENT_ID = "pay_sandbox_1"
REFUND_ID = "sbre_0193c1d2e3f4"
DISPUTE_ID = "sbdp_0193c1d2e3f4"


def sign(secret: str, msg_id: str, at: datetime, body: str) -> str:
    """`webhook-signature` as Standard Webhooks defines it, by the `standardwebhooks`
    package; for an empty key, which the package will not use, by hand, as a
    forger would."""
    try:
        return Webhook(secret).sign(msg_id, at, body)
    except EmptyWebhookSecretError:
        signed = f"{msg_id}.{int(at.timestamp())}.{body}".encode()
        return "v1," + base64.b64encode(hmac.new(b"", signed, hashlib.sha256).digest()).decode()


class SandboxCase:
    signs_body = True
    name = "sandbox"
    listed_states = frozenset(PseRefundState)
    dispute_statuses = frozenset(DisputeStatus)

    def __init__(self) -> None:
        self.secrets = (new_webhook_secret(), new_webhook_secret())

    def account(self) -> PseAccount:
        return PseAccount(
            name="sandbox",
            provider="sandbox",
            api_key="sk_sandbox_test",
            base_url=BASE_URL,
            webhook_secrets=self.secrets,
            max_attempts=3,
            backoff_initial_seconds=0.001,
            backoff_max_seconds=0.002,
        )

    def gateway(self, account: PseAccount, http: httpx.AsyncClient) -> PseGateway:
        return SandboxGateway(account, http)

    def submission(self) -> RefundSubmission:
        return RefundSubmission(
            reference=REFERENCE,
            idempotency_key=IDEMPOTENCY_KEY,
            pse_payment_id=PAYMENT_ID,
            amount=Money(3000, "JPY"),
            reason="requested_by_customer",
        )

    def expected_pse_refund_id(self) -> str:
        return REFUND_ID

    def _refund(self, state: PseRefundState) -> dict:
        return {
            "id": REFUND_ID,
            "object": "refund",
            "payment_id": PAYMENT_ID,
            "amount": 3000,
            "currency": "JPY",
            "status": state.value,
            "reference": REFERENCE,
            "reason": "requested_by_customer",
            "metadata": {},
            "failure_code": None,
            "failure_message": None,
            "created_at": "2026-11-27T08:00:00Z",
            "updated_at": "2026-11-27T08:00:00Z",
        }

    def mock_create(self, router: respx.MockRouter, state: PseRefundState) -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            assert request.headers["authorization"] == "Bearer sk_sandbox_test"
            assert request.headers["idempotency-key"] == IDEMPOTENCY_KEY
            body = json.loads(request.content)
            assert body["payment_id"] == PAYMENT_ID and body["reference"] == REFERENCE
            assert body["amount"] == 3000 and body["currency"] == "JPY"
            return httpx.Response(200, json=self._refund(state))

        router.post("/v1/refunds").mock(side_effect=answer)

    def mock_create_rejected(self, router: respx.MockRouter, reason: str) -> None:
        code = {"amount_too_large": "amount_too_large", "window_passed": "refund_window_passed"}
        router.post("/v1/refunds").mock(
            return_value=httpx.Response(
                400, json={"error": {"code": code[reason], "message": reason}}
            )
        )

    def mock_create_timeout(self, router: respx.MockRouter) -> None:
        router.post("/v1/refunds").mock(side_effect=httpx.ReadTimeout("timed out"))

    def mock_lookup_found(self, router: respx.MockRouter, state: PseRefundState) -> None:
        router.get("/v1/refunds", params={"reference": REFERENCE}).mock(
            return_value=httpx.Response(200, json={"object": "list", "data": [self._refund(state)]})
        )

    def mock_lookup_several(
        self, router: respx.MockRouter, states: Sequence[PseRefundState]
    ) -> list[str]:
        refunds = [
            {
                **self._refund(state),
                "id": f"sbre_0193c1d2e3f{n}",
                "created_at": f"2026-11-27T08:0{9 - n}:00Z",
            }
            for n, state in enumerate(states)
        ]
        router.get("/v1/refunds", params={"reference": REFERENCE}).mock(
            return_value=httpx.Response(200, json={"object": "list", "data": refunds})
        )
        return [refund["id"] for refund in refunds]

    def mock_lookup_empty(self, router: respx.MockRouter) -> None:
        router.get("/v1/refunds", params={"reference": REFERENCE}).mock(
            return_value=httpx.Response(200, json={"object": "list", "data": []})
        )

    def webhook(
        self, state: PseRefundState, secret: str, event_id: str = "evt_conformance_1"
    ) -> SignedWebhook:
        body = json.dumps(
            {
                "id": event_id,
                "type": f"refund.{state.value}",
                "created_at": "2026-11-27T08:00:01Z",
                "data": self._refund(state),
            }
        )
        now = datetime.now(UTC)
        return SignedWebhook(
            headers={
                "webhook-id": event_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": sign(secret, event_id, now, body),
                "content-type": "application/json",
            },
            body=body.encode(),
        )

    def expected_dispute(self, status: DisputeStatus) -> DisputeReport:
        return DisputeReport(
            pse_dispute_id=DISPUTE_ID,
            status=status,
            amount=Money(3000, "JPY"),
            reason="fraudulent",
            evidence_due_by=datetime(2026, 12, 4, 8, 0, tzinfo=UTC),
            opened_at=datetime(2026, 11, 27, 8, 0, tzinfo=UTC),
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
        dispute = {
            "id": DISPUTE_ID,
            "object": "dispute",
            "payment_id": PAYMENT_ID,
            "amount": 3000,
            "currency": "JPY",
            "reason": "fraudulent",
            "status": status.value,
            "evidence_due_by": "2026-12-04T08:00:00Z",
            "created_at": "2026-11-27T08:00:00Z",
            "updated_at": "2026-11-28T08:00:00Z",
            "closed_at": None if status is DisputeStatus.OPEN else "2026-11-28T08:00:00Z",
        }
        if without is not None:
            del dispute[without]
        event_type = "dispute.opened" if status is DisputeStatus.OPEN else "dispute.closed"
        body = json.dumps(
            {
                "id": event_id,
                "type": event_type,
                "created_at": "2026-11-28T08:00:01Z",
                "data": dispute,
            }
        )
        now = datetime.now(UTC)
        return SignedWebhook(
            headers={
                "webhook-id": event_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": sign(secret, event_id, now, body),
                "content-type": "application/json",
            },
            body=body.encode(),
        )


CASE = SandboxCase()
