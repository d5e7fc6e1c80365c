"""Request dependencies of the console: the services its pages call, who is
signed in, and the check every form passes before its route runs.

The one module of the console that knows the container: pages depend on
services, never on how they are assembled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, FastAPI, Request

from app.bootstrap import Container
from app.console.actions import Act
from app.console.errors import CsrfRefused, SignInRequired
from app.console.security import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    UNSAFE_METHODS,
    cross_origin_reason,
    route_path,
    tokens_match,
)
from app.console.viewer import Viewer
from app.domain.ports import Clock
from app.domain.records import Role
from app.services.audit import AuditService
from app.services.console import ActiveSession, ConsoleService
from app.services.console_queries import ConsoleQueries
from app.services.events import DeliveryService, EventService
from app.services.jobs import BackgroundJobs
from app.services.operations import Operations
from app.services.payments import PaymentService
from app.services.reconciliation import ReconciliationService
from app.services.refunds import RefundService
from app.services.submission import SubmissionService

# The sign-in form is the one form posted before a session exists.
LOGIN_PATH = "/login"


def attach(app: FastAPI, container: Container) -> None:
    app.state.container = container


def clock_of(container: Container) -> Clock:
    return container.deps.clock


def unavailable_of(
    container: Container,
) -> tuple[Callable[[BaseException], bool], tuple[type[Exception], ...]]:
    """What tells the database being out of reach from a failed request, and
    the classes of errors to ask it about (the database adapter's knowledge,
    which the console never imports)."""
    return container.unavailable, container.unavailable_candidates


async def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


async def _console(container: ContainerDep) -> ConsoleService:
    return container.console


# The services of refunds, payments, events, reconciliations and the queries
# come scoped to the signed-in key's PSE accounts (ApiKey.accounts), as the
# API's do: a scoped approver or ops key sees only its accounts' refunds in
# every list, count and page, and gets the not-found page for the others.
async def _refunds(container: ContainerDep, viewer: ViewerDep) -> RefundService:
    return container.refunds.scoped(viewer.key.accounts)


async def _payments(container: ContainerDep, viewer: ViewerDep) -> PaymentService:
    return container.payments.scoped(viewer.key.accounts)


async def _submissions(container: ContainerDep) -> SubmissionService:
    return container.submissions


async def _operations(container: ContainerDep, viewer: ViewerDep) -> Operations:
    return container.operations.scoped(viewer.key.accounts)


async def _reconciliations(container: ContainerDep, viewer: ViewerDep) -> ReconciliationService:
    return container.reconciliations.scoped(viewer.key.accounts)


async def _events(container: ContainerDep, viewer: ViewerDep) -> EventService:
    return container.events.scoped(viewer.key.accounts)


async def _deliveries(container: ContainerDep, viewer: ViewerDep) -> DeliveryService:
    return container.deliveries.scoped(viewer.key.accounts)


async def _audit(container: ContainerDep) -> AuditService:
    return container.audit


async def _jobs(container: ContainerDep) -> BackgroundJobs:
    return container.jobs


async def _console_queries(container: ContainerDep, viewer: ViewerDep) -> ConsoleQueries:
    return container.console_queries.scoped(viewer.key.accounts)


async def _clock(container: ContainerDep) -> Clock:
    return container.deps.clock


ConsoleDep = Annotated[ConsoleService, Depends(_console)]
RefundsDep = Annotated[RefundService, Depends(_refunds)]
PaymentsDep = Annotated[PaymentService, Depends(_payments)]
SubmissionsDep = Annotated[SubmissionService, Depends(_submissions)]
OperationsDep = Annotated[Operations, Depends(_operations)]
ReconciliationsDep = Annotated[ReconciliationService, Depends(_reconciliations)]
EventsDep = Annotated[EventService, Depends(_events)]
DeliveriesDep = Annotated[DeliveryService, Depends(_deliveries)]
AuditDep = Annotated[AuditService, Depends(_audit)]
JobsDep = Annotated[BackgroundJobs, Depends(_jobs)]
ConsoleQueriesDep = Annotated[ConsoleQueries, Depends(_console_queries)]
ClockDep = Annotated[Clock, Depends(_clock)]


async def viewer_of(request: Request, console: ConsoleService) -> Viewer:
    """The signed-in viewer, once per request (the form check may have found it
    already). Pages shown take the messages kept for them; forms leave them."""
    known: Viewer | None = getattr(request.state, "viewer", None)
    if known is not None:
        return known
    resolved = await console.resolve(
        request.cookies.get(SESSION_COOKIE),
        take_flashes=request.method in ("GET", "HEAD"),
    )
    if not isinstance(resolved, ActiveSession):
        raise SignInRequired(resolved)
    viewer = Viewer(resolved.key, resolved.session)
    request.state.viewer = viewer
    structlog.contextvars.bind_contextvars(console_key_id=resolved.key.id)
    return viewer


async def current_viewer(request: Request, console: ConsoleDep) -> Viewer:
    return await viewer_of(request, console)


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


def require(*roles: Role) -> Callable[..., Awaitable[Viewer]]:
    """A viewer with one of `roles`; any other sees a 403 page saying which."""

    async def check(viewer: ViewerDep) -> Viewer:
        viewer.require(*roles)
        return viewer

    return check


ApproverViewer = Annotated[Viewer, Depends(require(Role.APPROVER))]
OpsViewer = Annotated[Viewer, Depends(require(Role.OPS))]
AdminViewer = Annotated[Viewer, Depends(require(Role.ADMIN))]


async def guard_forms(request: Request, console: ConsoleDep) -> None:
    """Runs before every console route (the console app's own dependency), so
    no form can forget it: a POST must come from a page of this console (its
    Origin) and carry that page's CSRF token: the session's, or for sign-in
    the one of the sign-in cookie."""
    if request.method not in UNSAFE_METHODS:
        return
    reason = cross_origin_reason(request)
    if reason is not None:
        raise CsrfRefused(reason)
    if route_path(request.scope) == LOGIN_PATH:
        form = await request.form()
        if not tokens_match(form.get(CSRF_FIELD), request.cookies.get(LOGIN_CSRF_COOKIE)):
            raise CsrfRefused("the sign-in form was not the one this browser was given")
        return
    # Who is signed in first: a body (a settlement file may be large) is read
    # only for a session.
    viewer = await viewer_of(request, console)
    form = await request.form()
    if not tokens_match(form.get(CSRF_FIELD), viewer.csrf_token):
        raise CsrfRefused("the form does not carry this session's token")


async def _act(request: Request, viewer: ViewerDep, console: ConsoleDep) -> Act:
    return Act(request, viewer, console)


ActDep = Annotated[Act, Depends(_act)]
