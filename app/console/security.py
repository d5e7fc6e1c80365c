"""What keeps the console's pages to themselves: response headers, cookies,
the same-origin rule for forms and CSRF tokens.

The headers are set by an ASGI wrapper around the whole console app, so that
every answer has them, error pages of the framework's last resort included.
"""

from __future__ import annotations

import hmac

import structlog
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "console_session"
# Before a session exists, the sign-in form is tied to the browser by a token
# in a cookie and the same token in the form (double submit): a page of
# another site can neither read the cookie nor guess the token.
LOGIN_CSRF_COOKIE = "console_login_csrf"
CSRF_FIELD = "csrf_token"

# No inline script or style anywhere: whatever text a page shows, it never runs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ConsoleEdge:
    """Wraps the console app: security headers on every response, and every
    audit record of a console request (and of the work it starts) says it came
    through the console."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.bind_contextvars(via="console")
        static = route_path(scope).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers[name] = value
                # Pages show refunds and keys' names: never kept by a browser or a
                # proxy. Our own stylesheet and script may be kept, if revalidated.
                headers["cache-control"] = "no-cache" if static else "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def route_path(scope: Scope) -> str:
    """The path under the console's mount: what its routes match."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def base_path(request: Request) -> str:
    """Where the console is mounted (`/console`, under any prefix of the app)."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def is_https(request: Request) -> bool:
    # uvicorn's proxy headers turn X-Forwarded-Proto from a trusted proxy into the scheme.
    return request.url.scheme == "https"


def cross_origin_reason(request: Request) -> str | None:
    """Why an unsafe request looks sent by another site, or None.

    Browsers say where a form comes from in Sec-Fetch-Site, which no page can
    set. Origin is checked whenever it names an origin; it is `null` on our
    own forms, since our Referrer-Policy (no-referrer) tells browsers to
    withhold it. A client that is no browser sends neither, and no other
    site can drive it; the CSRF token is required of everyone all the same."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return "the form was sent from another site"
    origin = request.headers.get("origin")
    if origin is not None and origin != "null" and origin != own_origin(request):
        return "the form was sent from another site"
    return None


def tokens_match(sent: object, expected: str | None) -> bool:
    if not isinstance(sent, str) or not sent or not expected:
        return False
    return hmac.compare_digest(sent.encode(), expected.encode())


def set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    """A cookie for the console's paths only, out of reach of scripts and of
    requests started by other sites; Secure whenever the console is on HTTPS."""
    parts = [f"{name}={value}", f"Path={base_path(request) or '/'}", "HttpOnly", "SameSite=Strict"]
    if is_https(request):
        parts.append("Secure")
    response.headers.append("set-cookie", "; ".join(parts))


def clear_cookie(response: Response, request: Request, name: str) -> None:
    parts = [
        f"{name}=",
        f"Path={base_path(request) or '/'}",
        "Max-Age=0",
        "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if is_https(request):
        parts.append("Secure")
    response.headers.append("set-cookie", "; ".join(parts))
