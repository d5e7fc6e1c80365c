"""Request and response models. Requests are strict: unknown fields are
rejected, money is an integer of minor units, times carry their zone."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from app.domain.cards import refuse_card_number
from app.domain.models import RefundReason, RefundStatus
from app.domain.money import is_currency, rate_text
from app.domain.text import text_problem
from app.domain.times import RANGE, in_utc

T = TypeVar("T")


def _currency(code: str) -> str:
    if not is_currency(code):
        raise ValueError(f"{code!r} is not an ISO 4217 currency code")
    return code


def _metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > 50:
        raise ValueError("at most 50 keys")
    for key, item in value.items():
        if not 1 <= len(key) <= 40:
            raise ValueError("keys are 1 to 40 characters")
        if len(item) > 500:
            raise ValueError(f"value of {key!r} is longer than 500 characters")
    return value


Currency = Annotated[
    str,
    Field(pattern=r"^[A-Z]{3}$", examples=["JPY"], description="ISO 4217 code, upper case"),
    AfterValidator(_currency),
]
# Strict: 12.5, "12" and true are refused, never rounded or coerced.
MinorUnits = Annotated[int, Field(strict=True, ge=-(10**15), le=10**15)]
PositiveMinorUnits = Annotated[int, Field(strict=True, ge=1, le=10**15)]
Rate = Annotated[
    str,
    Field(max_length=40, examples=["0.0067"], description="decimal string"),
    AfterValidator(rate_text),
]
Metadata = Annotated[dict[str, str], AfterValidator(_metadata)]
Note = Annotated[str, Field(max_length=1000)]


def _fit(value: Any, path: tuple[str, ...] = (), skip: frozenset[str] = frozenset()) -> Any:
    """Refuse, anywhere in a body, text that cannot be stored (NUL, lone
    surrogates) and text holding a card number, in a value or a key: a 422
    before anything is written or forwarded. `path` names the field in the
    refusal (never the number); top-level fields in `skip` are not free text,
    so not searched for card numbers."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(problem)
        if not (len(path) == 1 and path[0] in skip):
            refuse_card_number(value, ".".join(path))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                problem = text_problem(key)
                if problem is not None:
                    raise ValueError(problem)
                refuse_card_number(key, ".".join(path), key=True)
            name = str(key)
            _fit(item, (*path, name if len(name) <= 40 else name[:40] + "…"), skip)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _fit(item, (*path, str(index)), skip)
    return value


def _no_card_number(value: str | None) -> str | None:
    refuse_card_number(value, "")
    return value


# A search filter (a query parameter): refused when it holds a card number,
# as a body's text is. Nothing would be stored or forwarded, but a card number
# in a URL lands in the logs of every proxy on the way, which no redaction of
# ours reaches: the client is told rather than answered with an empty page.
SearchText = Annotated[str | None, AfterValidator(_no_card_number)]


def utc_instant(value: datetime) -> datetime:
    """An aware time, normalised to UTC, within years 1970-2999 (beyond, dates
    overflow once windows and SLAs are added to them)."""
    moment = in_utc(value)
    if moment is None:
        raise ValueError(f"time must be {RANGE}")
    return moment


def _rfc3339_text(value: Any) -> Any:
    # A number would be read as Unix seconds: the contract's times are RFC 3339 text.
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 time, e.g. 2026-11-27T08:00:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(utc_instant)]


class Strict(BaseModel):
    """A request body. Every text in it, whatever its field (metadata keys and
    values included), is checked before the fields are: unstorable text is a
    `validation_error`, a card number `card_data_forbidden` (422 both)."""

    model_config = ConfigDict(extra="forbid")
    # Fields with a format of their own (times, decimal rates), refused by
    # their validators when they are anything else: not free text.
    not_free_text: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _refuse_unfit_text(cls, data: Any) -> Any:
        return _fit(data, skip=cls.not_free_text)


# -- payments ---------------------------------------------------------------


