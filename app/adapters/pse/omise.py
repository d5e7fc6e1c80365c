"""Omise (Opn Payments, Thailand/Japan): refunds under a charge, signed webhooks.

Refunds are created with `POST /charges/{charge_id}/refunds` (JSON `amount` in
the charge currency's smallest unit, `metadata`), read back with
`GET /charges/{charge_id}/refunds/{refund_id}` and listed with
`GET /charges/{charge_id}/refunds` (offset pagination: `{object: list, data,
total, limit, offset}`). Authentication is HTTP Basic with the secret key as
the user name and an empty password. Errors come as
`{"object": "error", "location", "code", "message"}`.

What the research behind this adapter found (Omise's API reference, its
official SDKs and integrations built on them):

* Idempotency: the API reference documents no idempotency header. Some
  integrations send `Omise-Idempotency-Key`; it is sent here too, but nothing
  relies on it. Because a resent POST could refund twice, a create is never
  retried after a timeout, connection error, 5xx or 429: the outcome stays
  unanswered and the service resolves it with `find_refund` (list the charge's
  refunds, match our reference in `metadata`) before anything is resent.
* Refund `status`: marked deprecated in the API reference; the official SDKs
  know `pending` and `closed` (the Java and .NET SDKs only `closed`). Older API
  versions leave it out, and Omise documents that refunds are processed at
  once; `voided` says the charge was voided instead (before settlement), which
  also gives the money back. No failure status is documented, so a status the
  adapter does not know makes the refund unreadable (unanswered), never failed.
* Errors: refunds fail with `failed_refund` (documented as "refund failed"),
  `invalid_charge`, `bad_request` or `invalid_amount`; the reason is only in
  the free-text `message`, which Omise does not document word for word. The
  adapter reads the reasons it can recognise from the message; a
  `failed_refund` it cannot explain is still a definitive "not refunded"
  (`not_refundable`), other codes it cannot explain stay unanswered.
* Limits: fewer than 15 refunds per charge, within 365 days of capture (160
  days for JCB, American Express and Diners). Guides (not the API reference)
  add that PromptPay, internet and mobile banking, konbini and Pay-easy
  payments cannot be refunded through Omise at all.
* Webhooks: Omise's webhook guide recommends verifying signatures; several
  independent integrations that follow it agree on the scheme implemented
  here: `Omise-Signature` carries the hex HMAC-SHA256 of
  `"{Omise-Signature-Timestamp}.{raw body}"` keyed with the base64-DECODED
  webhook secret; during a secret rotation it carries two comma-separated
  signatures. Events are `{"object": "event", "id": "evnt_…", "key",
  "data", …}`; `refund.create` carries the refund. Events are serialized with
  the account's default API version whatever `Omise-Version` a request sent,
  so the translation reads only fields every version has.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from app.adapters.pse.base import (
    DeclineRule,
    PseAccount,
    PseNoAnswer,
    RetryingHttp,
    answer_summary,
    ids_in,
    json_or_none,
    ours_among,
    scrubbed,
    verify_webhook,
)
from app.domain.errors import DomainError
from app.domain.money import Money, exponent, is_currency
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

log = structlog.get_logger("app.pse.omise")

# Pinned so a change of the account's default API version cannot reshape answers;
# `options.omise_version` overrides it.
OMISE_API_VERSION = "2019-05-29"
_VERSION_OPTION = "omise_version"

_LIST_PAGE_SIZE = 100  # Omise's maximum `limit`
_MAX_LIST_PAGES = 10  # a charge holds fewer than 15 refunds: one page in practice

_REFERENCE_KEY = "refund_id"
_REASON_KEY = "reason"
_METADATA_MAX_KEYS = 50
_METADATA_VALUE_MAX_CHARS = 500

_IDEMPOTENCY_HEADER = "Omise-Idempotency-Key"
_SIGNATURE_HEADER = "omise-signature"
_TIMESTAMP_HEADER = "omise-signature-timestamp"

# Secret and public key formats, also in the form echoed inside messages.
_KEY_PATTERN = re.compile(r"\b[sp]key_(?:test_)?[A-Za-z0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]{64}")

# --------------------------------------------------------------------------
# Amounts: the smallest unit of the charge currency. Omise documents JPY as the
# only zero-decimal currency it supports; every other currency it supports has
# two decimals, exactly as in ISO 4217. Anything else is refused, not guessed.
# --------------------------------------------------------------------------

_ZERO_DECIMAL = frozenset({"JPY"})


class _NotRepresentable(Exception):
    """The amount cannot be expressed in Omise's unit for its currency."""


