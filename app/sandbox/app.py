"""The sandbox PSE as an ASGI app: a `/v1` API shaped like a real PSE's, and
`/_control` endpoints with which tests and operators steer its faults."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.sandbox.config import Faults, SandboxConfig
from app.sandbox.records import SandboxError, error_body
from app.sandbox.state import DisputeRequest, PaymentRequest, RefundRequest, SandboxState

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": 'Invalid request: `{"error": {"code", "message"}}`'},
    401: {"description": "Missing or wrong API key (`unauthorized`)"},
}


# --------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------


class PaymentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "pay_abc",
                    "amount": 12000,
                    "currency": "JPY",
                    "captured_at": "2026-11-01T10:00:00Z",
                    "payment_method": "card",
                }
            ]
        },
    )

    id: str | None = Field(default=None, min_length=1, max_length=255)
    amount: StrictInt = Field(ge=1)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    captured_at: AwareDatetime | None = None
    payment_method: str | None = Field(default=None, max_length=255)


class RefundIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "payment_id": "pay_abc",
                    "amount": 3000,
                    "currency": "JPY",
                    "reference": "re_01J…",
                    "reason": "requested_by_customer",
                    "metadata": {"rma": "R-77"},
                }
            ]
        },
    )

    payment_id: str = Field(min_length=1, max_length=255)
    amount: StrictInt = Field(ge=1)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    reference: str = Field(min_length=1, max_length=255)
    reason: str | None = Field(default=None, max_length=255)
    metadata: dict[str, str] | None = None


class DisputeIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"payment_id": "pay_abc", "status": "open", "reason": "fraudulent"},
                {"payment_id": "pay_abc", "dispute_id": "sbdp_…", "status": "lost"},
            ]
        },
    )

    payment_id: str = Field(min_length=1, max_length=255)
    status: Literal["open", "won", "lost", "closed"]
    amount: StrictInt | None = Field(default=None, ge=1)
    reason: str | None = Field(default=None, min_length=1, max_length=255)
    dispute_id: str | None = Field(default=None, min_length=1, max_length=255)


# Validation errors on these fields get their own codes, as a PSE would give them.
_FIELD_CODES = {"amount": "invalid_amount", "currency": "invalid_currency"}


# --------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------


def _state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


State = Annotated[SandboxState, Depends(_state)]

_bearer = HTTPBearer(auto_error=False, description="The sandbox API key")


def _authorize(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), state.config.api_key.encode()):
        raise SandboxError(401, "unauthorized", "Authorization: Bearer <api key> is required")


def _idempotency_key(
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str:
    if not idempotency_key:
        raise SandboxError(400, "idempotency_key_missing", "Idempotency-Key header is required")
    if len(idempotency_key) > 255:
        raise SandboxError(400, "invalid_request", "Idempotency-Key is longer than 255 characters")
    return idempotency_key


async def _latency(state: State) -> None:
    await state.inject_latency()


# Starlette's TestClient reports this name; it never comes from a network.
_LOCAL_NAMES = frozenset({"localhost", "testclient"})


def _loopback_only(request: Request) -> None:
    """The control API switches faults and wipes state: callers on this machine only."""
    host = request.client.host if request.client else None
    if host is None or not _is_loopback(host):
        raise SandboxError(403, "forbidden", "The control API only answers loopback clients")


def _is_loopback(host: str) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------


def _api_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(_authorize)], responses=_ERRORS)

    @router.post(
        "/payments",
        status_code=201,
        summary="Register a payment",
        dependencies=[Depends(_latency)],
        responses={200: {"description": "Already registered with the same fields"}},
    )
    async def create_payment(body: PaymentIn, state: State) -> JSONResponse:
        """Register a captured payment refunds can be made against. Without `id` the
        sandbox picks one; without `captured_at` it is now. The same id again with the
        same fields answers 200; with different fields, 409 `payment_exists`."""
        payment, created = state.register_payment(
            PaymentRequest(
                id=body.id,
                amount=body.amount,
                currency=body.currency,
                captured_at=body.captured_at,
                payment_method=body.payment_method,
            )
        )
        return JSONResponse(payment.to_json(), status_code=201 if created else 200)

    @router.get(
        "/payments/{payment_id}", summary="Read a payment", dependencies=[Depends(_latency)]
    )
    async def get_payment(payment_id: str, state: State) -> JSONResponse:
        """The payment, its `refunded_amount` (every refund not failed) and its refunds."""
        return JSONResponse(state.get_payment(payment_id).to_json())

    @router.post(
        "/refunds",
        summary="Create a refund",
        responses={
            409: {"description": "`idempotency_conflict` or `idempotency_in_progress`"},
            500: {"description": "Injected fault"},
        },
    )
    async def create_refund(
        body: RefundIn,
        state: State,
        key: Annotated[str, Depends(_idempotency_key)],
    ) -> JSONResponse:
        """Create a refund, `pending` until it settles. `Idempotency-Key` is required:
        the same key and body replay the first answer. A payment id never seen before
        is registered on the spot, uncapped, in the refund's currency. Errors:
        `invalid_amount`, `invalid_currency`, `currency_mismatch`, `amount_too_large`,
        `refund_window_passed`, `idempotency_key_missing`, `idempotency_conflict`,
        `idempotency_in_progress`."""
        answer = await state.create_refund(
            key,
            RefundRequest(
                payment_id=body.payment_id,
                amount=body.amount,
                currency=body.currency,
                reference=body.reference,
                reason=body.reason,
                metadata=body.metadata or {},
            ),
        )
        return JSONResponse(answer.body, status_code=answer.status_code, headers=answer.headers)

    @router.get(
        "/refunds/{refund_id}",
        summary="Read a refund",
        dependencies=[Depends(_latency)],
        responses={404: {"description": "`not_found`"}},
    )
    async def get_refund(refund_id: str, state: State) -> JSONResponse:
        """One refund by the sandbox's id (`sbre_…`)."""
        return JSONResponse(state.get_refund(refund_id).to_json())

    @router.get("/refunds", summary="List refunds", dependencies=[Depends(_latency)])
    async def list_refunds(
        state: State,
        payment_id: Annotated[str | None, Query()] = None,
        reference: Annotated[str | None, Query()] = None,
    ) -> JSONResponse:
        """Refunds matching every filter given, newest first: `{"data": [...]}`."""
        refunds = state.list_refunds(payment_id=payment_id, reference=reference)
        return JSONResponse({"object": "list", "data": [r.to_json() for r in refunds]})

    return router