class PaymentIn(Strict):
    """A payment captured at a PSE, registered so refunds can be made against it."""

    pse_account: str = Field(min_length=1, max_length=64, examples=["komoju_jp"])
    pse_payment_id: str = Field(min_length=1, max_length=255, examples=["pay_abc"])
    order_id: str | None = Field(default=None, max_length=255, examples=["ORD-1001"])
    amount: PositiveMinorUnits = Field(examples=[12000])
    currency: Currency
    captured_at: Instant = Field(examples=["2026-11-01T10:00:00Z"])
    payment_method: str | None = Field(default=None, max_length=64, examples=["card"])
    risk_level: Literal["normal", "high"] = "normal"
    settlement_currency: Currency | None = None
    settlement_rate: Rate | None = None

    not_free_text: ClassVar[frozenset[str]] = frozenset({"captured_at", "settlement_rate"})

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "pse_account": "komoju_jp",
                    "pse_payment_id": "pay_abc",
                    "order_id": "ORD-1001",
                    "amount": 12000,
                    "currency": "JPY",
                    "captured_at": "2026-11-01T10:00:00Z",
                    "payment_method": "card",
                    "risk_level": "normal",
                    "settlement_currency": "USD",
                    "settlement_rate": "0.0067",
                }
            ]
        },
    )


class PaymentOut(BaseModel):
    """A registered payment with what is left to refund and until when."""

    id: str
    pse_account: str
    pse_payment_id: str
    order_id: str | None
    amount: int
    currency: str
    captured_at: datetime
    payment_method: str | None
    risk_level: Literal["normal", "high"]
    settlement_currency: str
    settlement_rate: str
    refunded_amount: int = Field(description="succeeded + offline paid refunds")
    reserved_amount: int = Field(description="refunds not yet final")
    disputed_amount: int = Field(
        default=0,
        description="what lost disputes (chargebacks) took back, counted like refunds; "
        "never more than what refunds left of the payment",
    )
    open_disputes: int = Field(
        default=0, description="disputes still open: while any is, no refund can be requested"
    )
    refundable_amount: int = Field(description="amount - refunded - reserved - disputed")
    refund_deadline: datetime = Field(description="captured_at + the refund window")
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "pay_0193c1d2e3f4a5b6c7d8e9f0a1b2",
                    "pse_account": "komoju_jp",
                    "pse_payment_id": "pay_abc",
                    "order_id": "ORD-1001",
                    "amount": 12000,
                    "currency": "JPY",
                    "captured_at": "2026-11-01T10:00:00Z",
                    "payment_method": "card",
                    "risk_level": "normal",
                    "settlement_currency": "USD",
                    "settlement_rate": "0.0067",
                    "refunded_amount": 3000,
                    "reserved_amount": 0,
                    "disputed_amount": 0,
                    "open_disputes": 0,
                    "refundable_amount": 9000,
                    "refund_deadline": "2027-04-30T10:00:00Z",
                    "created_at": "2026-11-01T10:00:05Z",
                    "updated_at": "2026-11-02T09:00:00Z",
                }
            ]
        }
    )


# -- refunds ----------------------------------------------------------------


class RefundIn(Strict):
    """A refund request: how much of which payment, and why."""

    payment_id: str = Field(min_length=1, max_length=40)
    amount: MinorUnits | None = Field(
        default=None, description="minor units; omitted → the whole refundable amount"
    )
    currency: Currency | None = Field(
        default=None, description="optional; when given it must be the payment's currency"
    )
    reason: RefundReason
    note: Note | None = None
    metadata: Metadata = Field(default_factory=dict)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "payment_id": "pay_0193c1d2e3f4a5b6c7d8e9f0a1b2",
                    "amount": 3000,
                    "reason": "requested_by_customer",
                    "note": "size too small",
                    "metadata": {"rma": "R-77"},
                }
            ]
        },
    )


