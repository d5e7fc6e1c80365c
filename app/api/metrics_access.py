"""Who may read `/metrics`, and on which listener.

`/metrics` carries no secret, but it does carry business volumes (refunds by
account and status, PSE error rates, webhook forgeries), and each scrape
costs database queries. So it is never served to whoever reaches the public
port, unless the configuration says so:

- neither `metrics_token` nor `metrics_port` set (the default): `/metrics`
  answers 404 `not_found` everywhere. This is the safe default: a service
  put on the internet with no thought for its metrics leaks nothing, and an
  operator who wants them opts in with one of the two settings below;
- `metrics_token`: every scrape must carry `Authorization: Bearer <token>`,
  compared in constant time; anything else is answered 401 `unauthorized`
  before any query runs;
- `metrics_port`: `serve` listens on that port too (same interface as
  `--host`), where only `GET /metrics` is served: every other path there
  answers 404. The public port then answers 404 for `/metrics`, token or
  not. With both set, the token is required on the metrics port.

Which listener a request came in on is told by its local port
(`scope["server"]`), which uvicorn reads from the accepting socket: a client
cannot choose it, the `Host` header has no say.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import problem_response, request_id_of
from app.config import Settings

METRICS_PATH = "/metrics"
NOT_SERVED = "metrics are not served on this port (see metrics_token and metrics_port)"


def local_port(scope: Scope) -> int | None:
    """The port of the socket the request was accepted on; None without one."""
    server = scope.get("server")
    return server[1] if server else None


def metrics_refusal(request: Request, settings: Settings) -> Response | None:
    """None when this request may read the metrics, else the problem to answer."""
    metrics_port = settings.metrics_port
    on_metrics_port = metrics_port is not None and local_port(request.scope) == metrics_port
    token = settings.metrics_token
    if not on_metrics_port and (metrics_port is not None or token is None):
        return problem_response(404, "not_found", "Not found", NOT_SERVED, request_id_of(request))
    if token is not None and not _bearer_matches(request, token.get_secret_value()):
        return problem_response(
            401,
            "unauthorized",
            "Missing or wrong metrics token",
            "scrapes need Authorization: Bearer <metrics_token>",
            request_id_of(request),
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return None


def _bearer_matches(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    # Constant time over the bytes as they came (headers are latin-1); the
    # configured token is printable ASCII (app.config).
    return hmac.compare_digest(given.strip().encode("latin-1"), token.encode("ascii"))


class MetricsPortGate:
    """On the metrics listener, `/metrics` and nothing else: the API, the
    console and the docs answer 404 there, whatever key a request carries."""

    def __init__(self, app: ASGIApp, *, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and local_port(scope) == self.port
            and scope["path"] != METRICS_PATH
        ):
            request_id = scope.get("state", {}).get("request_id")
            response = problem_response(
                404, "not_found", "Not found", "this port serves /metrics only", request_id
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
