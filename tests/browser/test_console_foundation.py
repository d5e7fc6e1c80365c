"""The console's foundation in headless Chromium: sign-in and sign-out, the
store key's refusal, CSRF, idle expiry, revocation, the CSP, and every page
at a laptop's and a phone's width."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from app.console.security import CONTENT_SECURITY_POLICY
from app.domain.models import Actor, RefundReason
from app.services.payments import RegisterPayment
from app.services.refunds import RequestRefund
from tests.browser.conftest import screenshot, sign_in

pytestmark = pytest.mark.postgres

PAGES = {
    "home": "/console",
    "approvals": "/console/approvals",
    "refunds": "/console/refunds",
    "attention": "/console/attention",
    "reconciliations": "/console/reconciliations",
}


def signed_in_cookie(page) -> str | None:
    return next(
        (c["value"] for c in page.context.cookies() if c["name"] == "console_session"), None
    )


def test_an_approver_signs_in_and_lands_on_home(page, console_server):
    page.goto("/console")
    assert page.url.endswith("/console/login?next=%2Fconsole")
    screenshot(page, "login-1280")
    sign_in(page, console_server.keys["approver1"])
    assert page.url == console_server.base_url + "/console"
    assert page.get_by_role("heading", name="Home", level=1).is_visible()
    assert page.get_by_text("approver (level 1)").is_visible()
    assert page.locator(".who-name").inner_text() == "approver1"
    assert page.get_by_role("link", name="Approvals").is_visible()
    assert page.get_by_role("heading", name="Queues").is_visible()
    screenshot(page, "home-1280")
    cookie = next(c for c in page.context.cookies() if c["name"] == "console_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts


def _queue_count(page, label: str) -> int:
    tile = page.locator(".tile", has_text=label)
    return int(tile.locator(".count").inner_text().rstrip("+").replace(",", ""))


async def _seed_refunds(server) -> None:
    """A refund waiting for approval, one sent to the PSE, one to pay out offline."""
    store = Actor(server.key_ids["store"], "store")
    now = server.clock.now()

    async def payment(captured_days_ago: int):
        registered, _new = await server.container.payments.register(
            RegisterPayment(
                "fake_jp",
                f"pay_{uuid.uuid4().hex[:12]}",
                "ORD-2041",
                500000,
                "JPY",
                now - timedelta(days=captured_days_ago),
            ),
            store.id,
        )
        return registered

    recent, old = await payment(2), await payment(200)
    reason = RefundReason.REQUESTED_BY_CUSTOMER
    for paid, amount in ((recent, 120000), (recent, 3000), (old, 5000)):
        await server.container.refunds.request(RequestRefund(paid.id, amount, reason), store)
    await server.container.submitter.drain()


def test_home_counts_the_queues_and_todays_refunds(page, console_server):
    sign_in(page, console_server.keys["approver2"])
    waiting, offline = _queue_count(page, "Waiting for approval"), _queue_count(page, "Offline")
    console_server.run(_seed_refunds(console_server))
    page.reload()
    assert _queue_count(page, "Waiting for approval") == waiting + 1
    assert _queue_count(page, "Offline payout") == offline + 1
    today = page.get_by_role("table")
    assert today.locator("tbody tr", has_text="pending_approval").is_visible()
    assert today.locator("tbody tr", has_text="offline_required").is_visible()
    screenshot(page, "home-with-refunds-1280")


def test_a_store_key_is_refused_with_a_sentence(page, console_server):
    sign_in(page, console_server.keys["store"])
    assert page.url.endswith("/console/login")
    alert = page.get_by_role("alert")
    assert "This key has only the store role, which cannot sign in to the console." in (
        alert.inner_text()
    )
    assert "no_console_role" in alert.inner_text()
    assert signed_in_cookie(page) is None
    screenshot(page, "login-store-key-refused")
    page.goto("/console")
    assert "/console/login" in page.url


def test_an_unknown_key_is_refused(page):
    sign_in(page, "prk_this-is-no-key-of-ours")
    assert "This API key is unknown or has been revoked." in page.get_by_role("alert").inner_text()
    assert signed_in_cookie(page) is None


def test_signing_out_ends_the_session(page, console_server):
    sign_in(page, console_server.keys["ops"])
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.url.endswith("/console/login?signed_out=1")
    assert page.get_by_text("You have signed out.").is_visible()
    screenshot(page, "login-signed-out")
    page.goto("/console")
    assert "/console/login" in page.url


@pytest.mark.parametrize("tampering", ["wrong", "missing"])
def test_a_form_with_a_wrong_or_no_csrf_token_is_refused_and_changes_nothing(
    page, console_server, tampering
):
    sign_in(page, console_server.keys["ops"])
    field = page.locator("form[action='/console/logout'] input[name=csrf_token]")
    if tampering == "wrong":
        field.evaluate("input => { input.value = 'not-the-token'; }")
    else:
        field.evaluate("input => input.remove()")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.get_by_role("heading", name="This form was refused").is_visible()
    text = page.get_by_role("alert").inner_text()
    assert "Nothing was changed" in text and "csrf_failed" in text
    screenshot(page, f"csrf-refused-{tampering}")
    page.goto("/console")
    assert page.url.endswith("/console")  # still signed in: the sign-out did not happen
    assert page.get_by_role("heading", name="Home", level=1).is_visible()


def test_a_form_on_another_site_cannot_act_in_the_console(page, console_server):
    sign_in(page, console_server.keys["ops"])
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    # Even holding the token, a page that is not the console's is refused.
    attacker = page.context.new_page()
    attacker.set_content(
        f'<form method="post" action="{console_server.base_url}/console/logout">'
        f'<input type="hidden" name="csrf_token" value="{token}">'
        '<button type="submit">Win a prize</button></form>'
    )
    with attacker.expect_navigation():
        attacker.get_by_role("button", name="Win a prize").click()
    assert "/console/login" in attacker.url or "This form was refused" in attacker.content()
    page.goto("/console")
    assert page.url.endswith("/console")


def test_an_idle_session_ends_after_30_minutes(page, console_server):
    sign_in(page, console_server.keys["approver2"])
    console_server.clock.advance(minutes=29)
    page.goto("/console/refunds")
    assert page.url.endswith("/console/refunds")
    console_server.clock.advance(minutes=31)
    page.goto("/console/approvals")
    assert "/console/login" in page.url and "ended=idle" in page.url
    assert page.get_by_text("Your session ended after a spell without activity.").is_visible()
    assert signed_in_cookie(page) is None
    screenshot(page, "login-session-ended")
    # Signing in again goes back to the page that was asked for.
    page.get_by_label("API key").fill(console_server.keys["approver2"])
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    assert page.url.endswith("/console/approvals")


def test_a_revoked_keys_session_ends_on_the_next_request(page, console_server):
    key, secret = console_server.create_key("leaving ops", ["ops"])
    sign_in(page, secret)
    assert page.get_by_text("leaving ops").is_visible()
    console_server.revoke(key.id)
    page.reload()
    assert "/console/login" in page.url
    assert signed_in_cookie(page) is None
    sign_in(page, secret)
    assert "This API key is unknown or has been revoked." in page.get_by_role("alert").inner_text()


def test_pages_carry_a_strict_csp_and_no_inline_script_or_style(page, console_server):
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text))
    response = page.goto("/console/login")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    sign_in(page, console_server.keys["admin"])
    for path in [*PAGES.values(), "/console/login?signed_out=1"]:
        response = page.goto(path)
        headers = response.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        inline = page.evaluate(
            """() => ({
                scripts: [...document.scripts].filter(s => !s.src).length,
                styles: document.querySelectorAll('style, [style]').length,
                handlers: [...document.querySelectorAll('*')].filter(
                    el => [...el.attributes].some(a => a.name.startsWith('on'))).length,
            })"""
        )
        assert inline == {"scripts": 0, "styles": 0, "handlers": 0}, path
        # Our own stylesheet is applied under the policy (not the browser's serif default).
        font = page.evaluate("getComputedStyle(document.body).fontFamily")
        assert "system-ui" in font
    assert not [v for v in violations if "Content Security Policy" in v]


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_renders_at_laptop_and_phone_widths(new_page, console_server, width):
    page = new_page(width=width, height=844 if width < 500 else 800)
    page.goto("/console/login")
    assert _fits(page)
    screenshot(page, f"login-{width}")
    sign_in(page, console_server.keys["ops"])
    for name, path in PAGES.items():
        page.goto(path)
        assert page.locator("h1").is_visible(), name
        assert page.get_by_role("navigation", name="Console").is_visible(), name
        current = page.locator("nav a[aria-current=page]")
        assert current.count() == 1 and current.get_attribute("href") == path
        assert page.get_by_role("button", name="Sign out").is_visible(), name
        assert _fits(page), f"{name} is wider than the {width} px window"
        screenshot(page, f"{name}-{width}")


def _fits(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_the_console_works_with_javascript_disabled(new_page, console_server):
    page = new_page(java_script_enabled=False)
    sign_in(page, console_server.keys["approver1"])
    assert page.get_by_role("heading", name="Home", level=1).is_visible()
    page.get_by_role("link", name="Refunds", exact=True).click()
    assert page.url.endswith("/console/refunds")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.get_by_text("You have signed out.").is_visible()


def test_signing_in_works_from_the_keyboard_alone(page, console_server):
    page.goto("/console/login")
    # The key field has the focus (autofocus: waited for, since the browser may
    # give it after the load event, and keys typed before would be lost); the
    # first Tab stop of every page skips to its content.
    expect(page.locator("#api_key")).to_be_focused()
    page.keyboard.type(console_server.keys["ops"])
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/console")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert re.search(r"Skip to the content", focused)