class ApprovalOut(BaseModel):
    """One approver's decision on a refund."""

    approver: str
    level: int
    decision: Literal["approved", "rejected"]
    note: str | None
    at: datetime


class StatusChangeOut(BaseModel):
    """One entry of a refund's status history: the status entered, when, by whom."""

    status: RefundStatus
    at: datetime
    actor: str
    detail: str | None


REFUND_EXAMPLE: dict[str, Any] = {
    "id": "rf_0193c1d2e3f4a5b6c7d8e9f0a1b2",
    "payment_id": "pay_0193c1d2e3f4a5b6c7d8e9f0a1b2",
    "pse_account": "komoju_jp",
    "amount": 3000,
    "currency": "JPY",
    "status": "pending_approval",
    "reason": "requested_by_customer",
    "note": "size too small",
    "metadata": {"rma": "R-77"},
    "required_approvals": [1],
    "approvals": [],
    "pse_refund_id": None,
    "failure_code": None,
    "failure_message": None,
    "offline_reason": None,
    "offline_reference": None,
    "offline_paid_at": None,
    "settlement_amount": 20,
    "settlement_currency": "USD",
    "fx_difference": None,
    "fee_amount": None,
    "hold": None,
    "created_at": "2026-11-27T08:00:00Z",
    "updated_at": "2026-11-27T08:00:00Z",
    "status_history": [
        {
            "status": "pending_approval",
            "at": "2026-11-27T08:00:00Z",
            "actor": "shop",
            "detail": None,
        }
    ],
}


class AttentionOut(BaseModel):
    """Why a refund needs a person, and since when."""

    detail: str
    at: datetime


class RefundOut(BaseModel):
    """A refund as the service knows it, with its approvals and full history."""

    id: str
    payment_id: str
    pse_account: str
    amount: int
    currency: str
    status: RefundStatus
    reason: RefundReason
    note: str | None
    metadata: dict[str, str]
    required_approvals: list[int] = Field(
        description="the approvals the policy requires, one minimum approver level per slot, "
        "highest first: `[2, 1]` means two distinct approvers, one of them level 2 or above. "
        "Empty when no approval is needed (approved automatically). Set when the refund is "
        "created; `approvals` shows who filled the slots."
    )
    approvals: list[ApprovalOut]
    pse_refund_id: str | None
    failure_code: str | None
    failure_message: str | None
    offline_reason: str | None
    offline_reference: str | None
    offline_paid_at: datetime | None
    settlement_amount: int | None = Field(
        description="in settlement_currency, at the payment's rate"
    )
    settlement_currency: str | None
    fx_difference: int | None
    fee_amount: int | None
    attention: AttentionOut | None = Field(
        default=None,
        description="why the refund raised `refund.needs_attention`, until ops acknowledge it "
        "(`POST /v1/refunds/{id}/acknowledge`)",
    )
    hold: Literal["payment_disputed"] | None = Field(
        default=None,
        description="why the refund is held back from the PSE: `payment_disputed` while its "
        "payment has an open dispute (it waits in `pending_approval`, or `offline_required`, "
        "and cannot be approved nor paid out until the dispute is closed); null otherwise",
    )
    created_at: datetime
    updated_at: datetime
    status_history: list[StatusChangeOut]

    model_config = ConfigDict(json_schema_extra={"examples": [REFUND_EXAMPLE]})


class DecisionIn(Strict):
    """An approval, with an optional note."""

    note: Note | None = None

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"note": "ok"}]})


class RejectIn(Strict):
    """A rejection; its note is required."""

    note: Annotated[str, Field(min_length=1, max_length=1000)]

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "customer already refunded"}]}
    )


class AcknowledgeIn(Strict):
    """What ops found when they looked at a flagged refund."""

    note: Annotated[str, Field(min_length=1, max_length=1000)]

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "PSE support confirmed the card refund failed"}]},
    )


class CancelIn(Strict):
    """A cancellation, with an optional note."""

    note: Note | None = None


