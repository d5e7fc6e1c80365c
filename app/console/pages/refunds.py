"""Refunds: search and filters over every refund, a page at a time, and the
filtered set as CSV.

The filters are a GET form: a search is an address people can bookmark and
send each other (it never holds a secret), and the export link is the same
address with `.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC

from fastapi import APIRouter, Request
from starlette.datastructures import QueryParams
from starlette.responses import Response, StreamingResponse

from app.console import inputs
from app.console.deps import ClockDep, ConsoleQueriesDep, ViewerDep
from app.console.formatting import error_message
from app.console.paging import decode_cursor, encode_cursor, link
from app.console.rendering import render
from app.console.security import base_path
from app.domain.errors import DomainError, InvalidInput, UnknownPseAccount
from app.domain.models import RefundStatus
from app.services.console_results import RefundSearch

router = APIRouter()

PAGE_SIZE = 50
# An order id may be as long as the API takes one (a payment id is shorter).
ID_LENGTH = 255
STATUSES = tuple(status.value for status in RefundStatus)
_TEXT_FIELDS = (
    "pse_account",
    "q",
    "created_from",
    "created_to",
    "currency",
    "amount_min",
    "amount_max",
    "cursor",
)


@dataclass(frozen=True, slots=True)
class SearchForm:
    """The filters as typed, shown back in the form (a refused one included,
    so it can be corrected) and carried by the page and export links."""

    statuses: tuple[str, ...] = ()
    pse_account: str = ""
    q: str = ""
    created_from: str = ""
    created_to: str = ""
    currency: str = ""
    amount_min: str = ""
    amount_max: str = ""
    stale: bool = False
    needs_attention: bool = False
    cursor: str = ""

    @classmethod
    def from_query(cls, params: QueryParams) -> SearchForm:
        # Values are echoed back; overlong ones are cut here and refused by `search`.
        def value(name: str, longest: int = inputs.MAX_FIELD_LENGTH) -> str:
            return (params.get(name) or "").strip()[: longest + 1]

        return cls(
            statuses=tuple(s.strip() for s in params.getlist("status") if s.strip())[:20],
            pse_account=value("pse_account"),
            q=value("q", ID_LENGTH),
            created_from=value("created_from"),
            created_to=value("created_to"),
            currency=value("currency").upper(),
            amount_min=value("amount_min"),
            amount_max=value("amount_max"),
            stale=inputs.flag(params.get("stale")),
            needs_attention=inputs.flag(params.get("needs_attention")),
            cursor=value("cursor"),
        )

    def echoed(self) -> SearchForm:
        """The form as a refused search shows it back (and links to it):
        card numbers typed into it masked to their last four digits."""
        texts = {name: inputs.echoed(getattr(self, name)) for name in _TEXT_FIELDS}
        return replace(self, **texts, statuses=tuple(map(inputs.echoed, self.statuses)))

    def params(self) -> list[tuple[str, str]]:
        """The filters as a query, without the page's cursor."""
        return [
            *(("status", status) for status in self.statuses),
            ("pse_account", self.pse_account),
            ("q", self.q),
            ("created_from", self.created_from),
            ("created_to", self.created_to),
            ("currency", self.currency),
            ("amount_min", self.amount_min),
            ("amount_max", self.amount_max),
            ("stale", "1" if self.stale else ""),
            ("needs_attention", "1" if self.needs_attention else ""),
        ]

    @property
    def filtered(self) -> bool:
        return any(value for _name, value in self.params())

    def search(self, accounts: list[str]) -> RefundSearch:
        """The form as the search service reads it; InvalidInput (or
        UnknownCurrency, UnknownPseAccount) naming the field that is wrong."""
        statuses = []
        for status in self.statuses:
            inputs.text(status, "The status")
            if status not in STATUSES:
                raise InvalidInput(
                    f"there is no status {status[:40]!r}; the statuses are {', '.join(STATUSES)}"
                )
            statuses.append(RefundStatus(status))
        pse_account = inputs.text(self.pse_account, "The PSE account")
        if pse_account and pse_account not in accounts:
            raise UnknownPseAccount(f"no PSE account named {pse_account!r} is configured")
        currency = inputs.currency(inputs.text(self.currency, "The currency"))
        return RefundSearch(
            statuses=tuple(statuses),
            pse_account=pse_account or None,
            payment_or_order_id=inputs.text(self.q, "The payment or order id", ID_LENGTH) or None,
            created_from=inputs.instant(
                inputs.text(self.created_from, "Created from"), "Created from"
            ),
            created_to=inputs.instant(
                inputs.text(self.created_to, "Created to"), "Created to", end=True
            ),
            currency=currency,
            amount_min=inputs.amount(
                inputs.text(self.amount_min, "The smallest amount"), currency, "The smallest amount"
            ),
            amount_max=inputs.amount(
                inputs.text(self.amount_max, "The largest amount"), currency, "The largest amount"
            ),
            stale=self.stale,
            needs_attention=self.needs_attention,
        )


def _page(
    request: Request,
    form: SearchForm,
    accounts: list[str],
    *,
    status: int = 200,
    error: DomainError | None = None,
    **found: object,
) -> Response:
    base = base_path(request)
    return render(
        request,
        "refunds.html",
        status=status,
        section="refunds",
        messages=[error_message(error)] if error else [],
        refused=error is not None,
        form=form,
        statuses=STATUSES,
        accounts=accounts,
        export_url=link(f"{base}/refunds.csv", form.params()),
        first_url=link(f"{base}/refunds", form.params()),
        **{"rows": [], "next_url": None, **found},
    )


@router.get("/refunds")
async def refunds(request: Request, viewer: ViewerDep, queries: ConsoleQueriesDep) -> Response:
    form = SearchForm.from_query(request.query_params)
    accounts = queries.pse_accounts()
    try:
        found = await queries.search(
            form.search(accounts), limit=PAGE_SIZE, cursor=decode_cursor(form.cursor)
        )
    except DomainError as error:
        # A filter that cannot be read: the form again, with what was typed and why.
        return _page(request, form.echoed(), accounts, status=422, error=error)
    base = base_path(request)
    next_url = None
    if found.next_cursor is not None:
        next_url = link(
            f"{base}/refunds", [*form.params(), ("cursor", encode_cursor(found.next_cursor))]
        )
    return _page(request, form, accounts, rows=found.items, next_url=next_url)


@router.get("/refunds.csv")
async def export(
    request: Request, viewer: ViewerDep, queries: ConsoleQueriesDep, clock: ClockDep
) -> Response:
    """The whole filtered set (not one page), streamed: a query per chunk of
    refunds, however many there are."""
    form = SearchForm.from_query(request.query_params)
    accounts = queries.pse_accounts()
    try:
        # Refused filters are refused here, before the answer starts: once
        # the stream has begun it can no longer become an error page.
        lines = await queries.export_csv(form.search(accounts))
    except DomainError as error:
        return _page(request, form.echoed(), accounts, status=422, error=error)
    stamp = clock.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="refunds-{stamp}.csv"'},
    )