def _control_router() -> APIRouter:
    router = APIRouter(prefix="/_control", tags=["control"], dependencies=[Depends(_loopback_only)])

    @router.get("/faults", summary="Read the faults")
    async def get_faults(state: State) -> JSONResponse:
        return JSONResponse(state.faults.to_json())

    @router.put("/faults", summary="Replace the faults")
    async def put_faults(state: State, body: Annotated[Any, Body()]) -> JSONResponse:
        """Replace the whole set; fields left out are switched off. Unknown fields or
        out-of-range values answer 400 `invalid_faults`."""
        try:
            state.faults = Faults.from_json(body)
        except (TypeError, ValueError) as exc:
            raise SandboxError(400, "invalid_faults", str(exc)) from None
        return JSONResponse(state.faults.to_json())

    @router.post("/reset", summary="Forget everything and switch faults off")
    async def reset(state: State) -> JSONResponse:
        await state.reset()
        return JSONResponse({"reset": True})

    @router.get("/stats", summary="Counters for chaos tests")
    async def stats(state: State) -> JSONResponse:
        """Faults injected by kind, refunds, webhooks delivered, and per payment the
        succeeded total and the sandbox refund ids under each reference (a reference
        with two ids is a double refund)."""
        return JSONResponse(state.stats())

    @router.get("/refunds", summary="Every refund, oldest first")
    async def all_refunds(state: State) -> JSONResponse:
        return JSONResponse({"data": [r.to_json() for r in state.refunds.values()]})

    @router.post(
        "/disputes",
        status_code=201,
        summary="Raise a dispute on a payment, or move one",
        responses={
            200: {"description": "An existing dispute (`dispute_id`) moved"},
            400: {"description": "`invalid_request`, `invalid_amount`, `amount_too_large`"},
            404: {"description": "`not_found`: no such payment or dispute"},
        },
    )
    async def raise_dispute(body: DisputeIn, state: State) -> JSONResponse:
        """Record a chargeback on a registered payment and send its signed webhook:
        `dispute.opened` for a new open dispute, `dispute.updated` when one stays
        (or goes back to) `open`, `dispute.closed` for `won`, `lost` or `closed`.
        The event's `data` is the dispute. Without `amount` a new dispute is for
        the whole payment; without `dispute_id` a new one is raised. Any move is
        allowed, back to `open` too: keeping final statuses final is the
        receiver's job. Answers the dispute."""
        dispute, created = state.raise_dispute(
            DisputeRequest(
                payment_id=body.payment_id,
                status=body.status,
                amount=body.amount,
                reason=body.reason,
                dispute_id=body.dispute_id,
            )
        )
        return JSONResponse(dispute.to_json(), status_code=201 if created else 200)

    @router.get("/disputes", summary="Every dispute, oldest first")
    async def all_disputes(state: State) -> JSONResponse:
        return JSONResponse({"data": [d.to_json() for d in state.disputes.values()]})

    @router.get("/webhooks", summary="Every webhook delivery, oldest first")
    async def deliveries(state: State) -> JSONResponse:
        return JSONResponse({"data": [d.to_json() for d in state.deliveries]})

    return router


# --------------------------------------------------------------------------
# Error envelope
# --------------------------------------------------------------------------


async def _sandbox_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SandboxError)
    return JSONResponse(exc.body(), status_code=exc.status_code)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    code = "invalid_request"
    for error in errors:
        loc = error.get("loc", ())
        if len(loc) == 2 and loc[0] == "body" and loc[1] in _FIELD_CODES:
            code = _FIELD_CODES[loc[1]]
            break
    message = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors
    )
    return JSONResponse(error_body(code, message or "invalid request"), status_code=400)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


# --------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------


def create_sandbox_app(
    config: SandboxConfig,
    faults: Faults | None = None,
    *,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """A fresh sandbox with its own state at `app.state.sandbox`.

    `webhook_transport` lets tests receive webhooks in-process. When the app is
    mounted inside another one, Starlette does not run its lifespan: the host app
    must await `app.state.sandbox.aclose()` on shutdown itself.
    """
    state = SandboxState(config, faults, webhook_transport=webhook_transport)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(
        title="PSE sandbox",
        version="1",
        description=(
            "A small payment service entity for local runs and tests: payments, "
            "refunds with idempotency keys, disputes, Standard Webhooks, and "
            "switchable faults."
        ),
        lifespan=lifespan,
    )
    app.state.sandbox = state
    app.add_exception_handler(SandboxError, _sandbox_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(_api_router())
    app.include_router(_control_router())
    return app