class OfflinePayoutIn(Strict):
    """How ops paid an `offline_required` refund outside the PSE."""

    reference: str = Field(min_length=1, max_length=255, examples=["BANK-TRX-20261127-001"])
    paid_at: Instant = Field(examples=["2026-11-27T09:00:00Z"])

    not_free_text: ClassVar[frozenset[str]] = frozenset({"paid_at"})

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reference": "BANK-TRX-20261127-001", "paid_at": "2026-11-27T09:00:00Z"}]
        },
    )


# -- disputes -----------------------------------------------------------------


class DisputeIn(Strict):
    """A dispute (chargeback) on the payment, as the PSE reported it: a new one,
    or what became of one reported before (the same `pse_dispute_id`)."""

    pse_dispute_id: str = Field(min_length=1, max_length=255, examples=["dp_1NbA2c"])
    status: Literal["open", "won", "lost", "closed"] = Field(
        default="open",
        description="open; or how it ended: won (for the merchant), lost (for the customer: "
        "the amount is taken back), closed (ended otherwise, e.g. withdrawn)",
    )
    amount: PositiveMinorUnits | None = Field(
        default=None, description="minor units; omitted → the payment's amount"
    )
    currency: Currency | None = Field(
        default=None, description="optional; when given it must be the payment's currency"
    )
    reason: str | None = Field(default=None, max_length=255, examples=["fraudulent"])
    evidence_due_by: Instant | None = Field(
        default=None,
        description="when the PSE must have the merchant's evidence",
        examples=["2026-12-10T00:00:00Z"],
    )

    not_free_text: ClassVar[frozenset[str]] = frozenset({"evidence_due_by"})

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "pse_dispute_id": "dp_1NbA2c",
                    "status": "open",
                    "amount": 12000,
                    "currency": "JPY",
                    "reason": "fraudulent",
                    "evidence_due_by": "2026-12-10T00:00:00Z",
                }
            ]
        },
    )


DISPUTE_EXAMPLE: dict[str, Any] = {
    "id": "dsp_0193c1d2e3f4a5b6c7d8e9f0a1b2",
    "payment_id": "pay_0193c1d2e3f4a5b6c7d8e9f0a1b2",
    "pse_account": "komoju_jp",
    "pse_dispute_id": "dp_1NbA2c",
    "status": "open",
    "amount": 12000,
    "currency": "JPY",
    "reason": "fraudulent",
    "counted_amount": 0,
    "source": "api",
    "opened_at": "2026-11-27T08:00:00Z",
    "evidence_due_by": "2026-12-10T00:00:00Z",
    "closed_at": None,
    "created_at": "2026-11-27T08:00:00Z",
    "updated_at": "2026-11-27T08:00:00Z",
}


class DisputeOut(BaseModel):
    """A dispute on a payment, as the service knows it."""

    id: str
    payment_id: str
    pse_account: str
    pse_dispute_id: str
    status: Literal["open", "won", "lost", "closed"]
    amount: int
    currency: str
    reason: str | None
    counted_amount: int = Field(
        description="what the dispute, lost, counts in the payment's disputed_amount"
    )
    source: Literal["api", "pse"] = Field(
        description="reported through the API, or by the PSE's webhook"
    )
    opened_at: datetime
    evidence_due_by: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    model_config = ConfigDict(json_schema_extra={"examples": [DISPUTE_EXAMPLE]})


class DisputeEventData(BaseModel):
    """What `payment.dispute_opened` and `payment.dispute_closed` carry."""

    dispute_id: str
    pse_dispute_id: str
    amount: int
    currency: str
    reason: str | None = Field(default=None, description="payment.dispute_opened")
    evidence_due_by: datetime | None = Field(default=None, description="payment.dispute_opened")
    outcome: Literal["won", "lost", "closed"] | None = Field(
        default=None, description="payment.dispute_closed: how the dispute ended"
    )
    counted_amount: int | None = Field(
        default=None,
        description="payment.dispute_closed: what it counts in the payment's disputed_amount",
    )
    reinstated: bool | None = Field(
        default=None,
        description="payment.dispute_closed: a lost dispute won after all, its amount given back",
    )
    payment: PaymentOut = Field(description="the payment as it was after the change")


