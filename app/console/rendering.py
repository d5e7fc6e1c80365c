"""Pages from templates: one Jinja environment per console app, with the
helpers every template may use."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from app.console import formatting
from app.console.security import base_path
from app.domain.console import Flash

# (section, label, path under the console): the navigation of every page.
NAV = (
    ("home", "Home", ""),
    ("approvals", "Approvals", "/approvals"),
    ("refunds", "Refunds", "/refunds"),
    ("attention", "Attention", "/attention"),
    ("reconciliations", "Reconciliations", "/reconciliations"),
)


class Pages:
    def __init__(self, now: Callable[[], datetime]) -> None:
        # The service's clock, not the machine's: ages agree with what the
        # services decided (and tests may move it).
        self.now = now
        self.env = Environment(
            loader=PackageLoader("app.console", "templates"),
            autoescape=select_autoescape(["html"]),
            # A misspelt name fails the page instead of rendering as nothing.
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            money=formatting.money,
            rfc3339=formatting.rfc3339,
            age=formatting.age,
            sentence=formatting.sentence,
        )

    def render(self, name: str, values: dict[str, Any]) -> str:
        return self.env.get_template(name).render(values)


def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    section: str | None = None,
    messages: list[Flash] | None = None,
    **context: Any,
) -> HTMLResponse:
    """`template` with the layout's values: where the console is, who is
    signed in (and the CSRF token its forms carry), the messages kept for this
    page and those of this answer, the clock's now."""
    pages: Pages = request.app.state.pages
    viewer = getattr(request.state, "viewer", None)
    values: dict[str, Any] = {
        "base": base_path(request),
        "viewer": viewer,
        "csrf_token": viewer.csrf_token if viewer is not None else "",
        "messages": [*(viewer.flashes if viewer is not None else ()), *(messages or ())],
        "now": pages.now(),
        "request_id": getattr(request.state, "request_id", None),
        "nav": NAV,
        "section": section,
    }
    values.update(context)
    return HTMLResponse(pages.render(template, values), status)
