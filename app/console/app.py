"""The console app, mounted by the service at /console.

An app of its own so that its errors are pages, never the API's
problem+json; it runs inside the service's request middleware (request ids,
access log) like every route.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from app.console import deps
from app.console.deps import LOGIN_PATH, Container
from app.console.errors import ConsoleForbidden, CsrfRefused, SignInRequired
from app.console.formatting import error_message, sentence
from app.console.pages import (
    approvals,
    attention,
    auth,
    home,
    reconciliations,
    refund_detail,
    refunds,
)
from app.console.rendering import Pages, render
from app.console.security import SESSION_COOKIE, ConsoleEdge, base_path, clear_cookie, route_path
from app.domain import errors as e
from app.domain.console import Flash

log = structlog.get_logger("app.console")

STATIC = Path(__file__).parent / "static"

# How a refused rule answers when it is the page itself that cannot be shown.
_STATUS_BY_ERROR: dict[type[e.DomainError], int] = {
    e.NotFound: 404,
    e.SelfApprovalForbidden: 403,
    e.ApprovalLevelInsufficient: 403,
    e.InvalidState: 409,
    e.AlreadyDecided: 409,
}

# How long a person is asked to wait while the database is out of reach: as the
# API's 503 `unavailable` (a restart or a failover of PostgreSQL takes seconds,
# and the pool reconnects by itself).
RETRY_AFTER_SECONDS = 2


def create_console(container: Container) -> FastAPI:
    """The console's routes, pages and error pages, on `container`'s services."""
    console = FastAPI(
        title="PSE Refund Service console",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(deps.guard_forms)],
    )
    deps.attach(console, container)
    console.state.pages = Pages(now=deps.clock_of(container).now)
    console.include_router(auth.router)
    console.include_router(home.router)
    console.include_router(refunds.router)
    console.include_router(attention.router)
    console.include_router(reconciliations.router)
    console.include_router(approvals.router)
    console.include_router(refund_detail.router)
    console.mount("/static", StaticFiles(directory=STATIC), name="static")
    _install_error_pages(console, *deps.unavailable_of(container))
    return console


class ConsoleMount(Mount):
    """A mount that answers its own path as well: `/console` is the home page,
    served as the console's `/` (a plain mount only sees `/console/…`). The
    path asked for is put back once answered, for the access log and audit."""

    _ASKED = "console.asked_path"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and route_path(scope) == self.path:
            asked = (scope["path"], scope.get("raw_path"))
            scope = {
                **scope,
                "path": scope["path"] + "/",
                "raw_path": (scope.get("raw_path") or scope["path"].encode()) + b"/",
            }
            match, child = super().matches(scope)
            if match is Match.FULL:
                child = {
                    **child,
                    "path": scope["path"],
                    "raw_path": scope["raw_path"],
                    self._ASKED: asked,
                }
            return match, child
        return super().matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = scope.pop(self._ASKED, None)
        try:
            await super().handle(scope, receive, send)
        finally:
            if asked is not None:
                scope["path"], scope["raw_path"] = asked


def console_mount(container: Container, path: str = "/console") -> Mount:
    return ConsoleMount(path, app=ConsoleEdge(create_console(container)), name="console")


def _page_error(request: Request, status: int, title: str, message: Flash) -> Response:
    return render(request, "error.html", status=status, title=title, messages=[message])


def _unavailable_page(request: Request) -> Response:
    text = (
        "The service cannot reach its database just now. Retry in a few seconds; if you "
        "sent a form, look at the refund again first."
    )
    response = _page_error(
        request, 503, "The database cannot be reached", Flash("error", text, "unavailable")
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _install_error_pages(
    console: FastAPI,
    unavailable: Callable[[BaseException], bool],
    candidates: tuple[type[Exception], ...],
) -> None:
    async def _database(request: Request, exc: Exception) -> Response:
        if not unavailable(exc):
            raise exc  # not the database's: the last resort's page (500)
        # One line, no traceback: the database being away is not a bug.
        log.warning(
            "database.unavailable", error_type=type(exc).__name__, error=str(exc)[:200] or None
        )
        return _unavailable_page(request)

    for candidate in candidates:
        console.add_exception_handler(candidate, _database)

    @console.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        query = {}
        if request.method in ("GET", "HEAD"):
            path = request.url.path
            if path == base_path(request) + "/":
                path = path[:-1]  # home, asked for as /console
            query["next"] = path + (f"?{request.url.query}" if request.url.query else "")
        if exc.ended is not None:
            query["ended"] = exc.ended.value
        target = base_path(request) + LOGIN_PATH + (f"?{urlencode(query)}" if query else "")
        response = RedirectResponse(target, status_code=303)
        if SESSION_COOKIE in request.cookies:
            clear_cookie(response, request, SESSION_COOKIE)
        return response

    @console.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        log.warning("console.csrf_refused", reason=exc.reason)
        text = (
            f"Nothing was changed: {exc.reason}. Go back, reload the page and send the form again."
        )
        return _page_error(request, 403, "This form was refused", Flash("error", text, exc.code))

    @console.exception_handler(ConsoleForbidden)
    async def _forbidden(request: Request, exc: ConsoleForbidden) -> Response:
        message = Flash("error", exc.sentence, exc.code)
        return _page_error(request, 403, "Not for this key", message)

    @console.exception_handler(e.DomainError)
    async def _domain(request: Request, exc: e.DomainError) -> Response:
        status = next(
            (_STATUS_BY_ERROR[cls] for cls in type(exc).__mro__ if cls in _STATUS_BY_ERROR),
            422,
        )
        return _page_error(request, status, sentence(exc.title), error_message(exc))

    @console.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'form'}: {err.get('msg')}"
            for err in exc.errors()[:5]
        )
        message = Flash(
            "error", sentence(f"Some values are not valid ({problems})"), "validation_error"
        )
        return _page_error(request, 422, "The form is not complete", message)

    @console.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        titles = {
            404: (
                "There is no such page",
                "Nothing is at this address in the console.",
                "not_found",
            ),
            405: (
                "Not here",
                "This address does not take that kind of request.",
                "method_not_allowed",
            ),
            413: (
                "Too large",
                "What was sent is larger than the console accepts.",
                "payload_too_large",
            ),
        }
        title, text, code = titles.get(
            exc.status_code, ("The request was refused", "The request was refused.", "http_error")
        )
        return _page_error(request, exc.status_code, title, Flash("error", text, code))

    @console.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        # Logged with its traceback by the service's request middleware, under
        # the request id the page shows.
        text = (
            "Something went wrong on our side. If you sent a form, look at the refund "
            "again before you retry: it is logged under the request id below."
        )
        message = Flash("error", text, "internal_error")
        return _page_error(request, 500, "Something went wrong", message)
