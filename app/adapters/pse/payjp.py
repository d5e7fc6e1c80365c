"""PAY.JP (API v2): refunds through `/v2/payment_refunds`, events through webhooks
authenticated by a static token.

What the adapter relies on, from PAY.JP's v2 reference and its generated SDKs:

- Create: `POST /v2/payment_refunds` with a JSON body `payment_flow_id`, `amount`
  (whole yen, at least 1; leaving it out refunds the whole payment, so it is always
  sent), `reason` (`duplicate`, `fraudulent`, `requested_by_customer`) and
  `metadata` (up to 20 keys, keys up to 40 characters, string values up to 500).
  Our refund reference travels in `metadata`.
- Authentication: HTTP Basic or Bearer with the secret key; Bearer is used.
- Idempotency: `Idempotency-Key` (up to 255 of `[A-Za-z0-9_-]`, POST only).
  `idempotency_conflict` (409: the key was used with other parameters) and
  `idempotency_timeout` (409: the first request with the key has not finished)
  both mean PAY.JP may hold a refund under the key: never an answer.
- Refund object: `id` (`pyr_…`), `object` = `payment_refund`, `payment_flow_id`,
  `amount`, `status` (`pending`, `requires_action`, `succeeded`, `failed`,
  `canceled`), `reason`, `metadata`, `created_at`, `updated_at`. It carries no
  currency and no failure reason: v2 takes Japanese yen only.
- Look-up: `GET /v2/payment_refunds/{id}`, and the refunds of one payment with
  `GET /v2/payment_flows/{id}/refunds` (`limit` 1-100, cursor `starting_after`,
  answer `{"object": "list", "data", "has_more", "url"}`). The account-wide list
  `GET /v2/payment_refunds` has no filter by payment, so it is not used.
- Errors: RFC 9457 problem details (`application/problem+json`) with `status`,
  `code`, `title`, `detail`, `instance` and `type` (a documentation URL whose last
  segment is the code in kebab case); 422 `validation_error` carries `errors`.
- Webhooks: a v2 event is `{"id", "object": "event", "type", "data", …}` with the
  resource object directly in `data`. Refund events are `refund.created`,
  `refund.updated` and `refund.failed`. Delivery is authenticated by the account's
  static token in `X-Payjp-Webhook-Token` (PAY.JP's own v2 sample server checks
  exactly that header; no HMAC signature or timestamp is documented for v2), so
  the token is compared in constant time with every configured one. A static token
  authenticates the sender but does not bind the body: nothing in the request can
  prove the body was not altered by someone holding the token.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import httpx

from app.adapters.pse.base import DeclineRule, ids_in, json_or_none
from app.adapters.pse.http import (
    ListPage,
    MetadataLimits,
    PseError,
    PseRequest,
    RefundListing,
    RefundResourceGateway,
    UnreadableRefund,
    WebhookProof,
    cursor_page,
    metadata_for,
    quoted,
    reference_in,
)
from app.domain.errors import DomainError
from app.domain.money import Money
from app.domain.pse import (
    Declined,
    InvalidWebhookPayload,
    PseRefund,
    PseRefundState,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)

_REFUNDS_PATH = "/v2/payment_refunds"
_FLOW_REFUNDS_PATH = "/v2/payment_flows/{payment_flow_id}/refunds"
_LIST_PAGE_SIZE = 100  # the documented maximum of `limit`

# PAY.JP v2 charges and refunds in Japanese yen only, in whole yen (our minor unit).
_CURRENCY = "JPY"

_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{1,255}")
_PAYJP_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})

# An empty value would delete the key at PAY.JP.
_METADATA = MetadataLimits(max_keys=20, key_max_chars=40, value_max_chars=500)

# --------------------------------------------------------------------------
# Refund object -> PseRefund (used by create, find and webhooks alike)
# --------------------------------------------------------------------------

_STATES = {
    "pending": PseRefundState.PENDING,
    "requires_action": PseRefundState.PENDING,
    "succeeded": PseRefundState.SUCCEEDED,
    "failed": PseRefundState.FAILED,
    "canceled": PseRefundState.FAILED,
}
# The refund object has no failure reason: the status itself is the stable code.
_FAILURES = {
    "failed": ("refund_failed", "PAY.JP could not carry out the refund; pay out another way."),
    "canceled": ("refund_canceled", "The refund was canceled at PAY.JP."),
}


def _reference_of(obj: Mapping[str, Any]) -> str | None:
    # Webhook payloads carried `meta_data` instead of `metadata` until PAY.JP aligned
    # the keys with the API (both sent until 2026-09-30, `metadata` only afterwards).
    return reference_in(obj) or reference_in(obj, "meta_data")


def refund_from_payjp(obj: Any) -> PseRefund:
    """Translate a PAY.JP `payment_refund` object; raises UnreadableRefund."""
    if not isinstance(obj, Mapping):
        raise UnreadableRefund("refund is not a JSON object")
    kind = obj.get("object")
    if kind is not None and kind != "payment_refund":
        raise UnreadableRefund(f"object is {kind!r}, not a payment_refund")
    refund_id = obj.get("id")
    if not isinstance(refund_id, str) or not refund_id:
        raise UnreadableRefund("refund has no id")
    status = obj.get("status")
    state = _STATES.get(status) if isinstance(status, str) else None
    if state is None:
        raise UnreadableRefund(f"unknown refund status {status!r}")
    amount = obj.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise UnreadableRefund("refund amount missing or not whole yen")
    try:
        money = Money(amount, _CURRENCY)
    except DomainError as exc:
        raise UnreadableRefund(str(exc)) from None
    failure_code = failure_message = None
    if state is PseRefundState.FAILED:
        failure_code, failure_message = _FAILURES[str(status)]
    return PseRefund(
        pse_refund_id=refund_id,
        state=state,
        amount=money,
        reference=_reference_of(obj),
        failure_code=failure_code,
        failure_message=failure_message,
        pse_payment_ids=ids_in(obj, "payment_flow_id"),
    )


# --------------------------------------------------------------------------
# Problem details -> Declined
# --------------------------------------------------------------------------


_Decline = DeclineRule


_WINDOW_PASSED = _Decline("refund_window_passed", offline=True)

# Codes that prove the refund was not made. Anything else stays unanswered: the
# service then asks PAY.JP instead of guessing.
#
# The v2 reference lists the create-refund 400 answers as "Invalid Status",
# "Already Refunded" and "Refund Exceeds Payment"; v2 codes are the snake-case
# form of those titles (`invalid_status` <-> "Invalid Status" in the error
# specification). The v1 codes for the same refusals are kept as well.
#
# Refund window: card refunds are possible for 180 days after the payment
# (PayPay: 365 days). No v2 code for "past the refund period" is published; v1
# names it `refund_limit_exceeded` ("refund operation after the deadline"), which
# is taken to mean the same here. A v2 `invalid_status` whose detail speaks of the
# refund period is treated the same way; any other `invalid_status` is a payment
# that cannot be refunded in its current state.
#
# Insufficient balance: PAY.JP documents no such refusal for refunds (a balance
# that refunds push below zero becomes a `claim` billed to the merchant);
# `insufficient_balance` is mapped should it ever be sent, and is otherwise inert.
#
# Bank-account refunds: v2 takes cards, PayPay and Apple Pay, all refunded to the
# payer through PAY.JP; no v2 answer asks for a bank account, so none is mapped.
_DECLINES: Mapping[str, _Decline] = {
    "already_refunded": _Decline("already_refunded"),
    "refund_exceeds_payment": _Decline("amount_exceeds_refundable"),
    "refund_amount_gt_net": _Decline("amount_exceeds_refundable"),
    "invalid_refund_amount": _Decline("invalid_amount"),
    "refund_limit_exceeded": _WINDOW_PASSED,
    "invalid_status": _Decline("payment_not_refundable"),
    "insufficient_balance": _Decline("insufficient_balance", retriable=True),
    "validation_error": _Decline("invalid_request"),
    "invalid_idempotency_key": _Decline("invalid_idempotency_key"),
}
# A missing payment flow proves nothing was refunded either, when PAY.JP says so with
# `resource_missing` (400). A 404 `not_found` is left unanswered: PAY.JP gives the
# same answer for a path it does not serve, and its guide also shows the refund
# endpoint as `/v2/refunds`, so a 404 could mean a moved endpoint rather than a
# missing payment; declining on it could fail every refund of the account.
_NOT_FOUND_CODES = frozenset({"resource_missing"})
_WINDOW_WORDS = ("refund period", "refund window", "refund deadline", "180 days", "返金期限")

# Secret and publishable keys and webhook tokens, also in masked forms.
_SECRET_PATTERN = re.compile(r"\b(?:sk|pk)_(?:live|test)_[A-Za-z0-9*]+|\bwhook_[A-Za-z0-9*]+")


def _problem_of(response: httpx.Response) -> Mapping[str, Any]:
    """The problem details of an error answer (v2), or v1's `{"error": {...}}`."""
    body = json_or_none(response)
    if not isinstance(body, Mapping):
        return {}
    legacy = body.get("error")
    if isinstance(legacy, Mapping):
        return legacy
    return body


