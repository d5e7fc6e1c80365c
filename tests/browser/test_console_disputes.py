"""Disputes in headless Chromium: the attention page shows an open dispute
with its evidence deadline, the overdue one marked, and the refund it holds
says why it cannot be approved."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from app.domain.models import Actor, RefundReason
from app.services.payments import RegisterPayment
from app.services.refunds import RequestRefund
from tests.browser.conftest import ConsoleServer, screenshot, sign_in
from tests.integration.test_reconciliation_disputes import add_dispute

pytestmark = pytest.mark.postgres


def _rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _disputed_payment(
    server: ConsoleServer, pse_dispute_id: str, due: datetime, *, with_refund: bool = False
) -> tuple[str, str | None]:
    """A payment (its refund awaiting approval, when asked for) with an open
    dispute, written as the disputes service writes one; the refund is held."""
    store = Actor(server.key_ids["store"], "store")
    paid, _new = await server.container.payments.register(
        RegisterPayment(
            "fake_jp",
            f"pay_{uuid.uuid4().hex[:12]}",
            f"ORD-{uuid.uuid4().hex[:6].upper()}",
            80_000,
            "JPY",
            server.clock.now() - timedelta(days=3),
        ),
        store.id,
    )
    refund_id = None
    if with_refund:
        made = await server.container.refunds.request(
            RequestRefund(paid.id, 20_000, RefundReason.REQUESTED_BY_CUSTOMER), store
        )
        refund_id = made.id
    payment = {"id": paid.id, "pse_account": paid.pse_account, "currency": paid.currency}
    opened_at = server.clock.now() - timedelta(days=1)
    await add_dispute(server, payment, pse_dispute_id, 80_000, due=due, opened_at=opened_at)
    async with server.container.pool.acquire() as conn:
        await conn.execute("UPDATE payments SET open_disputes = 1 WHERE id = $1", paid.id)
        if refund_id is not None:
            await conn.execute(
                "UPDATE refunds SET hold = 'payment_disputed' WHERE id = $1", refund_id
            )
    return paid.id, refund_id


def test_the_attention_page_shows_an_open_dispute_with_its_deadline(
    new_page: Any, console_server: ConsoleServer
):
    now = console_server.clock.now()
    soon_id, late_id = (f"du_{uuid.uuid4().hex[:10]}" for _ in range(2))
    due = now + timedelta(days=4)
    past = now - timedelta(hours=5)
    payment_id, refund_id = console_server.run(
        _disputed_payment(console_server, soon_id, due, with_refund=True)
    )
    console_server.run(_disputed_payment(console_server, late_id, past))

    page = new_page()
    sign_in(page, console_server.keys["ops"])
    tile = page.locator(".tile", has_text="Open disputes")
    assert int(tile.locator(".count").inner_text().replace(",", "")) >= 2
    with page.expect_navigation():
        tile.get_by_role("link").click()
    assert page.url.endswith("/console/attention#open_disputes")

    disputes = page.locator("section#open_disputes")
    assert disputes.get_by_role("heading", name=re.compile("Open disputes")).is_visible()
    row = disputes.locator("tbody tr", has_text=soon_id)
    assert row.is_visible()
    deadline = row.locator("th time")
    assert deadline.get_attribute("datetime") == _rfc3339(due)
    assert deadline.inner_text() == _rfc3339(due)
    assert row.get_by_text("¥80,000").first.is_visible()
    assert row.get_by_text("fraudulent").is_visible()
    assert row.get_by_text("overdue").count() == 0
    overdue = disputes.locator("tbody tr", has_text=late_id)
    assert overdue.get_by_text("overdue").is_visible()
    assert overdue.locator("th time").get_attribute("datetime") == _rfc3339(past)
    # Soonest first: the overdue one comes before the one due in four days.
    ids = disputes.locator("tbody tr").all_inner_texts()
    order = [i for i, text in enumerate(ids) if late_id in text or soon_id in text]
    assert late_id in ids[order[0]] and soon_id in ids[order[1]]
    screenshot(page, "attention-disputes-1280")

    # The payment's link finds its refund; the refund says it is held.
    with page.expect_navigation():
        row.get_by_role("link", name=payment_id).click()
    with page.expect_navigation():
        page.get_by_role("link", name=refund_id).click()
    assert page.get_by_text("Held: the payment is disputed").first.is_visible()
    assert page.get_by_role("button", name="Approve").count() == 0
    assert page.locator("section[aria-labelledby=disputes]").get_by_text(soon_id).is_visible()
    screenshot(page, "refund-held-1280")
