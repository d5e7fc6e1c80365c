"""The decisions people make in the console, in headless Chromium: approvals
across two sessions, separation of duties, reject, cancel, an offline payout,
sync, a refund's timeline, the home page's figures, JavaScript off, and the
pages at a phone's width."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from app.domain.models import Actor, Approver, RefundReason, RefundStatus, RiskLevel
from app.domain.pse import PseRefund, PseRefundState
from app.services.payments import RegisterPayment
from app.services.refunds import RequestRefund
from tests.browser.conftest import ConsoleServer, screenshot, sign_in

pytestmark = pytest.mark.postgres


# -- data, set up through the services a person's clicks reach ------------------------


def _store(server: ConsoleServer) -> Actor:
    return Actor(server.key_ids["store"], "store")


def make_refund(
    server: ConsoleServer,
    amount: int,
    *,
    paid: int = 500_000,
    captured_days_ago: int = 2,
    risk: RiskLevel = RiskLevel.NORMAL,
    by: Actor | None = None,
    order_id: str = "ORD-7001",
) -> str:
    """A refund of `amount` yen on a new payment of `paid`; its id once the
    submissions it started are done."""

    async def make() -> str:
        payment, _new = await server.container.payments.register(
            RegisterPayment(
                "fake_jp",
                f"pay_{uuid.uuid4().hex[:12]}",
                order_id,
                paid,
                "JPY",
                server.clock.now() - timedelta(days=captured_days_ago),
                payment_method="card",
                risk_level=risk,
            ),
            server.key_ids["store"],
        )
        made = await server.container.refunds.request(
            RequestRefund(payment.id, amount, RefundReason.REQUESTED_BY_CUSTOMER),
            by or _store(server),
        )
        await server.container.submitter.drain()
        return made.id

    return server.run(make())


def status_of(server: ConsoleServer, refund_id: str) -> RefundStatus:
    async def read() -> RefundStatus:
        await server.container.submitter.drain()
        return (await server.container.refunds.get(refund_id)).status

    return server.run(read())


@pytest.fixture(scope="module")
def creator(console_server: ConsoleServer) -> tuple[Actor, str]:
    """A key that asks for refunds and approves them too: it may approve
    others' refunds, never its own."""
    key, secret = console_server.create_key(
        f"store-and-approver-{uuid.uuid4().hex[:6]}", ["store", "approver"], 3
    )
    return Actor(key.id, key.name), secret


@pytest.fixture
def dialogs_accepted(page) -> Iterator[Any]:
    """A page whose confirmation questions (data-confirm) are answered yes."""
    page.on("dialog", lambda dialog: dialog.accept())
    yield page


def card(page, refund_id: str):
    return page.locator(f"article[aria-labelledby='title-{refund_id}']")


def alert_text(page) -> str:
    return " ".join(page.get_by_role("alert").all_inner_texts())


def status_text(page) -> str:
    return " ".join(page.locator(".message.ok").all_inner_texts())


def timeline_text(page) -> str:
    return page.locator("ol.timeline").inner_text()


