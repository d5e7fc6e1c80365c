"""Console actions: a button's POST runs one service call, the same as the API's.

A route takes `Act` (deps.ActDep) and hands it the call:

    @router.post("/refunds/{refund_id}/approve")
    async def approve(refund_id: str, act: ActDep, refunds: RefundsDep,
                      note: Annotated[str, Form(max_length=2000)] = ""):
        return await act(
            lambda: refunds.approve(refund_id, act.viewer.approver, note or None),
            done="Refund approved.",
            back=f"/refunds/{refund_id}",
        )

The service decides, as for the API; a rule it refuses comes back as a
message with its sentence and stable code. Either way the person lands on
`back` (POST, redirect, GET: a reload never sends the form again) with the
message shown there. The actor the services record is the key's name, as
through the API, and every audit record of a console request carries
`via: console` (bound by `security.ConsoleEdge`).

A page that must show the form again with the person's input (a reject
without its note) uses `act.attempt(...)` and renders the `Outcome` itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse

from app.console.errors import ConsoleForbidden
from app.console.formatting import error_message
from app.console.security import base_path
from app.domain.console import Flash
from app.domain.errors import DomainError

if TYPE_CHECKING:
    from app.console.viewer import Viewer
    from app.services.console import ConsoleService

T = TypeVar("T")
log = structlog.get_logger("app.console")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    value: T | None = None
    error: Flash | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def attempt(call: Callable[[], Awaitable[T]]) -> Outcome[T]:
    """Run `call`; a refused rule (or a missing role) becomes its message."""
    try:
        return Outcome(value=await call())
    except DomainError as error:
        log.info("console.action_refused", code=error.code)
        return Outcome(error=error_message(error))
    except ConsoleForbidden as refused:
        log.info("console.action_refused", code=refused.code)
        return Outcome(error=Flash("error", refused.sentence, refused.code))


def redirect(request: Request, path: str) -> RedirectResponse:
    """303 to `path` under the console ("/" is its home), always one of ours:
    never a URL taken from a form."""
    target = base_path(request) + ("" if path == "/" else path)
    return RedirectResponse(target or "/", status_code=303)


class Act:
    def __init__(self, request: Request, viewer: Viewer, console: ConsoleService) -> None:
        self.request = request
        self.viewer = viewer
        self._console = console

    async def __call__(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        done: str | Callable[[T], str],
        back: str,
    ) -> RedirectResponse:
        """Run the service call, keep its outcome as the message of the next
        page, and send the person to `back` (a path under the console)."""
        outcome = await attempt(call)
        if outcome.error is not None:
            flash = outcome.error
        else:
            text = done if isinstance(done, str) else done(outcome.value)  # type: ignore[arg-type]
            flash = Flash("ok", text)
        await self._console.flash(self.viewer.session, flash)
        return redirect(self.request, back)

    async def attempt(self, call: Callable[[], Awaitable[T]]) -> Outcome[T]:
        return await attempt(call)
