"""Domain errors. Each carries a stable machine-readable `code`.

The API maps them to problem+json responses; nothing here knows about HTTP.
"""

from __future__ import annotations


class DomainError(Exception):
    code: str = "domain_error"
    title: str = "The request breaks a refund rule"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)


# Also a ValueError: validators of settings and request bodies take it as a
# refused value with its message, with no wrapper of their own.
class InvalidMoney(DomainError, ValueError):
    code = "validation_error"
    title = "Invalid amount"


class UnknownCurrency(InvalidMoney):
    title = "Unknown currency"

    def __init__(self, currency: str) -> None:
        super().__init__(f"{currency!r} is not an ISO 4217 currency code")


class CurrencyMismatch(DomainError):
    code = "currency_mismatch"
    title = "Currency does not match"

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"expected {expected}, got {got}")


class NotFound(DomainError):
    code = "not_found"
    title = "Not found"


class AmountExceedsRefundable(DomainError):
    code = "amount_exceeds_refundable"
    title = "Amount exceeds the refundable amount"


class AmountExceedsLimit(DomainError):
    code = "amount_exceeds_limit"
    title = "Amount exceeds the policy's per-refund limit"


class UnknownPseAccount(DomainError):
    code = "unknown_pse_account"
    title = "Unknown PSE account"


class PaymentConflict(DomainError):
    code = "payment_conflict"
    title = "Payment already registered with different fields"


class InvalidState(DomainError):
    code = "invalid_state"
    title = "The refund is not in a state that allows this"


class PaymentDisputed(DomainError):
    code = "payment_disputed"
    title = "The payment has an open dispute"


class SelfApprovalForbidden(DomainError):
    code = "self_approval_forbidden"
    title = "The key that created a refund cannot decide on it"


class ApprovalLevelInsufficient(DomainError):
    code = "approval_level_insufficient"
    title = "Approval level too low for this refund"


class AlreadyDecided(DomainError):
    code = "already_decided"
    title = "This approver already decided on the refund"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"
    title = "Idempotency-Key already used with a different request"


class IdempotencyKeyInUse(DomainError):
    code = "idempotency_key_in_use"
    title = "A request with this Idempotency-Key is still in flight"


class InvalidSignature(DomainError):
    code = "invalid_signature"
    title = "Webhook signature missing, wrong or outside the tolerance"


class InvalidWebhookBody(DomainError):
    code = "invalid_webhook_payload"
    title = "Webhook body is not an event this PSE sends"


class InvalidInput(DomainError):
    code = "validation_error"
    title = "Invalid request"


# Also a ValueError: a request body's validator raises it as a refused value,
# and the API's handler answers it with its own code.
class CardDataForbidden(DomainError, ValueError):
    """A card number (PAN) in text a client sent: refused, never stored nor
    forwarded. The detail names the field, never the number."""

    code = "card_data_forbidden"
    title = "Card data must not be sent"
    explanation = (
        "holds what looks like a card number (13-19 digits passing the Luhn check); "
        "card numbers must not be sent: leave it out, or keep at most its last four digits"
    )

    def __init__(self, field: str = "", *, key: bool = False) -> None:
        self.field = field
        self.key = key
        super().__init__(f"{self.subject(field)} {self.explanation}")

    def subject(self, field: str) -> str:
        """What holds the number: `field`, or a key of the mapping `field`."""
        field = field or "the text"
        return f"a key of {field}" if self.key else field