def _omise_unit_is_iso(currency: str) -> bool:
    return currency in _ZERO_DECIMAL or exponent(currency) == 2


def to_omise_amount(money: Money) -> int:
    """Our ISO 4217 minor units to Omise's `amount` (satang, sen, cents; whole yen)."""
    if not _omise_unit_is_iso(money.currency):
        raise _NotRepresentable(f"Omise does not document the unit of {money.currency}")
    if money.amount <= 0:
        raise _NotRepresentable("Omise refunds a positive amount only")
    return money.amount


def from_omise_amount(amount: Any, currency: Any) -> Money | None:
    """Omise's `amount`/`currency` pair (currency upper- or lower-case) as Money."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not isinstance(currency, str):
        return None
    code = currency.upper()
    if not is_currency(code) or not _omise_unit_is_iso(code):
        return None
    try:
        return Money(amount, code)
    except DomainError:
        return None


# --------------------------------------------------------------------------
# Refund object -> PseRefund (used by create, find and webhooks alike)
# --------------------------------------------------------------------------

_STATES = {
    "pending": PseRefundState.PENDING,
    "closed": PseRefundState.SUCCEEDED,
}


class UnreadableRefund(ValueError):
    """An Omise answer this adapter cannot read as a refund."""


def _reference_of(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        reference = metadata.get(_REFERENCE_KEY)
        if isinstance(reference, str) and reference:
            return reference
    return None


def refund_from_omise(obj: Any) -> PseRefund:
    """Translate an Omise refund object; raises UnreadableRefund."""
    if not isinstance(obj, Mapping) or obj.get("object") != "refund":
        raise UnreadableRefund("not an Omise refund object")
    refund_id = obj.get("id")
    if not isinstance(refund_id, str) or not refund_id.startswith("rfnd_"):
        raise UnreadableRefund("refund without an rfnd_ id")
    status = obj.get("status")
    voided = obj.get("voided")
    if status is None:
        # Versions without `status`: a voided refund is complete; otherwise the
        # refund exists but nothing says it settled, so it stays pending.
        state = PseRefundState.SUCCEEDED if voided is True else PseRefundState.PENDING
    elif isinstance(status, str) and status in _STATES:
        state = _STATES[status]
    else:
        raise UnreadableRefund(f"unknown refund status {status!r}")
    amount = from_omise_amount(obj.get("amount"), obj.get("currency"))
    if amount is None:
        raise UnreadableRefund("refund amount or currency missing or unreadable")
    settlement = from_omise_amount(obj.get("funding_amount"), obj.get("funding_currency"))
    return PseRefund(
        pse_refund_id=refund_id,
        state=state,
        amount=amount,
        reference=_reference_of(obj),
        settlement_amount=settlement,
        pse_payment_ids=ids_in(obj, "charge"),
    )


# --------------------------------------------------------------------------
# Error envelope -> Declined
# --------------------------------------------------------------------------


_Decline = DeclineRule


# Codes under which Omise refuses a refund; the reason is in the message.
_REFUND_ERROR_CODES = frozenset(
    {"failed_refund", "invalid_charge", "bad_request", "invalid_amount"}
)

# (words that must all appear in the lower-cased message, decline), first match
# wins. Ordered from the most specific reason to the most general.
_MESSAGE_RULES: tuple[tuple[tuple[str, ...], _Decline], ...] = (
    (("insufficient", "balance"), _Decline("insufficient_balance", retriable=True)),
    (("insufficient", "fund"), _Decline("insufficient_balance", retriable=True)),
    (("fully refunded",), _Decline("already_refunded")),
    (("already", "refunded"), _Decline("already_refunded")),
    (("disput",), _Decline("payment_disputed")),
    (("chargeback",), _Decline("payment_disputed")),
    # The money can only go back outside Omise: past the window, out of refunds,
    # or a method Omise cannot refund to (bank-account refunds and the like).
    (("365 days",), _Decline("refund_window_passed", offline=True)),
    (("160 days",), _Decline("refund_window_passed", offline=True)),
    (("too old",), _Decline("refund_window_passed", offline=True)),
    (("older than",), _Decline("refund_window_passed", offline=True)),
    (("refund period",), _Decline("refund_window_passed", offline=True)),
    (("refund window",), _Decline("refund_window_passed", offline=True)),
    (("no longer", "refund"), _Decline("refund_window_passed", offline=True)),
    (("maximum number of refunds",), _Decline("refund_limit_reached", offline=True)),
    (("too many refunds",), _Decline("refund_limit_reached", offline=True)),
    (("15 refunds",), _Decline("refund_limit_reached", offline=True)),
    (("15 partial",), _Decline("refund_limit_reached", offline=True)),
    (("bank account",), _Decline("bank_account_refund_required", offline=True)),
    (("bank transfer",), _Decline("bank_account_refund_required", offline=True)),
    (("not support", "refund"), _Decline("refund_not_supported", offline=True)),
    (("unsupported", "refund"), _Decline("refund_not_supported", offline=True)),
    (("not refundable", "method"), _Decline("refund_not_supported", offline=True)),
    (("amount", "greater than"), _Decline("amount_exceeds_refundable")),
    (("amount", "exceed"), _Decline("amount_exceeds_refundable")),
    (("amount", "more than"), _Decline("amount_exceeds_refundable")),
    (("amount", "larger than"), _Decline("amount_exceeds_refundable")),
    (("amount", "less than or equal"), _Decline("amount_exceeds_refundable")),
)


def _decline_for(code: str | None, message: str) -> _Decline | None:
    if code not in _REFUND_ERROR_CODES:
        return None
    text = message.lower()
    for words, decline in _MESSAGE_RULES:
        if all(word in text for word in words):
            return decline
    if code == "failed_refund":
        # Documented as "refund failed": definitive, whatever the reason.
        return _Decline("not_refundable")
    return None


@dataclass(frozen=True, slots=True)
class _OmiseError:
    code: str | None
    message: str | None


def _error_of(response: httpx.Response) -> _OmiseError:
    body = json_or_none(response)
    if not isinstance(body, Mapping) or body.get("object") != "error":
        return _OmiseError(None, None)
    code, message = body.get("code"), body.get("message")
    return _OmiseError(
        code if isinstance(code, str) and code else None,
        message if isinstance(message, str) and message else None,
    )


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------

# `refund.create` is the documented refund event and its data is the refund
# object; any other `refund.*` event is read the same way, and must carry one.
_REFUND_EVENT_PREFIX = "refund."


def _decoded_secret(secret: str) -> bytes | None:
    """The HMAC key of a webhook secret: Omise shows it base64-encoded."""
    try:
        return base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        return None


class OmiseGateway(PseGateway):
    """One Omise account, in the domain's words.

    `account.api_key` is the secret key (`skey_…`). `account.options` may hold
    `omise_version` to pin another API version. `account.webhook_secrets` are
    the base64 webhook secrets shown in the dashboard (all accepted: rotation).
    """

    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        self._account = account
        self._http = RetryingHttp(account, http)
        self._version = account.options.get(_VERSION_OPTION) or OMISE_API_VERSION

    # -- create ---------------------------------------------------------------

    async def create_refund(self, submission: RefundSubmission) -> SubmitResult:
        try:
            amount = to_omise_amount(submission.amount)
        except _NotRepresentable as exc:
            return Declined(code="amount_not_supported", message=str(exc))
        body = {"amount": amount, "metadata": self._metadata(submission)}
        headers = {**self._headers(), _IDEMPOTENCY_HEADER: submission.idempotency_key}
        try:
            # Never retried: without a documented idempotency key a resent POST
            # can refund twice. The look-up decides before anything is resent.
            response = await self._http.send(
                "POST",
                self._refunds_path(submission.pse_payment_id),
                headers=headers,
                json=body,
                retry=False,
            )
        except PseNoAnswer as exc:
            return Unanswered(f"{exc.reason}; not retried, the look-up decides")
        return self._create_answer(response)

    def _create_answer(self, response: httpx.Response) -> SubmitResult:
        status = response.status_code
        if 200 <= status < 300:
            try:
                return Accepted(refund_from_omise(json_or_none(response)))
            except UnreadableRefund as exc:
                return Unanswered(f"HTTP {status} without a readable refund: {exc}")
        error = _error_of(response)
        if status in (401, 403) or error.code == "authentication_failure":
            return Declined(
                code="pse_authentication_failed",
                message=self._safe(error.message or f"HTTP {status}"),
            )
        if status == 404 and error.code == "not_found":
            # The charge does not exist at Omise: nothing was refunded.
            return Declined(
                code="payment_not_found", message=self._safe(error.message or "not found")
            )
        if status == 409:
            # An idempotency key still in flight, where Omise honours one.
            return Unanswered(self._describe(response))
        if not 400 <= status < 500:
            return Unanswered(self._describe(response))
        decline = _decline_for(error.code, error.message or "")
        if decline is None:
            log.warning(
                "pse.omise.unrecognised_error",
                pse_account=self._account.name,
                status_code=status,
                error_code=error.code,
            )
            return Unanswered(self._describe(response))
        return Declined(
            code=decline.code,
            message=self._safe(error.message or str(error.code)),
            offline=decline.offline,
            retriable=decline.retriable,
        )

    # -- find -----------------------------------------------------------------

    async def find_refund(self, submission: RefundSubmission) -> LookupResult:
        if submission.pse_refund_id:
            found = await self._find_by_id(submission, submission.pse_refund_id)
            if found is not None:
                return found
        # Omise has no look-up by idempotency key or metadata: list the charge's
        # refunds (fewer than 15) and match our reference.
        return await self._find_by_reference(submission)

    async def _find_by_id(
        self, submission: RefundSubmission, refund_id: str
    ) -> LookupResult | None:
        """The refund by its Omise id; None when Omise says there is no such refund."""
        path = f"{self._refunds_path(submission.pse_payment_id)}/{quote(refund_id, safe='')}"
        try:
            response = await self._http.send("GET", path, headers=self._headers())
        except PseNoAnswer as exc:
            return Unanswered(exc.reason)
        if response.status_code == 404 and _error_of(response).code == "not_found":
            return None
        if not 200 <= response.status_code < 300:
            return Unanswered(self._describe(response))
        try:
            refund = refund_from_omise(json_or_none(response))
        except UnreadableRefund as exc:
            return Unanswered(f"unreadable refund {refund_id}: {exc}")
        if refund.reference is not None and refund.reference != submission.reference:
            return Unanswered(f"refund {refund_id} carries another reference")
        return Accepted(refund)

    async def _find_by_reference(self, submission: RefundSubmission) -> LookupResult:
        path = self._refunds_path(submission.pse_payment_id)
        mine: list[PseRefund] = []
        offset = 0
        for _ in range(_MAX_LIST_PAGES):
            params = {"limit": _LIST_PAGE_SIZE, "offset": offset, "order": "chronological"}
            try:
                response = await self._http.send(
                    "GET", path, headers=self._headers(), params=params
                )
            except PseNoAnswer as exc:
                return Unanswered(exc.reason)
            if not 200 <= response.status_code < 300:
                # A 404 here may be a charge of another account or mode: prove nothing.
                return Unanswered(self._describe(response))
            page = json_or_none(response)
            items = page.get("data") if isinstance(page, Mapping) else None
            if (
                not isinstance(page, Mapping)
                or page.get("object") != "list"
                or not isinstance(items, list)
            ):
                return Unanswered("refund list is not an Omise list object")
            for item in items:
                if isinstance(item, Mapping) and _reference_of(item) == submission.reference:
                    try:
                        mine.append(refund_from_omise(item))
                    except UnreadableRefund as exc:
                        return Unanswered(f"matching refund is unreadable: {exc}")
            offset += len(items)
            total = page.get("total")
            if isinstance(total, bool) or not isinstance(total, int):
                return Unanswered("refund list without a total")
            if offset >= total:
                return self._pick(submission, mine)
            if not items:
                return Unanswered("refund list ended before its total")
        return Unanswered(f"more than {_MAX_LIST_PAGES} pages of refunds for the charge")

    def _pick(self, submission: RefundSubmission, mine: list[PseRefund]) -> LookupResult:
        return ours_among(mine, pse_account=self._account.name, reference=submission.reference)

    # -- webhooks -------------------------------------------------------------

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> PseWebhookEvent:
        self._verify_signature(headers, body, now)
        try:
            event = json.loads(body)
        except ValueError:
            raise InvalidWebhookPayload("body is not JSON") from None
        if not isinstance(event, Mapping) or event.get("object") != "event":
            raise InvalidWebhookPayload("body is not an Omise event")
        event_id, key = event.get("id"), event.get("key")
        if not isinstance(event_id, str) or not event_id or not isinstance(key, str) or not key:
            raise InvalidWebhookPayload("Omise event lacks id or key")
        if not key.startswith(_REFUND_EVENT_PREFIX):
            return PseWebhookEvent(event_id=event_id, event_type=key, refund=None)
        try:
            refund = refund_from_omise(event.get("data"))
        except UnreadableRefund as exc:
            raise InvalidWebhookPayload(f"{key} does not carry a readable refund: {exc}") from None
        return PseWebhookEvent(event_id=event_id, event_type=key, refund=refund)

    def _verify_signature(self, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        header = headers.get(_SIGNATURE_HEADER)
        timestamp = headers.get(_TIMESTAMP_HEADER)
        if not header or not timestamp:
            raise InvalidWebhookSignature("missing Omise-Signature or Omise-Signature-Timestamp")
        timestamp = timestamp.strip()
        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            raise InvalidWebhookSignature("Omise-Signature-Timestamp is not a Unix time")
        # Two comma-separated signatures while a secret is being rotated.
        candidates = [part.strip().lower() for part in header.split(",")]
        candidates = [c for c in candidates if _HEX.fullmatch(c)]
        if not candidates:
            raise InvalidWebhookSignature("Omise-Signature holds no hex signature")
        signed = timestamp.encode("ascii") + b"." + body
        verify_webhook(
            self._account,
            [candidate.encode("ascii") for candidate in candidates],
            lambda key: hmac.new(key, signed, hashlib.sha256).hexdigest().encode("ascii"),
            header="Omise-Signature",
            key_of=_decoded_secret,
        )
        if abs(now.timestamp() - int(timestamp)) > self._account.webhook_tolerance_seconds:
            raise InvalidWebhookSignature("Omise-Signature-Timestamp outside the tolerance")

    # -- helpers --------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{self._account.api_key}:".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}", "Omise-Version": self._version}

    @staticmethod
    def _refunds_path(charge_id: str) -> str:
        return f"/charges/{quote(charge_id, safe='')}/refunds"

    @staticmethod
    def _metadata(submission: RefundSubmission) -> dict[str, str]:
        metadata = {
            _REFERENCE_KEY: submission.reference,
            _REASON_KEY: submission.reason[:_METADATA_VALUE_MAX_CHARS],
        }
        for key, value in submission.metadata.items():
            if len(metadata) >= _METADATA_MAX_KEYS:
                break
            # Our own keys win: the look-up matches on the reference.
            if key in (_REFERENCE_KEY, _REASON_KEY) or not key:
                continue
            metadata[key] = str(value)[:_METADATA_VALUE_MAX_CHARS]
        return metadata

    def _describe(self, response: httpx.Response) -> str:
        error = _error_of(response)
        return self._safe(answer_summary(response.status_code, error.code, error.message))

    def _safe(self, text: Any) -> str:
        """Never pass a key on, whole or as echoed in a message."""
        return scrubbed(text, (self._account.api_key,), _KEY_PATTERN)