def fits(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


# -- approvals ---------------------------------------------------------------------------


def test_a_refund_above_the_second_tier_takes_a_level_1_and_a_level_2_approver(
    new_page, console_server
):
    # Test tiers: above ¥10,000 one approval; above ¥100,000 two, one of level 2.
    refund_id = make_refund(console_server, 150_000, order_id="ORD-TWO-LEVELS")
    first = new_page()  # each page in a browser context (a session) of its own
    sign_in(first, console_server.keys["approver1"])
    first.get_by_role("link", name="Approvals").click()
    assert first.url.endswith("/console/approvals")
    mine = card(first, refund_id)
    assert "¥150,000" in mine.inner_text() and "ORD-TWO-LEVELS" in mine.inner_text()
    assert (
        "Above the ¥100,000 tier, which asks for 2 approvals from different approvers, "
        "one of level 2 or above." in mine.inner_text()
    )
    # Level 1 fills the any-level slot; the veto is level 2's.
    assert mine.get_by_role("button", name="Reject").count() == 0
    screenshot(first, "approvals-inbox-1280")
    mine.get_by_label("Note").fill("Order checked with the customer.")
    with first.expect_navigation():
        mine.get_by_role("button", name="Approve").click()
    assert first.url.endswith("/console/approvals")
    assert (
        f"Refund {refund_id} approved. It still needs 1 approval of level 2 or above."
        in status_text(first)
    )
    waiting = card(first, refund_id)
    assert (
        "You already approved it (at level 1); another approver must fill the open slot "
        "of level 2." in waiting.inner_text()
    )
    assert waiting.get_by_role("button").count() == 0
    assert status_of(console_server, refund_id) is RefundStatus.PENDING_APPROVAL
    screenshot(first, "approvals-waiting-for-someone-else-1280")

    second = new_page()
    sign_in(second, console_server.keys["approver2"])
    assert second.locator(".tile", has_text="Waiting for you").is_visible()
    second.goto("/console/approvals")
    theirs = card(second, refund_id)
    assert "Still open\n1 approval of level 2 or above" in theirs.inner_text()
    # From the keyboard: the note, then Tab to Approve, Enter.
    theirs.get_by_label("Note").focus()
    second.keyboard.type("Within policy.")
    second.keyboard.press("Tab")
    assert second.evaluate("document.activeElement.textContent") == "Approve"
    with second.expect_navigation():
        second.keyboard.press("Enter")
    assert "every required approval is in" in status_text(second)
    assert card(second, refund_id).count() == 0

    # Both approvals made it approved (and so it went on to the PSE).
    assert status_of(console_server, refund_id) in (
        RefundStatus.APPROVED,
        RefundStatus.SUBMITTING,
        RefundStatus.PENDING,
    )
    first.goto(f"/console/refunds/{refund_id}")
    decisions = first.get_by_role("table").inner_text()
    assert re.search(r"approver1\s+1\s+approved\s+Order checked with the customer\.", decisions)
    assert re.search(r"approver2\s+2\s+approved\s+Within policy\.", decisions)
    timeline = timeline_text(first)
    assert "approved at level 1: Order checked with the customer." in timeline
    assert "approved at level 2: Within policy." in timeline
    assert "pending_approval → approved: Within policy." in timeline
    assert timeline.index("approved at level 1") < timeline.index("approved at level 2")
    screenshot(first, "refund-approved-1280")


def test_the_creator_of_a_refund_cannot_approve_it_and_is_told_why(page, console_server, creator):
    actor, secret = creator
    own = make_refund(console_server, 12_000, by=actor, order_id="ORD-MINE")
    other = make_refund(console_server, 12_000, order_id="ORD-THEIRS")
    sign_in(page, secret)
    page.goto("/console/approvals")
    blocked = page.locator("section[aria-labelledby=blocked]")
    explained = card(page, own).inner_text()
    assert blocked.locator(f"article[aria-labelledby='title-{own}']").count() == 1
    assert (
        "You created this refund: the key that asks for a refund never decides it "
        "(separation of duties)." in explained
    )
    assert card(page, other).get_by_role("button", name="Approve").is_visible()
    screenshot(page, "approvals-self-approval-1280")

    page.get_by_role("link", name=own).click()
    assert page.url.endswith(f"/console/refunds/{own}")
    assert "You cannot approve it: You created this refund" in page.locator(".why-not").inner_text()
    assert page.get_by_role("button", name="Approve").count() == 0
    screenshot(page, "refund-self-approval-1280")

    # A form sent anyway, however it was made, meets the service's own rule.
    page.go_back()
    card(page, other).locator("form.decide").evaluate(
        "(form, id) => { form.action = form.action.replace(/rf_[^/]+/, id); }", own
    )
    with page.expect_navigation():
        card(page, other).get_by_role("button", name="Approve").click()
    refused = alert_text(page)
    assert "The key that created this refund cannot decide on it." in refused
    assert "self_approval_forbidden" in refused
    assert status_of(console_server, own) is RefundStatus.PENDING_APPROVAL
    screenshot(page, "approvals-self-approval-refused-1280")


def test_a_rejection_needs_a_note_and_ends_the_refund(page, console_server):
    refund_id = make_refund(console_server, 12_000, order_id="ORD-REJECT")
    sign_in(page, console_server.keys["approver2"])
    page.goto("/console/approvals")
    with page.expect_navigation():
        card(page, refund_id).get_by_role("button", name="Reject").click()
    # The same page again, the form marked, the reason said with its code.
    assert page.url.endswith(f"/console/refunds/{refund_id}/reject")
    refused = alert_text(page)
    assert "A rejection needs a note: write why the refund is rejected." in refused
    assert "validation_error" in refused
    note = card(page, refund_id).get_by_label("Note")
    assert note.get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.name") == "note"
    assert status_of(console_server, refund_id) is RefundStatus.PENDING_APPROVAL
    screenshot(page, "approvals-reject-needs-a-note-1280")

    note.fill("The customer already got a replacement.")
    with page.expect_navigation():
        card(page, refund_id).get_by_role("button", name="Reject").click()
    assert page.url.endswith("/console/approvals")
    assert f"Refund {refund_id} rejected." in status_text(page)
    assert status_of(console_server, refund_id) is RefundStatus.REJECTED
    page.goto(f"/console/refunds/{refund_id}")
    assert page.locator("h1 .status").inner_text() == "rejected"
    assert "pending_approval → rejected: The customer already got a replacement." in timeline_text(
        page
    )
    screenshot(page, "refund-rejected-1280")


# -- ops ------------------------------------------------------------------------------------


def test_ops_cancels_a_refund_waiting_for_approval(dialogs_accepted, console_server):
    page = dialogs_accepted
    refund_id = make_refund(console_server, 12_000, order_id="ORD-CANCEL")
    sign_in(page, console_server.keys["ops"])
    page.goto(f"/console/refunds/{refund_id}")
    actions = page.locator("section[aria-labelledby=act]")
    assert [b.inner_text() for b in actions.get_by_role("button").all()] == ["Cancel"]
    page.get_by_label("Note").fill("The order was never shipped.")
    with page.expect_navigation():
        page.get_by_role("button", name="Cancel").click()
    assert f"Refund {refund_id} canceled." in status_text(page)
    assert page.locator("h1 .status").inner_text() == "canceled"
    assert "pending_approval → canceled: The order was never shipped." in timeline_text(page)
    assert status_of(console_server, refund_id) is RefundStatus.CANCELED
    assert "The refund is canceled: final" in actions.inner_text()
    screenshot(page, "refund-canceled-1280")


def test_ops_records_an_offline_payout(page, console_server):
    # Past the 180-day refund window: the PSE cannot refund it, ops pays another way.
    refund_id = make_refund(console_server, 5_000, captured_days_ago=200, order_id="ORD-OLD")
    assert status_of(console_server, refund_id) is RefundStatus.OFFLINE_REQUIRED
    sign_in(page, console_server.keys["ops"])
    page.goto(f"/console/refunds/{refund_id}")
    screenshot(page, "refund-offline-required-1280")
    paid_on = (console_server.clock.now() - timedelta(days=1)).date().isoformat()
    page.get_by_label("Payout reference").fill("BANK-TRX-20261126-001")
    page.get_by_label("Paid on").fill(paid_on)
    with page.expect_navigation():
        page.get_by_role("button", name="Record offline payout").click()
    assert "recorded (reference BANK-TRX-20261126-001)" in status_text(page)
    assert page.locator("h1 .status").inner_text() == "offline_paid"
    facts = page.locator("section[aria-labelledby=payment]").inner_text()
    assert "BANK-TRX-20261126-001" in facts
    assert "offline_required → offline_paid: reference BANK-TRX-20261126-001" in timeline_text(page)
    assert page.get_by_role("button", name="Record offline payout").count() == 0
    screenshot(page, "refund-offline-paid-1280")


def _succeeds_at_the_pse(server: ConsoleServer, refund_id: str) -> None:
    """The fake PSE now says the refund succeeded (as a provider does later)."""
    held = server.gateway.refunds[refund_id]
    server.gateway.refunds[refund_id] = PseRefund(
        pse_refund_id=held.pse_refund_id,
        state=PseRefundState.SUCCEEDED,
        amount=held.amount,
        reference=held.reference,
        pse_payment_ids=held.pse_payment_ids,
    )


def test_sync_now_asks_the_pse_and_applies_what_it_says(page, console_server):
    refund_id = make_refund(console_server, 3_000, order_id="ORD-SYNC")  # no approval needed
    assert status_of(console_server, refund_id) is RefundStatus.PENDING
    _succeeds_at_the_pse(console_server, refund_id)
    sign_in(page, console_server.keys["ops"])
    page.goto(f"/console/refunds/{refund_id}")
    assert page.locator("h1 .status").inner_text() == "pending"
    with page.expect_navigation():
        page.get_by_role("button", name="Sync now").click()
    assert f"Asked the PSE about refund {refund_id}: it is succeeded." in status_text(page)
    assert page.locator("h1 .status").inner_text() == "succeeded"
    assert "pending → succeeded" in timeline_text(page)
    assert page.get_by_role("button", name="Sync now").count() == 0
    assert status_of(console_server, refund_id) is RefundStatus.SUCCEEDED
    screenshot(page, "refund-synced-1280")


# -- one refund's page --------------------------------------------------------------------


def test_the_timeline_merges_status_changes_approvals_and_pse_calls(page, console_server):
    refund_id = make_refund(console_server, 12_000, order_id="ORD-TIMELINE")

    async def approve_and_call() -> None:
        console_server.clock.advance(minutes=3)
        approver = Actor(console_server.key_ids["approver1"], "approver1")
        await console_server.container.refunds.approve(
            refund_id, Approver(approver, 1), "Matches the order."
        )
        await console_server.container.submitter.drain()
        console_server.clock.advance(minutes=2)
        # What the PSE adapters' transport records of an HTTP exchange.
        console_server.container.audit.record(
            "pse.call",
            {
                "method": "GET",
                "url": f"http://pse.test/refunds/{refund_id}",
                "headers": {"x-api-key": "sk_fake", "accept": "application/json"},
                "request_body": None,
                "outcome": "ok",
                "status_code": 200,
                "duration_ms": 12.5,
                "response_body": '{"id": "fre_1", "state": "pending", "card": "4242424242424242"}',
            },
            refund_id=refund_id,
        )
        await console_server.container.audit.flush()

    console_server.run(approve_and_call())
    sign_in(page, console_server.keys["ops"])
    page.goto(f"/console/refunds/{refund_id}")
    timeline = timeline_text(page)
    order = [
        "pending_approval",
        "approved at level 1: Matches the order.",
        "pending_approval → approved: Matches the order.",
        "approved → submitting",
        "submitting → pending",
        f"GET http://pse.test/refunds/{refund_id} → 200 (12.5 ms)",
    ]
    positions = [timeline.index(text) for text in order]
    assert positions == sorted(positions)
    assert "refund.created" in timeline and "refund.approved" in timeline  # the store's events
    call = page.locator("li.tl-pse_call")
    call.get_by_text("Details").click()
    details = call.inner_text()
    assert "[redacted]" in details and "sk_fake" not in details
    assert "424242******4242" in details and "4242424242424242" not in details
    screenshot(page, "refund-timeline-1280")


def test_an_unknown_refund_is_a_404_page(page, console_server):
    sign_in(page, console_server.keys["ops"])
    response = page.goto("/console/refunds/rf_nosuchrefund")
    assert response.status == 404
    assert page.get_by_role("heading", name="No such refund").is_visible()
    assert "not_found" in alert_text(page)
    screenshot(page, "refund-not-found")


def test_home_shows_the_inbox_time_to_refund_and_refund_rate(page, console_server):
    refund_id = make_refund(console_server, 3_000, paid=40_000, order_id="ORD-FAST")
    _succeeds_at_the_pse(console_server, refund_id)
    console_server.clock.advance(minutes=47)  # before anyone signs in: no session idles
    console_server.run(console_server.container.submissions.resolve(refund_id))
    make_refund(console_server, 12_000, order_id="ORD-WAITING")
    sign_in(page, console_server.keys["approver1"])
    tile = page.locator(".tile", has_text="Waiting for you")
    assert int(tile.locator(".count").inner_text().replace(",", "")) >= 1
    speed = page.locator("section[aria-labelledby=time-to-refund]")
    assert speed.locator("tbody tr", has_text="fake_jp").is_visible()
    assert "Last 7 days" in speed.inner_text() and "p95" in speed.inner_text()
    assert re.search(r"\b\d+ min\b", speed.inner_text())  # the slow one shows in the p95
    rate = page.locator("section[aria-labelledby=refund-rate]")
    assert re.search(r"JPY\s+[0-9.]+ % of the amount", rate.inner_text())
    screenshot(page, "home-figures-1280")


# -- without JavaScript, and at a phone's width ---------------------------------------------


def test_approving_works_with_javascript_disabled(new_page, console_server):
    refund_id = make_refund(console_server, 12_000, order_id="ORD-NOJS")
    page = new_page(java_script_enabled=False)
    sign_in(page, console_server.keys["approver1"])
    page.goto("/console/approvals")
    card(page, refund_id).get_by_label("Note").fill("Approved without scripts.")
    with page.expect_navigation():
        card(page, refund_id).get_by_role("button", name="Approve").click()
    assert f"Refund {refund_id} approved" in status_text(page)
    assert status_of(console_server, refund_id) is not RefundStatus.PENDING_APPROVAL


def test_the_inbox_and_a_refund_fit_a_phone(new_page, console_server):
    refund_id = make_refund(console_server, 150_000, risk=RiskLevel.HIGH, order_id="ORD-PHONE")
    page = new_page(width=390, height=844)
    sign_in(page, console_server.keys["approver2"])
    page.goto("/console/approvals")
    assert card(page, refund_id).get_by_role("button", name="Approve").is_visible()
    assert fits(page)
    screenshot(page, "approvals-inbox-390")
    page.goto(f"/console/refunds/{refund_id}")
    assert page.get_by_role("button", name="Reject").is_visible()
    assert fits(page)
    screenshot(page, "refund-390")