def _code_of(problem: Mapping[str, Any]) -> str | None:
    """`code`, or the last segment of the `type` documentation URL when `code` is absent."""
    code = problem.get("code")
    if isinstance(code, str) and code:
        return code
    kind = problem.get("type")
    if isinstance(kind, str) and kind.startswith(("https://", "http://")):
        segment = urlparse(kind).path.rstrip("/").rpartition("/")[2]
        if segment:
            return segment.replace("-", "_")
    return None


def _text_of(problem: Mapping[str, Any]) -> str | None:
    for key in ("detail", "message", "title"):
        value = problem.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _decline_for(status: int, problem: Mapping[str, Any]) -> _Decline | None:
    code = _code_of(problem)
    if code is None:
        return None
    if code in _NOT_FOUND_CODES and status == 400:
        return _Decline("payment_not_found")
    decline = _DECLINES.get(code)
    if decline is not None and code == "invalid_status":
        text = (_text_of(problem) or "").lower()
        if any(words in text for words in _WINDOW_WORDS):
            return _WINDOW_PASSED
    return decline


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------

_WEBHOOK_AUTH_HEADER = "x-payjp-webhook-token"
_REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed"})


def derived_event_id(body: bytes) -> str:
    """A stable id for an event that came without one: the same body, the same id."""
    return "payjp-sha256-" + hashlib.sha256(body).hexdigest()