# -- shared -----------------------------------------------------------------


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first; pass `next_cursor` as `cursor` for the next."""

    data: list[T]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null at the end"
    )


class ProblemError(BaseModel):
    loc: str
    msg: str


class Problem(BaseModel):
    """An error (RFC 9457 problem details) with a stable machine-readable `code`."""

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="stable, machine-readable")
    request_id: str | None
    errors: list[ProblemError] | None = None


class WebhookAck(BaseModel):
    """What the service did with a PSE's webhook."""

    received: bool = True
    event_id: str
    duplicate: bool
    status: str | None = Field(
        description="what became of the event: applied, unmatched (kept until its refund "
        "is known), ignored (not about a refund nor a dispute, or a dispute on a payment not "
        "registered here), conflict (contradicts a final status), mismatched (names our "
        "refund but is about another PSE refund, payment or amount; or a dispute that does "
        "not fit its payment), received (stored; the worker applies it); null for a duplicate"
    )


class PolicyOut(BaseModel):
    """The refund policy in force."""

    refund_window_days: int
    max_refund_amount: dict[str, int]
    daily_auto_approve_limit: dict[str, int]
    approval_tiers: list[dict[str, Any]]
    offline_payment_methods: list[str]
    rates: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="operator rates (FROM_TO → {rate, as_of}) that compare refunds with "
        "approval tiers of another currency",
    )
    rate_max_age_days: int | None = None
    on_dispute: Literal["hold", "cancel"] = Field(
        default="hold",
        description="what a dispute opening on a payment does to its refunds not yet sent: "
        "held until it closes, or canceled",
    )
    accounts: dict[str, dict[str, Any]]
    stale_after_hours: float


class EventDeliveryState(BaseModel):
    status: Literal["none", "pending", "delivered", "failed"] = Field(
        description="none: no store webhook configured when the event was written"
    )
    attempts: int
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None


class EventOut(BaseModel):
    """A refund status change, or a dispute opened or closed on a payment, as
    the store receives it, with its delivery state."""

    id: str
    type: str
    created_at: datetime
    refund_id: str | None = Field(description="null for a payment's events (payment.*)")
    payment_id: str | None
    detail: str | None
    data: RefundOut | DisputeEventData = Field(
        description="refund.*: the refund as it was after the change; payment.dispute_*: "
        "the dispute, and the payment as it was after the change"
    )
    delivery: EventDeliveryState

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "evt_0193c1d2e3f4a5b6c7d8e9f0a1b2",
                    "type": "refund.succeeded",
                    "created_at": "2026-11-27T08:00:05Z",
                    "refund_id": REFUND_EXAMPLE["id"],
                    "payment_id": REFUND_EXAMPLE["payment_id"],
                    "detail": None,
                    "data": {**REFUND_EXAMPLE, "status": "succeeded"},
                    "delivery": {
                        "status": "delivered",
                        "attempts": 1,
                        "delivered_at": "2026-11-27T08:00:06Z",
                        "next_attempt_at": None,
                        "last_error": None,
                    },
                }
            ]
        }
    )


class DeliveryOut(BaseModel):
    """One attempt to deliver an event to the store's webhook."""

    attempt: int
    at: datetime
    url: str
    status_code: int | None
    duration_ms: int
    error: str | None
    delivered: bool

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "attempt": 1,
                    "at": "2026-11-27T08:00:06Z",
                    "url": "https://store.example/hooks/refunds",
                    "status_code": 503,
                    "duration_ms": 120,
                    "error": "HTTP 503: unavailable",
                    "delivered": False,
                }
            ]
        }
    )
