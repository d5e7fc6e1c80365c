"""Sign-in with an API key, and sign-out."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from app.console.actions import redirect
from app.console.deps import LOGIN_PATH, ConsoleDep, ViewerDep, viewer_of
from app.console.errors import SignInRequired
from app.console.rendering import render
from app.console.security import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    base_path,
    clear_cookie,
    set_cookie,
)
from app.domain.console import Flash, SessionEnd
from app.services.console import ActiveSession, Refusal, SignInRefused

router = APIRouter()

_ENDED = {
    SessionEnd.IDLE: "Your session ended after a spell without activity. Sign in again.",
    SessionEnd.ABSOLUTE: "Your session reached its time limit. Sign in again.",
    SessionEnd.REVOKED: "Your session ended: the key it was opened with has been revoked.",
}


def _safe_next(request: Request, wanted: str | None) -> str:
    """Where to go after signing in: a page of this console, nowhere else."""
    base = base_path(request)
    if (
        wanted
        and (wanted == base or wanted.startswith(base + "/"))
        and not wanted.startswith("//")
        and "\\" not in wanted
        and LOGIN_PATH not in wanted
    ):
        return wanted
    return base or "/"


def _login_token(request: Request) -> str:
    # The browser's sign-in token is kept while it has one: two tabs open on
    # the sign-in page must both work.
    known = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if 32 <= len(known) <= 64 and known.replace("-", "").replace("_", "").isalnum():
        return known
    return secrets.token_urlsafe(32)


def _login_page(
    request: Request, *, status: int = 200, message: Flash | None = None, next_page: str = ""
) -> Response:
    token = _login_token(request)
    response = render(
        request,
        "login.html",
        status=status,
        messages=[message] if message else [],
        login_token=token,
        next_page=next_page,
    )
    set_cookie(response, request, LOGIN_CSRF_COOKIE, token)
    return response


@router.get(LOGIN_PATH)
async def login_page(
    request: Request,
    console: ConsoleDep,
    next: str | None = None,
    ended: str | None = None,
    signed_out: bool = False,
) -> Response:
    try:
        await viewer_of(request, console)
    except SignInRequired:
        pass
    else:
        return RedirectResponse(_safe_next(request, next), status_code=303)
    message = None
    if signed_out:
        message = Flash("info", "You have signed out.")
    elif ended in {end.value for end in SessionEnd}:
        message = Flash("info", _ENDED[SessionEnd(ended)])
    return _login_page(request, message=message, next_page=_safe_next(request, next))


@router.post(LOGIN_PATH)
async def sign_in(
    request: Request,
    console: ConsoleDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    next_page: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    try:
        signed_in = await console.open(api_key)
    except SignInRefused as refused:
        status = 401 if refused.reason is Refusal.UNKNOWN_KEY else 403
        return _login_page(
            request,
            status=status,
            message=Flash("error", refused.sentence, refused.reason.value),
            next_page=_safe_next(request, next_page),
        )
    # Whatever session this browser had ends here: a new sign-in never
    # continues a session someone else may have planted.
    previous = await console.resolve(request.cookies.get(SESSION_COOKIE))
    if isinstance(previous, ActiveSession):
        await console.close(previous)
    response = RedirectResponse(_safe_next(request, next_page), status_code=303)
    set_cookie(response, request, SESSION_COOKIE, signed_in.token)
    clear_cookie(response, request, LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def sign_out(request: Request, console: ConsoleDep, viewer: ViewerDep) -> Response:
    await console.close(ActiveSession(viewer.key, viewer.session))
    response = redirect(request, f"{LOGIN_PATH}?signed_out=1")
    clear_cookie(response, request, SESSION_COOKIE)
    return response
