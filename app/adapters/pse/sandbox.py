"""The sandbox PSE (app/sandbox): JSON in and out, Bearer auth, errors in
`{"error": {"code", "message"}}`, webhooks signed per Standard Webhooks.

Its events: `refund.created`, `refund.succeeded`, `refund.failed` (the refund
in `data`), and `dispute.opened`, `dispute.updated`, `dispute.closed` (the
dispute in `data`, raised through `POST /_control/disputes`)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from standardwebhooks import Webhook

from app.adapters.pse.base import (
    PseAccount,
    PseNoAnswer,
    RetryingHttp,
    ids_in,
    json_object,
    json_or_none,
    ours_among,
    unix_seconds,
    verify_webhook,
)
from app.adapters.pse.disputes import (
    UnreadableDispute,
    dispute_event,
    dispute_report,
    dispute_status,
    iso_time,
)
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.errors import DomainError
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    LookupResult,
    PseRefund,
    PseRefundState,
    PseWebhookEvent,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)

log = structlog.get_logger("app.pse.sandbox")

_REFUNDS_PATH = "/v1/refunds"

_STATES = {
    "pending": PseRefundState.PENDING,
    "succeeded": PseRefundState.SUCCEEDED,
    "failed": PseRefundState.FAILED,
}

# Sandbox 400 codes that prove the refund was not made -> (our code, offline).
# Past the window the money can only go back outside the PSE: offline payout.
_DECLINES: dict[str, tuple[str, bool]] = {
    "amount_too_large": ("amount_exceeds_refundable", False),
    "refund_window_passed": ("refund_window_passed", True),
    "invalid_amount": ("invalid_amount", False),
    "invalid_currency": ("invalid_currency", False),
    "currency_mismatch": ("currency_mismatch", False),
    "invalid_request": ("invalid_request", False),
    "idempotency_key_missing": ("idempotency_key_missing", False),
}


class UnreadableRefund(ValueError):
    """A sandbox refund object this adapter cannot read."""


def refund_from_sandbox(obj: Any) -> PseRefund:
    """Translate a sandbox refund object (create answer, look-up, webhook data)."""
    if not isinstance(obj, Mapping):
        raise UnreadableRefund("refund is not a JSON object")
    refund_id = obj.get("id")
    if not isinstance(refund_id, str) or not refund_id:
        raise UnreadableRefund("refund has no id")
    status = obj.get("status")
    state = _STATES.get(status) if isinstance(status, str) else None
    if state is None:
        raise UnreadableRefund(f"unknown refund status {status!r}")
    amount, currency = obj.get("amount"), obj.get("currency")
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        raise UnreadableRefund("refund amount or currency missing")
    try:
        money = Money(amount, currency)
    except DomainError as exc:
        raise UnreadableRefund(str(exc)) from None
    return PseRefund(
        pse_refund_id=refund_id,
        state=state,
        amount=money,
        reference=_optional_str(obj.get("reference")),
        failure_code=_optional_str(obj.get("failure_code")),
        failure_message=_optional_str(obj.get("failure_message")),
        pse_payment_ids=ids_in(obj, "payment_id"),
    )


_DISPUTE_EVENT_PREFIX = "dispute."
# The sandbox speaks the domain's statuses.
_DISPUTE_STATUSES = {status.value: status for status in DisputeStatus}


def dispute_from_sandbox(obj: Any) -> DisputeReport:
    """Translate a sandbox dispute object (webhook data; raises UnreadableDispute)."""
    if not isinstance(obj, Mapping) or obj.get("object") != "dispute":
        raise UnreadableDispute("data is not a sandbox dispute object")
    amount, currency = obj.get("amount"), obj.get("currency")
    money: Money | None = None
    if not isinstance(amount, bool) and isinstance(amount, int) and isinstance(currency, str):
        try:
            money = Money(amount, currency)
        except DomainError:
            money = None
    return dispute_report(
        pse_dispute_id=obj.get("id"),
        status=dispute_status(obj.get("status"), _DISPUTE_STATUSES),
        amount=money,
        reason=obj.get("reason"),
        evidence_due_by=iso_time(obj.get("evidence_due_by"), "evidence_due_by"),
        opened_at=iso_time(obj.get("created_at"), "created_at"),
        pse_payment_ids=ids_in(obj, "payment_id"),
    )


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_code(response: httpx.Response) -> tuple[str | None, str]:
    body = json_or_none(response)
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return None, f"HTTP {response.status_code}"
    code = error.get("code")
    message = error.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else f"HTTP {response.status_code}",
    )


class SandboxGateway(PseGateway):
    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        self._account = account
        self._http = RetryingHttp(account, http)

    def _headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._account.api_key}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    # ------------------------------------------------------------------
    # Create
    # ------------------------------------------------------------------

    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
        body = {
            "payment_id": submission.pse_payment_id,
            "amount": submission.amount.amount,
            "currency": submission.amount.currency,
            "reference": submission.reference,
            "reason": submission.reason,
            "metadata": dict(submission.metadata),
        }
        try:
            response = await self._http.send(
                "POST",
                _REFUNDS_PATH,
                headers=self._headers(submission.idempotency_key),
                json=body,
            )
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        return self._submit_result(response)

    def _submit_result(self, response: httpx.Response) -> SubmitResult:
        status = response.status_code
        if status in (200, 201):
            try:
                return Accepted(refund_from_sandbox(json_or_none(response)))
            except UnreadableRefund as exc:
                return Unanswered(f"unreadable refund in the answer: {exc}")
        code, message = _error_code(response)
        if status == 401:
            return Declined("pse_authentication_failed", message)
        if status == 409 and code is not None and code.startswith("idempotency_"):
            # In progress or a key clash: the PSE may hold a refund under this key.
            return Unanswered(f"{code}: {message}")
        if status == 400 and code in _DECLINES:
            declined_code, offline = _DECLINES[code]
            return Declined(declined_code, message, offline=offline)
        log.warning("pse.sandbox.unrecognised_answer", status_code=status, code=code)
        return Unanswered(f"unrecognised answer: HTTP {status} {code or ''}".rstrip())

    # ------------------------------------------------------------------
    # Find
    # ------------------------------------------------------------------

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        try:
            if submission.pse_refund_id:
                response = await self._http.send(
                    "GET",
                    f"{_REFUNDS_PATH}/{quote(submission.pse_refund_id, safe='')}",
                    headers=self._headers(),
                )
                if response.status_code == 200:
                    return self._accepted_or_unanswered(json_or_none(response))
                if response.status_code != 404:
                    return Unanswered(f"refund look-up answered HTTP {response.status_code}")
                # An id the sandbox does not know (e.g. it was reset): ask by reference.
            response = await self._http.send(
                "GET",
                _REFUNDS_PATH,
                headers=self._headers(),
                params={"payment_id": submission.pse_payment_id, "reference": submission.reference},
            )
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        if response.status_code != 200:
            return Unanswered(f"refund list answered HTTP {response.status_code}")
        body = json_or_none(response)
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, list):
            return Unanswered("refund list without data")
        try:
            refunds = [refund_from_sandbox(item) for item in data]
        except UnreadableRefund as exc:
            return Unanswered(f"unreadable refund in the list: {exc}")
        # The sandbox filters by reference already; checking again costs nothing.
        mine = [r for r in refunds if r.reference == submission.reference]
        return ours_among(mine, pse_account=self._account.name, reference=submission.reference)

    @staticmethod
    def _accepted_or_unanswered(obj: Any) -> LookupResult:
        try:
            return Accepted(refund_from_sandbox(obj))
        except UnreadableRefund as exc:
            return Unanswered(f"unreadable refund: {exc}")

    # ------------------------------------------------------------------
    # Webhooks
    # ------------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        self._verify(headers, body, now)
        event = json_object(body)
        event_id, event_type = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
            raise InvalidWebhookPayload("event without id or type")
        if event_id != headers.get("webhook-id"):
            raise InvalidWebhookPayload("event id differs from webhook-id")
        if event_type.startswith(_DISPUTE_EVENT_PREFIX):
            data = event.get("data")
            return dispute_event(event_id, event_type, lambda: dispute_from_sandbox(data))
        if not event_type.startswith("refund."):
            return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=None)
        try:
            refund = refund_from_sandbox(event.get("data"))
        except UnreadableRefund as exc:
            raise InvalidWebhookPayload(f"unreadable refund: {exc}") from None
        return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=refund)

    def _verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        """Standard Webhooks: HMAC-SHA256 over "id.timestamp.body", any secret of the
        account (rotation), any `v1` signature of the header.

        The signature is computed with `standardwebhooks` (`Webhook.sign`), but the
        timestamp is checked here against `now` and the account's tolerance:
        `Webhook.verify` compares with the wall clock and a fixed five minutes,
        which would ignore both the clock port and `webhook_tolerance_seconds`.
        """
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signatures = headers.get("webhook-signature")
        if not (msg_id and timestamp and signatures):
            raise InvalidWebhookSignature("missing webhook-id, -timestamp or -signature")
        seconds = unix_seconds(timestamp, "webhook-timestamp")
        # Compared as numbers: twelve digits reach past the last datetime.
        if abs(now.timestamp() - seconds) > self._account.webhook_tolerance_seconds:
            raise InvalidWebhookSignature("webhook-timestamp outside the tolerance")
        sent_at = datetime.fromtimestamp(seconds, UTC)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidWebhookSignature("body is not UTF-8") from None

        def expected(key: bytes) -> bytes:
            signature = Webhook(key).sign(msg_id=msg_id, timestamp=sent_at, data=text)
            return base64.b64decode(signature.partition(",")[2])

        verify_webhook(
            self._account,
            _v1_signatures(signatures),
            expected,
            header="webhook-signature v1",
            key_of=_standard_webhooks_key,
        )


def _standard_webhooks_key(secret: str) -> bytes | None:
    """The HMAC key of a Standard Webhooks secret: base64 after the `whsec_` prefix,
    read as `standardwebhooks` reads it (padding optional)."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_") + "==")
    except (ValueError, binascii.Error):
        return None


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded `v1,<base64>` entries of a space-separated header; others skipped."""
    found = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (ValueError, binascii.Error):
            continue
    return found
