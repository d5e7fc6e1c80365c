"""problem+json (RFC 9457): one place maps every error to a response.

No stack trace, SQL or secret ever reaches a client: unexpected errors are
logged with the request id and answered with a bare `internal_error`.
"""

from __future__ import annotations

import json
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


def install(app: FastAPI) -> None:
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
