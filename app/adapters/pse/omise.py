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
  "data", …}`; `refund.create` carries the refund, `dispute.create`,
  `dispute.update` and `dispute.close` the dispute. Events are serialized with
  the account's default API version whatever `Omise-Version` a request sent,
  so the translation reads only fields every version has.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import httpx

from app.adapters.pse.base import DeclineRule, PseAccount, ids_in, json_or_none, unix_seconds
from app.adapters.pse.disputes import (
    UnreadableDispute,
    dispute_report,
    dispute_status,
    iso_time,
)
from app.adapters.pse.http import (
    ListPage,
    MetadataLimits,
    PseError,
    PseRequest,
    RefundListing,
    RefundResourceGateway,
    UnreadableRefund,
    WebhookProof,
    basic_auth,
    metadata_for,
    minor_units,
    quoted,
    reference_in,
    said,
)
from app.domain.disputes import DisputeReport, DisputeStatus
from app.domain.money import Money, exponent
from app.domain.pse import (
    Declined,
    InvalidWebhookPayload,
    InvalidWebhookSignature,
    PseRefund,
    PseRefundState,
    RefundSubmission,
    SubmitResult,
    Unanswered,
)

# Pinned so a change of the account's default API version cannot reshape answers;
# `options.omise_version` overrides it.
OMISE_API_VERSION = "2019-05-29"
_VERSION_OPTION = "omise_version"

_LIST_PAGE_SIZE = 100  # Omise's maximum `limit`

# Omise documents no key length limit and no deletion by an empty value.
_METADATA = MetadataLimits(max_keys=50, value_max_chars=500, keeps_empty_values=True)

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
    money = minor_units(amount, currency)
    return money if money is not None and _omise_unit_is_iso(money.currency) else None


# --------------------------------------------------------------------------
# Refund object -> PseRefund (used by create, find and webhooks alike)
# --------------------------------------------------------------------------

_STATES = {
    "pending": PseRefundState.PENDING,
    "closed": PseRefundState.SUCCEEDED,
}


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
        reference=reference_in(obj),
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


# --------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------

# `refund.create` is the documented refund event and its data is the refund
# object; any other `refund.*` event is read the same way, and must carry one.
_REFUND_EVENT_PREFIX = "refund."


# `dispute.create`, `dispute.update` and `dispute.close` (Omise's event list);
# their data is the dispute object. There is no `charge.dispute.*`.
_DISPUTE_EVENT_PREFIX = "dispute."

# The dispute object's `status`. `pending` is a dispute the merchant answered,
# under review. `closed` is documented as a meta-status for queries (won or
# lost) that a dispute does not carry; read as closed should one ever come.
_DISPUTE_STATUSES = {
    "open": DisputeStatus.OPEN,
    "pending": DisputeStatus.OPEN,
    "won": DisputeStatus.WON,
    "lost": DisputeStatus.LOST,
    "closed": DisputeStatus.CLOSED,
}


def dispute_from_omise(obj: Any) -> DisputeReport:
    """Translate an Omise dispute object (raises UnreadableDispute).

    Omise documents no evidence deadline on a dispute: `evidence_due_by` stays None.
    """
    if not isinstance(obj, Mapping) or obj.get("object") != "dispute":
        raise UnreadableDispute("data is not an Omise dispute object")
    dispute_id = obj.get("id")
    if not isinstance(dispute_id, str) or not dispute_id.startswith("dspt_"):
        raise UnreadableDispute("dispute without a dspt_ id")
    # `created_at` in current API versions, `created` in older ones.
    created = obj.get("created_at") if obj.get("created_at") is not None else obj.get("created")
    return dispute_report(
        pse_dispute_id=dispute_id,
        status=dispute_status(obj.get("status"), _DISPUTE_STATUSES),
        amount=from_omise_amount(obj.get("amount"), obj.get("currency")),
        reason=obj.get("reason_code"),
        opened_at=iso_time(created, "created_at"),
        pse_payment_ids=ids_in(obj, "charge"),
    )


def _decoded_secret(secret: str) -> bytes | None:
    """The HMAC key of a webhook secret: Omise shows it base64-encoded."""
    try:
        return base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        return None


class OmiseGateway(RefundResourceGateway):
    """One Omise account, in the domain's words.

    `account.api_key` is the secret key (`skey_…`). `account.options` may hold
    `omise_version` to pin another API version. `account.webhook_secrets` are
    the base64 webhook secrets shown in the dashboard (all accepted: rotation).
    """

    provider = "omise"
    key_pattern = _KEY_PATTERN
    dispute_event_prefix = _DISPUTE_EVENT_PREFIX
    # A charge holds fewer than 15 refunds: one page in practice.
    max_list_pages = 10

    def __init__(self, account: PseAccount, http: httpx.AsyncClient) -> None:
        super().__init__(account, http)
        self._version = account.options.get(_VERSION_OPTION) or OMISE_API_VERSION

    def _headers(self) -> dict[str, str]:
        return {"Authorization": basic_auth(self._account.api_key), "Omise-Version": self._version}

    # -- create ---------------------------------------------------------------

    def _create_request(self, submission: RefundSubmission) -> PseRequest | Declined:
        try:
            amount = to_omise_amount(submission.amount)
        except _NotRepresentable as exc:
            return Declined(code="amount_not_supported", message=str(exc))
        # Never retried: without a documented idempotency key a resent POST
        # can refund twice. The look-up decides before anything is resent.
        return PseRequest(
            "POST",
            _refunds_path(submission.pse_payment_id),
            headers={_IDEMPOTENCY_HEADER: submission.idempotency_key},
            json={"amount": amount, "metadata": metadata_for(submission, _METADATA)},
            retry=False,
        )

    def _error_of(self, response: httpx.Response) -> PseError:
        body = json_or_none(response)
        if not isinstance(body, Mapping) or body.get("object") != "error":
            return PseError(None, None)
        return PseError(said(body.get("code")), said(body.get("message")), body)

    def _refuses_credentials(self, status: int, error: PseError) -> bool:
        return status in (401, 403) or error.code == "authentication_failure"

    async def _research_decline(
        self, submission: RefundSubmission, status: int, error: PseError
    ) -> DeclineRule | SubmitResult | None:
        if status == 404 and error.code == "not_found":
            # The charge does not exist at Omise: nothing was refunded.
            return Declined(
                code="payment_not_found", message=self._safe(error.message or "not found")
            )
        return _decline_for(error.code, error.message or "")

    # -- find -----------------------------------------------------------------

    def _read_refund(self, obj: Any) -> PseRefund:
        return refund_from_omise(obj)

    def _reference_of(self, obj: Mapping[str, Any]) -> str | None:
        return reference_in(obj)

    def _no_such_refund(self, response: httpx.Response) -> bool:
        return response.status_code == 404 and self._error_of(response).code == "not_found"

    def _refund_path(self, submission: RefundSubmission, refund_id: str) -> str:
        return f"{_refunds_path(submission.pse_payment_id)}/{quoted(refund_id)}"

    def _refund_listing(self, submission: RefundSubmission) -> RefundListing | Unanswered:
        # Omise has no look-up by metadata: the charge's refunds (fewer than 15) are listed.
        params = {"limit": _LIST_PAGE_SIZE, "offset": 0, "order": "chronological"}
        return RefundListing(_refunds_path(submission.pse_payment_id), params)

    def _list_page(self, body: Any, params: Mapping[str, Any]) -> ListPage | str:
        items = body.get("data") if isinstance(body, Mapping) else None
        if (
            not isinstance(body, Mapping)
            or body.get("object") != "list"
            or not isinstance(items, list)
        ):
            return "refund list is not an Omise list object"
        offset = params["offset"] + len(items)
        total = body.get("total")
        if isinstance(total, bool) or not isinstance(total, int):
            return ListPage(items, stuck="refund list without a total")
        if offset >= total:
            return ListPage(items)
        if not items:
            return ListPage(items, stuck="refund list ended before its total")
        return ListPage(items, following={**params, "offset": offset})

    # -- webhooks -------------------------------------------------------------

    def _webhook_proof(self, headers: Mapping[str, str], body: bytes) -> WebhookProof:
        header = headers.get(_SIGNATURE_HEADER)
        timestamp = headers.get(_TIMESTAMP_HEADER)
        if not header or not timestamp:
            raise InvalidWebhookSignature("missing Omise-Signature or Omise-Signature-Timestamp")
        timestamp = timestamp.strip()
        seconds = unix_seconds(timestamp, "Omise-Signature-Timestamp")
        # Two comma-separated signatures while a secret is being rotated.
        candidates = [part.strip().lower() for part in header.split(",")]
        candidates = [c for c in candidates if _HEX.fullmatch(c)]
        if not candidates:
            raise InvalidWebhookSignature("Omise-Signature holds no hex signature")
        return WebhookProof(
            header="Omise-Signature",
            presented=[candidate.encode("ascii") for candidate in candidates],
            signed=timestamp.encode("ascii") + b"." + body,
            key_of=_decoded_secret,
            timestamp=seconds,
            timestamp_name="Omise-Signature-Timestamp",
        )

    def _event_identity(
        self, headers: Mapping[str, str], body: bytes, event: Mapping[str, Any]
    ) -> tuple[str, str]:
        if event.get("object") != "event":
            raise InvalidWebhookPayload("body is not an Omise event")
        event_id, key = event.get("id"), event.get("key")
        if not isinstance(event_id, str) or not event_id or not isinstance(key, str) or not key:
            raise InvalidWebhookPayload("Omise event lacks id or key")
        return event_id, key

    def _carries_refund(self, event_type: str) -> bool:
        return event_type.startswith(_REFUND_EVENT_PREFIX)

    def _event_refund(self, event_type: str, event: Mapping[str, Any]) -> PseRefund:
        return refund_from_omise(event.get("data"))

    def _event_dispute(self, event_type: str, event: Mapping[str, Any]) -> DisputeReport:
        return dispute_from_omise(event.get("data"))


def _refunds_path(charge_id: str) -> str:
    return f"/charges/{quoted(charge_id)}/refunds"
