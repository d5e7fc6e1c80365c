"""Request dependencies: the container, the caller's key and role checks,
Idempotency-Key handling and cursors."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from app.api.problems import ApiError, domain_problem, forbidden, request_id_of, unauthorized
from app.bootstrap import Container
from app.domain.errors import DomainError
from app.domain.models import Actor, Approver
from app.domain.records import ApiKey, Role
from app.domain.text import row_id
from app.services.audit import AuditService
from app.services.disputes import DisputeService
from app.services.events import DeliveryService, EventService
from app.services.idempotency import (
    IdempotencyClaim,
    IdempotencyService,
    Replay,
    request_fingerprint,
)
from app.services.jobs import BackgroundJobs
from app.services.operations import Operations
from app.services.payments import PaymentService
from app.services.reconciliation import ReconciliationService
from app.services.refunds import RefundService
from app.services.submission import SubmissionService
from app.services.webhooks import WebhookService

JSON = "application/json"
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer prk_…`")


async def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


# Routes depend on the services they call, never on the container: this
# module is the one place of the API that knows how they are assembled.
#
# It is also where a key's scope of PSE accounts (ApiKey.accounts) is put in
# force: the services of payments, refunds, disputes, events and
# reconciliations come scoped to the caller's key, so every route, and any
# route added later, sees and acts only on what its accounts hold; the rest is
# "not found", as an unknown id. An unscoped key gets the services as they are.
async def _payments(
    container: ContainerDep, key: Annotated[ApiKey, Depends(get_key)]
) -> PaymentService:
    return container.payments.scoped(key.accounts)


async def _refunds(
    container: ContainerDep, key: Annotated[ApiKey, Depends(get_key)]
) -> RefundService:
    return container.refunds.scoped(key.accounts)


async def _disputes(
    container: ContainerDep, key: Annotated[ApiKey, Depends(get_key)]
) -> DisputeService:
    return container.disputes.scoped(key.accounts)


async def _submissions(container: ContainerDep) -> SubmissionService:
    return container.submissions


async def _webhooks(container: ContainerDep) -> WebhookService:
    return container.webhooks


async def _events(
    container: ContainerDep, key: Annotated[ApiKey, Depends(get_key)]
) -> EventService:
    return container.events.scoped(key.accounts)


async def _deliveries(
    container: ContainerDep, key: Annotated[ApiKey, Depends(get_key)]
) -> DeliveryService:
    return container.deliveries.scoped(key.accounts)


async def _audit(container: ContainerDep) -> AuditService:
    return container.audit


async def _operations(container: ContainerDep) -> Operations:
    return container.operations


async def _reconciliations(
    container: ContainerDep, key: Annotated[ApiKey, Depends(get_key)]
) -> ReconciliationService:
    return container.reconciliations.scoped(key.accounts)


async def _jobs(container: ContainerDep) -> BackgroundJobs:
    return container.jobs


async def _idempotent(request: Request, container: ContainerDep) -> Idempotent:
    return Idempotent(request, container.idempotency)


PaymentsDep = Annotated[PaymentService, Depends(_payments)]
RefundsDep = Annotated[RefundService, Depends(_refunds)]
DisputesDep = Annotated[DisputeService, Depends(_disputes)]
SubmissionsDep = Annotated[SubmissionService, Depends(_submissions)]
WebhooksDep = Annotated[WebhookService, Depends(_webhooks)]
EventsDep = Annotated[EventService, Depends(_events)]
DeliveriesDep = Annotated[DeliveryService, Depends(_deliveries)]
AuditDep = Annotated[AuditService, Depends(_audit)]
OperationsDep = Annotated[Operations, Depends(_operations)]
ReconciliationsDep = Annotated[ReconciliationService, Depends(_reconciliations)]
JobsDep = Annotated[BackgroundJobs, Depends(_jobs)]
IdempotentDep = Annotated["Idempotent", Depends(_idempotent)]


async def get_key(
    request: Request,
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    # The guard (app/api/guard.py) authenticated the request before its body
    # was read; the key it found is the caller's.
    known: ApiKey | None = getattr(request.state, "api_key", None)
    if known is not None:
        return known
    if credentials is None or not credentials.credentials:
        raise unauthorized()
    key = await container.keys.authenticate(credentials.credentials)
    if key is None:
        raise unauthorized("the API key is unknown or revoked")
    request.state.api_key_id = key.id
    return key


def require(*roles: Role) -> Callable[..., Awaitable[ApiKey]]:
    names = ", ".join(r.value for r in roles)

    async def check(key: Annotated[ApiKey, Depends(get_key)]) -> ApiKey:
        if not key.has_any(*roles):
            raise forbidden(f"this needs one of the roles: {names}")
        return key

    return check


READERS = (Role.STORE, Role.APPROVER, Role.OPS)
Reader = Annotated[ApiKey, Depends(require(*READERS))]
Store = Annotated[ApiKey, Depends(require(Role.STORE))]
StoreOrOps = Annotated[ApiKey, Depends(require(Role.STORE, Role.OPS))]
ApproverKey = Annotated[ApiKey, Depends(require(Role.APPROVER))]
Ops = Annotated[ApiKey, Depends(require(Role.OPS))]
Admin = Annotated[ApiKey, Depends(require(Role.ADMIN))]


def actor_of(key: ApiKey) -> Actor:
    return Actor(key.id, key.name)


def approver_of(key: ApiKey) -> Approver:
    level = key.effective_approval_level
    if level is None:
        raise forbidden("this key has no approval level")
    return Approver(actor_of(key), level)


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Same key and body → the first response replayed (kept 30 days).",
    ),
]


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(status: int, data: Any) -> Response:
    return Response(json_bytes(data), status, media_type=JSON)


Handler = Callable[[IdempotencyClaim | None], Awaitable[tuple[int, bytes]]]


def idempotency_key_required() -> ApiError:
    return ApiError(
        400,
        "idempotency_key_required",
        "Idempotency-Key header required",
        "send an Idempotency-Key header (1-255 characters) with this request",
    )


def replayable(status: int, body: bytes, *, replayed: bool) -> Response:
    """An answer kept under an Idempotency-Key; a replay says so."""
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(body, status, media_type=_media(status), headers=headers)


class Idempotent:
    """Runs a route's handler at most once per (API key, Idempotency-Key).

    Answers that came from the handler, errors included, are kept and
    replayed; a crash frees the key for a retry.
    """

    def __init__(self, request: Request, service: IdempotencyService) -> None:
        self.request = request
        self.service = service

    async def __call__(
        self,
        key: ApiKey,
        idempotency_key: str | None,
        handler: Handler,
        *,
        required: bool = False,
    ) -> Response:
        request = self.request
        if idempotency_key is None:
            if required:
                raise idempotency_key_required()
            status, body = await _run(request, handler, None)
            return Response(body, status, media_type=_media(status))
        fingerprint = request_fingerprint(request.method, request.url.path, await request.body())
        outcome = await self.service.begin(
            key.id, idempotency_key, request.method, request.url.path, fingerprint
        )
        if isinstance(outcome, Replay):
            return replayable(outcome.status, outcome.body, replayed=True)
        claim = outcome
        try:
            status, body = await _run(request, handler, claim)
        except BaseException:
            await self.service.abandon(claim)
            raise
        if status >= 500:
            await self.service.abandon(claim)
        else:
            await self.service.complete(claim, status, body)
        return Response(body, status, media_type=_media(status))


async def _run(
    request: Request, handler: Handler, claim: IdempotencyClaim | None
) -> tuple[int, bytes]:
    try:
        return await handler(claim)
    except DomainError as error:
        return domain_problem(error, request_id_of(request))


def _media(status: int) -> str:
    return "application/problem+json" if status >= 400 else JSON


# -- pagination ---------------------------------------------------------------

Limit = Annotated[int, Query(ge=1, le=200, description="page size, 1-200")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page")
]


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith("c1:") or len(raw) > 100:
        raise ApiError(422, "validation_error", "Invalid cursor", "cursor is not one we issued")
    return raw[3:]


def decode_number_cursor(cursor: str | None) -> int | None:
    """A cursor that is the id of the last row a page gave (a run's lines,
    the audit log): ASCII digits that fit a 64-bit id, else 422."""
    if cursor is None:
        return None
    after = row_id(cursor)
    if after is None:
        raise ApiError(422, "validation_error", "Invalid cursor", "cursor is not one we issued")
    return after


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(f"c1:{last_id}".encode()).decode().rstrip("=")


def page(items: list[Any], limit: int, view: Callable[[Any], Any]) -> dict[str, Any]:
    """`items` holds up to limit+1 rows; the extra one only says a next page exists."""
    more = len(items) > limit
    items = items[:limit]
    return {
        "data": [view(item) for item in items],
        "next_cursor": encode_cursor(items[-1].id) if more and items else None,
    }