class PayjpGateway(RefundResourceGateway):
    """One PAY.JP account (API v2), in the domain's words.

    Needs no `options`: the secret key is `api_key`, and `webhook_secrets` holds the
    webhook token(s) shown in the dashboard (every one is accepted).
    """

    provider = "payjp"
    key_pattern = _SECRET_PATTERN
    refund_events = _REFUND_EVENTS

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._account.api_key}",
            "Accept": "application/json, application/problem+json",
        }

    # -- create ---------------------------------------------------------------

    def _create_request(self, submission: RefundSubmission) -> PseRequest | Declined:
        amount = submission.amount
        if amount.currency != _CURRENCY:
            return Declined(
                code="amount_not_supported",
                message=f"PAY.JP refunds Japanese yen only, not {amount.currency}",
            )
        if amount.amount < 1:
            # Without `amount` PAY.JP refunds the whole payment: never send less than 1.
            return Declined(code="invalid_amount", message="PAY.JP refunds at least 1 yen")
        if not _IDEMPOTENCY_KEY.fullmatch(submission.idempotency_key):
            # Sending without a usable key could refund twice on a retry.
            return Declined(
                code="invalid_idempotency_key",
                message="the idempotency key does not fit PAY.JP's [A-Za-z0-9_-]{1,255}",
            )
        body: dict[str, Any] = {
            "payment_flow_id": submission.pse_payment_id,
            "amount": amount.amount,
            "metadata": metadata_for(submission, _METADATA),
        }
        if submission.reason in _PAYJP_REASONS:
            body["reason"] = submission.reason
        return PseRequest(
            "POST",
            _REFUNDS_PATH,
            headers={"Idempotency-Key": submission.idempotency_key},
            json=body,
        )

    def _accept_created(
        self, submission: RefundSubmission, obj: Any, refund: PseRefund
    ) -> SubmitResult:
        return self._checked(submission, obj, refund)

    def _error_of(self, response: httpx.Response) -> PseError:
        problem = _problem_of(response)
        return PseError(_code_of(problem), _text_of(problem), problem)

    async def _research_decline(
        self, submission: RefundSubmission, status: int, error: PseError
    ) -> DeclineRule | None:
        return _decline_for(status, error.detail)

    # -- find -----------------------------------------------------------------

    def _read_refund(self, obj: Any) -> PseRefund:
        return refund_from_payjp(obj)

    def _reference_of(self, obj: Mapping[str, Any]) -> str | None:
        return _reference_of(obj)

    def _mismatch(self, submission: RefundSubmission, obj: Any, refund: PseRefund) -> str | None:
        flow = obj.get("payment_flow_id") if isinstance(obj, Mapping) else None
        if isinstance(flow, str) and flow and flow != submission.pse_payment_id:
            return f"refund {refund.pse_refund_id} belongs to another payment"
        return super()._mismatch(submission, obj, refund)

    def _refund_path(self, submission: RefundSubmission, refund_id: str) -> str:
        return f"{_REFUNDS_PATH}/{quoted(refund_id)}"

    def _refund_listing(self, submission: RefundSubmission) -> RefundListing | Unanswered:
        path = _FLOW_REFUNDS_PATH.format(payment_flow_id=quoted(submission.pse_payment_id))
        return RefundListing(path, {"limit": _LIST_PAGE_SIZE})

    def _list_page(self, body: Any, params: Mapping[str, Any]) -> ListPage | str:
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
            return "refund list is not a PAY.JP list object"
        return cursor_page(body["data"], body.get("has_more"), params, "starting_after")

    # -- webhooks -------------------------------------------------------------

    def _webhook_proof(self, headers: Mapping[str, str], body: bytes) -> WebhookProof:
        # A static token, with no timestamp: `now` and the tolerance have nothing to check.
        given = self._header(headers, _WEBHOOK_AUTH_HEADER, "X-Payjp-Webhook-Token")
        return WebhookProof(
            header="X-Payjp-Webhook-Token", presented=[given.strip().encode("utf-8")]
        )

    def _event_identity(
        self, headers: Mapping[str, str], body: bytes, event: Mapping[str, Any]
    ) -> tuple[str, str]:
        kind = event.get("object")
        if kind is not None and kind != "event":
            raise InvalidWebhookPayload("body is not a PAY.JP event")
        event_type = event.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidWebhookPayload("PAY.JP event without a type")
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id:
            # v2 events carry `evnt_…` ids; without one, the same body dedupes itself.
            event_id = derived_event_id(body)
        return event_id, event_type

    def _event_refund(self, event_type: str, event: Mapping[str, Any]) -> PseRefund:
        return refund_from_payjp(event.get("data"))
