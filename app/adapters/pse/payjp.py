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
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlparse

import httpx
import structlog

from app.adapters.pse.base import (
    DeclineRule,
    PseAccount,
    PseNoAnswer,
    RetryingHttp,
    answer_summary,
    ids_in,
    json_object,
    json_or_none,
    ours_among,
    scrubbed,
    verify_webhook,
)
from app.domain.errors import DomainError
from app.domain.money import Money
from app.domain.ports import PseGateway
from app.domain.pse import (
    Accepted,
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    LookupResult,
    NotFound,
    PseRefund,
    PseRefundState,
    PseWebhookEvent,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)

log = structlog.get_logger("app.pse.payjp")

_REFUNDS_PATH = "/v2/payment_refunds"
_FLOW_REFUNDS_PATH = "/v2/payment_flows/{payment_flow_id}/refunds"
_LIST_PAGE_SIZE = 100  # the documented maximum of `limit`
_MAX_LIST_PAGES = 20

# PAY.JP v2 charges and refunds in Japanese yen only, in whole yen (our minor unit).
_CURRENCY = "JPY"

_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{1,255}")
_PAYJP_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})

_METADATA_MAX_KEYS = 20
_METADATA_KEY_MAX_CHARS = 40
_METADATA_VALUE_MAX_CHARS = 500
_REFERENCE_KEY = "refund_id"
_REASON_KEY = "reason"

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


class UnreadableRefund(ValueError):
    """A PAY.JP refund object this adapter cannot read."""


def _reference_of(obj: Mapping[str, Any]) -> str | None:
    # Webhook payloads carried `meta_data` instead of `metadata` until PAY.JP aligned
    # the keys with the API (both sent until 2026-09-30, `metadata` only afterwards).
    for key in ("metadata", "meta_data"):
        metadata = obj.get(key)
        if isinstance(metadata, Mapping):
            reference = metadata.get(_REFERENCE_KEY)
            if isinstance(reference, str) and reference:
                return reference
    return None


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


