"""problem+json (RFC 9457): one place maps every error to a response.

No stack trace, SQL or secret ever reaches a client: unexpected errors are
logged with the request id and answered with a bare `internal_error`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.domain import errors as e

log = structlog.get_logger("app.api")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://docs.pse-refunds.dev/errors/"

STATUS_BY_ERROR: dict[type[e.DomainError], int] = {
    e.NotFound: 404,
    e.AmountExceedsRefundable: 422,
    e.AmountExceedsLimit: 422,
    e.UnknownPseAccount: 422,
    e.PaymentConflict: 409,
    e.InvalidState: 409,
    e.PaymentDisputed: 409,
    e.SelfApprovalForbidden: 403,
    e.ApprovalLevelInsufficient: 403,
    e.AlreadyDecided: 409,
    e.IdempotencyKeyReused: 422,
    e.IdempotencyKeyInUse: 409,
    e.InvalidSignature: 400,
    e.InvalidWebhookBody: 400,
    e.CurrencyMismatch: 422,
    e.InvalidMoney: 422,
    e.InvalidInput: 422,
    e.CardDataForbidden: 422,
}


class ApiError(Exception):
    """Errors of the HTTP surface itself (auth, headers, sizes)."""

    def __init__(self, status: int, code: str, title: str, detail: str | None = None) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail or title


def unauthorized(detail: str = "a valid API key is required") -> ApiError:
    return ApiError(401, "unauthorized", "Missing or unknown API key", detail)


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", "The API key lacks the role for this", detail)


def status_for(error: e.DomainError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return 422


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str,
    request_id: str | None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def problem_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    request_id: str | None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = problem_body(status, code, title, detail, request_id, errors)
    return Response(problem_bytes(body), status, headers=headers, media_type=PROBLEM_JSON)


def domain_problem(error: e.DomainError, request_id: str | None) -> tuple[int, bytes]:
    status = status_for(error)
    return status, problem_bytes(
        problem_body(status, error.code, error.title, error.detail, request_id)
    )


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _card_data(
    exc: RequestValidationError,
) -> tuple[list[dict[str, Any]], str, str] | None:
    """`card_data_forbidden` when a validator found a card number: the
    refusal names where (the field, or a key of it), never the number."""
    found = []
    for err in exc.errors():
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, e.CardDataForbidden):
            parts = [str(part) for part in err.get("loc", ())]
            if error.field:
                parts.append(error.field)
            found.append((error, ".".join(parts)))
    if not found:
        return None
    errors = [
        {"loc": loc, "msg": f"{'a key ' if error.key else ''}{error.explanation}"}
        for error, loc in found
    ]
    first, loc = found[0]
    return errors, f"{first.subject(loc)} {first.explanation}", first.title


# -- the database out of reach: 503 `unavailable` -----------------------------

# What a client is told to wait before trying again: a restart or a failover
# of PostgreSQL takes seconds, and the pool reconnects by itself.
RETRY_AFTER_SECONDS = 2
UNAVAILABLE = (
    503,
    "unavailable",
    "Service unavailable",
    "the database cannot be reached just now; retry in a moment (with the same Idempotency-Key)",
)
UNAVAILABLE_HEADERS = {"Retry-After": str(RETRY_AFTER_SECONDS)}
# Which errors say so is the database adapter's knowledge
# (app/adapters/db/faults.py), handed to `install` and to the middleware by the
# composition root (Container.unavailable).


def unavailable_response(request_id: str | None) -> Response:
    return problem_response(*UNAVAILABLE, request_id, headers=dict(UNAVAILABLE_HEADERS))


def log_unavailable(exc: BaseException) -> None:
    """One line, no traceback: the database being away is not a bug."""
    log.warning("database.unavailable", error_type=type(exc).__name__, error=str(exc)[:200] or None)


def install(
    app: FastAPI,
    unavailable: Callable[[BaseException], bool],
    candidates: tuple[type[Exception], ...],
) -> None:
    """Every error's answer on `app`. `unavailable` tells the database being
    out of reach from a failed request, asked of the `candidates` classes
    (both handed by the composition root: the API never imports the database
    adapter that knows them)."""

    async def _unavailable(request: Request, exc: Exception) -> Response:
        if not unavailable(exc):
            raise exc  # not the database's: the middleware's last resort answers 500
        log_unavailable(exc)
        return unavailable_response(request_id_of(request))

    for candidate in candidates:
        app.add_exception_handler(candidate, _unavailable)

    @app.exception_handler(e.DomainError)
    async def _domain(request: Request, exc: e.DomainError) -> Response:
        status, body = domain_problem(exc, request_id_of(request))
        return Response(body, status, media_type=PROBLEM_JSON)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return problem_response(
            exc.status, exc.code, exc.title, exc.detail, request_id_of(request), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        card = _card_data(exc)
        if card is not None:
            card_errors, detail, title = card
            return problem_response(
                422,
                e.CardDataForbidden.code,
                title,
                detail,
                request_id_of(request),
                errors=card_errors,
            )
        errors = [
            {"loc": _loc(tuple(err.get("loc", ()))), "msg": str(err.get("msg", "invalid"))}
            for err in exc.errors()
        ]
        return problem_response(
            422,
            "validation_error",
            "The request is not valid",
            "; ".join(f"{err['loc']}: {err['msg']}" for err in errors[:5]),
            request_id_of(request),
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {
            404: ("not_found", "Not found"),
            405: ("method_not_allowed", "Method not allowed"),
            408: ("request_timeout", "Request body too slow"),
            413: ("payload_too_large", "Request body too large"),
        }
        if exc.status_code == 400:
            # The framework's own 400s: a body that is not UTF-8 JSON, or broken
            # multipart. To a client these are invalid requests like any other.
            detail = exc.detail if isinstance(exc.detail, str) else "the body cannot be read"
            return problem_response(
                422, "validation_error", "The request is not valid", detail, request_id_of(request)
            )
        code, title = codes.get(exc.status_code, ("http_error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem_response(
            exc.status_code, code, title, detail, request_id_of(request), headers=exc.headers
        )
