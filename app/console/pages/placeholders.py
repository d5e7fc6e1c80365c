"""The pages whose content is still to come: each shows the layout and says so.

Each route moves to a module of its own when its page is built.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.console.deps import ViewerDep
from app.console.rendering import render

router = APIRouter()


def _not_yet(request: Request, section: str, title: str, coming: str) -> Response:
    return render(request, "placeholder.html", section=section, title=title, coming=coming)


@router.get("/approvals")
async def approvals(request: Request, viewer: ViewerDep) -> Response:
    return _not_yet(
        request,
        "approvals",
        "Approvals",
        "the refunds waiting for your decision, oldest first, with Approve and Reject.",
    )


@router.get("/refunds")
async def refunds(request: Request, viewer: ViewerDep) -> Response:
    return _not_yet(
        request,
        "refunds",
        "Refunds",
        "search and filters over every refund, and an export of the results as CSV.",
    )


@router.get("/attention")
async def attention(request: Request, viewer: ViewerDep) -> Response:
    return _not_yet(
        request,
        "attention",
        "Attention",
        "the queues to clear: stale, unknown, needs attention, offline payouts and "
        "failed deliveries to the store.",
    )


@router.get("/reconciliations")
async def reconciliations(request: Request, viewer: ViewerDep) -> Response:
    return _not_yet(
        request,
        "reconciliations",
        "Reconciliations",
        "settlement file uploads, past runs with their differences, and the FX report.",
    )