class PayjpGateway(PseGateway):
    """One PAY.JP account (API v2), in the domain's words.

    Needs no `options`: the secret key is `api_key`, and `webhook_secrets` holds the
    webhook token(s) shown in the dashboard (every one is accepted).
    """

    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        self._account = account
        self._http = RetryingHttp(account, http)

    # -- create ---------------------------------------------------------------

    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
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
            "metadata": self._metadata(submission),
        }
        if submission.reason in _PAYJP_REASONS:
            body["reason"] = submission.reason
        headers = {**self._headers(), "Idempotency-Key": submission.idempotency_key}
        try:
            response = await self._http.send("POST", _REFUNDS_PATH, headers=headers, json=body)
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        return self._create_answer(submission, response)

    def _create_answer(
        self, submission: RefundSubmission, response: httpx.Response
    ) -> SubmitResult:
        status = response.status_code
        if 200 <= status < 300:
            try:
                refund = refund_from_payjp(json_or_none(response))
            except UnreadableRefund as exc:
                return Unanswered(f"HTTP {status} without a readable refund: {exc}")
            mismatch = self._mismatch(submission, json_or_none(response), refund)
            if mismatch is not None:
                return Unanswered(mismatch)
            return Accepted(refund)
        problem = _problem_of(response)
        if status in (401, 403):
            return Declined(
                code="pse_authentication_failed",
                message=self._safe(_text_of(problem) or f"HTTP {status}"),
            )
        if status == 409:
            # idempotency_conflict / idempotency_timeout: a refund may exist under the key.
            return Unanswered(self._describe(response))
        if not 400 <= status < 500:
            return Unanswered(self._describe(response))
        decline = _decline_for(status, problem)
        if decline is None:
            log.warning(
                "pse.payjp.unrecognised_error",
                pse_account=self._account.name,
                status_code=status,
                error_code=_code_of(problem),
            )
            return Unanswered(self._describe(response))
        return Declined(
            code=decline.code,
            message=self._safe(_text_of(problem) or _code_of(problem) or f"HTTP {status}"),
            offline=decline.offline,
            retriable=decline.retriable,
        )

    @staticmethod
    def _mismatch(submission: RefundSubmission, obj: Any, refund: PseRefund) -> str | None:
        """Why a refund object cannot be taken as the answer for this submission."""
        flow = obj.get("payment_flow_id") if isinstance(obj, Mapping) else None
        if isinstance(flow, str) and flow and flow != submission.pse_payment_id:
            return f"refund {refund.pse_refund_id} belongs to another payment"
        if refund.reference is not None and refund.reference != submission.reference:
            return f"refund {refund.pse_refund_id} carries another reference"
        return None

    # -- find -----------------------------------------------------------------

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        if submission.pse_refund_id:
            found = await self._find_by_id(submission, submission.pse_refund_id)
            if found is not None:
                return found
        # PAY.JP has no look-up by idempotency key: existence is proven by listing
        # the payment's refunds and matching our reference in metadata.
        return await self._find_by_reference(submission)

    async def _find_by_id(
        self, submission: RefundSubmission, refund_id: str
    ) -> LookupResult | None:
        """The refund by its PAY.JP id; None when PAY.JP says there is no such refund."""
        path = f"{_REFUNDS_PATH}/{quote(refund_id, safe='')}"
        try:
            response = await self._http.send("GET", path, headers=self._headers())
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        if response.status_code == 404:
            return None
        if not 200 <= response.status_code < 300:
            return Unanswered(self._describe(response))
        obj = json_or_none(response)
        try:
            refund = refund_from_payjp(obj)
        except UnreadableRefund as exc:
            return Unanswered(f"unreadable refund {refund_id}: {exc}")
        mismatch = self._mismatch(submission, obj, refund)
        if mismatch is not None:
            return Unanswered(mismatch)
        return Accepted(refund)

    async def _find_by_reference(self, submission: RefundSubmission) -> LookupResult:
        path = _FLOW_REFUNDS_PATH.format(payment_flow_id=quote(submission.pse_payment_id, safe=""))
        params: dict[str, Any] = {"limit": _LIST_PAGE_SIZE}
        mine: list[PseRefund] = []
        for _ in range(_MAX_LIST_PAGES):
            try:
                response = await self._http.send(
                    "GET", path, headers=self._headers(), params=params
                )
            except PseNoAnswer as exc:
                return Unanswered(exc.reason)
            if not 200 <= response.status_code < 300:
                return Unanswered(self._describe(response))
            page = json_or_none(response)
            if not isinstance(page, Mapping) or not isinstance(page.get("data"), list):
                return Unanswered("refund list is not a PAY.JP list object")
            items: list[Any] = page["data"]
            for item in items:
                if isinstance(item, Mapping) and _reference_of(item) == submission.reference:
                    try:
                        mine.append(refund_from_payjp(item))
                    except UnreadableRefund as exc:
                        return Unanswered(f"unreadable refund in the list: {exc}")
            has_more = page.get("has_more")
            if has_more is False:
                return self._chosen(submission, mine) if mine else NotFound()
            last = items[-1] if items else None
            cursor = last.get("id") if isinstance(last, Mapping) else None
            if has_more is not True or not isinstance(cursor, str) or not cursor:
                if mine:
                    return self._chosen(submission, mine)
                return Unanswered("refund list cannot be followed to its end")
            params["starting_after"] = cursor
        if mine:
            return self._chosen(submission, mine)
        return Unanswered(f"more than {_MAX_LIST_PAGES} pages of refunds for the payment")

    def _chosen(self, submission: RefundSubmission, mine: list[PseRefund]) -> LookupResult:
        return ours_among(mine, pse_account=self._account.name, reference=submission.reference)

    # -- webhooks -------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        # No timestamp in this scheme: `now` and the tolerance have nothing to check.
        self._verify_token(headers.get(_WEBHOOK_AUTH_HEADER))
        event = json_object(body)
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
        if event_type not in _REFUND_EVENTS:
            return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=None)
        try:
            refund = refund_from_payjp(event.get("data"))
        except UnreadableRefund as exc:
            raise InvalidWebhookPayload(f"{event_type} without a readable refund: {exc}") from None
        return PseWebhookEvent(event_id=event_id, event_type=event_type, refund=refund)

    def _verify_token(self, given: str | None) -> None:
        if not given:
            raise InvalidWebhookSignature("missing X-Payjp-Webhook-Token header")
        # A static token: what is presented must be the configured token itself.
        verify_webhook(
            self._account,
            [given.strip().encode("utf-8")],
            lambda token: token,
            header="X-Payjp-Webhook-Token",
        )

    # -- helpers --------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._account.api_key}",
            "Accept": "application/json, application/problem+json",
        }

    @staticmethod
    def _metadata(submission: RefundSubmission) -> dict[str, str]:
        fields = {
            _REFERENCE_KEY: submission.reference,
            _REASON_KEY: submission.reason[:_METADATA_VALUE_MAX_CHARS],
        }
        for key, value in submission.metadata.items():
            if len(fields) >= _METADATA_MAX_KEYS:
                break
            # Our own keys win; over-long keys cannot be cut safely (two could merge),
            # and an empty value would delete the key at PAY.JP.
            if (
                key in (_REFERENCE_KEY, _REASON_KEY)
                or not key
                or len(key) > _METADATA_KEY_MAX_CHARS
                or not value
            ):
                continue
            fields[key] = str(value)[:_METADATA_VALUE_MAX_CHARS]
        return fields

    def _describe(self, response: httpx.Response) -> str:
        problem = _problem_of(response)
        return self._safe(
            answer_summary(response.status_code, _code_of(problem), _text_of(problem))
        )

    def _safe(self, text: Any) -> str:
        """Keep keys and webhook tokens out of anything that is stored or logged."""
        return scrubbed(
            text, (self._account.api_key, *self._account.webhook_secrets), _SECRET_PATTERN
        )
