"""The console over HTTP (no browser): sign-in, cookies, sessions, CSRF,
headers, error pages and the audit trail of its actions."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Form

from app.api.app import create_app
from app.console.deps import ActDep, RefundsDep
from app.console.security import CONTENT_SECURITY_POLICY
from tests.api.helpers import get_refund, refund, register

pytestmark = pytest.mark.postgres

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """name -> the whole Set-Cookie line."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


@pytest.fixture
async def browser(api) -> AsyncIterator[Callable[..., Any]]:
    """Clients of their own (each its own cookie jar) on the test's app."""
    opened: list[httpx.AsyncClient] = []

    def open_client(base_url: str = "http://t") -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(api.container)), base_url=base_url
        )
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.aclose()


async def sign_in(client: httpx.AsyncClient, secret: str) -> httpx.Response:
    page = await client.get("/console/login")
    assert page.status_code == 200
    return await client.post(
        "/console/login", data={"api_key": secret, "csrf_token": csrf_of(page.text)}
    )


async def signed_in(open_client, api, who: str = "approver1", **kwargs: Any) -> httpx.AsyncClient:
    client = open_client(**kwargs)
    response = await sign_in(client, api.keys[who])
    assert response.status_code == 303, response.text
    return client


async def session_rows(api) -> list[dict[str, Any]]:
    async with api.container.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch("SELECT * FROM console_sessions")]


async def test_the_login_page_has_strict_security_headers_and_no_inline_script(browser):
    client = browser()
    page = await client.get("/console/login")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert "x-request-id" in page.headers
    scripts = re.findall(r"<script\b([^>]*)>", page.text)
    assert scripts and all("src=" in attributes for attributes in scripts)
    assert not re.search(r"\sstyle=|\son[a-z]+=", page.text)
    assert '<form method="post" action="/console/login"' in page.text


async def test_the_sign_in_form_gets_a_login_token_in_a_strict_httponly_cookie(browser):
    page = await browser().get("/console/login")
    cookie = set_cookies(page)["console_login_csrf"]
    assert f"console_login_csrf={csrf_of(page.text)}" in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie


async def test_an_approver_key_opens_a_session_with_a_strict_httponly_cookie(api, browser):
    client = browser()
    response = await sign_in(client, api.keys["approver2"])
    assert response.status_code == 303
    assert response.headers["location"] == "/console"
    cookie = set_cookies(response)["console_session"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    assert "Max-Age=0" in set_cookies(response)["console_login_csrf"]
    home = await client.get("/console")
    assert home.status_code == 200
    assert "approver2" in home.text and "approver (level 2)" in home.text
    assert home.headers["cache-control"] == "no-store"


async def test_over_https_the_session_cookie_is_secure(api, browser):
    client = browser(base_url="https://console.test")
    response = await sign_in(client, api.keys["ops"])
    assert response.status_code == 303
    assert "Secure" in set_cookies(response)["console_session"]


@pytest.mark.parametrize("who", ["approver1", "ops", "admin", "store_approver"])
async def test_approver_ops_and_admin_keys_may_sign_in(api, browser, who):
    client = await signed_in(browser, api, who)
    assert (await client.get("/console")).status_code == 200


async def test_a_store_key_is_refused_with_a_sentence_and_gets_no_session(api, browser):
    client = browser()
    response = await sign_in(client, api.keys["store"])
    assert response.status_code == 403
    assert "This key has only the store role, which cannot sign in to the console." in (
        response.text
    )
    assert "console_session" not in set_cookies(response)
    assert await session_rows(api) == []
    home = await client.get("/console")
    assert home.status_code == 303 and home.headers["location"].startswith("/console/login")


async def test_unknown_and_revoked_keys_are_refused(api, browser):
    client = browser()
    unknown = await sign_in(client, "prk_not-a-key-of-ours")
    assert unknown.status_code == 401
    assert "This API key is unknown or has been revoked." in unknown.text
    key, secret = await api.container.keys.create("leaver", ["ops"])
    await api.container.keys.revoke(key.id)
    revoked = await sign_in(client, secret)
    assert revoked.status_code == 401
    assert "console_session" not in set_cookies(revoked)
    assert await session_rows(api) == []


async def test_the_key_is_never_taken_from_a_url(api, browser):
    client = browser()
    page = await client.get("/console/login", params={"api_key": api.keys["ops"]})
    assert "console_session" not in set_cookies(page)
    assert api.keys["ops"] not in page.text


async def test_the_database_keeps_only_a_hash_of_the_session_token(api, browser):
    client = await signed_in(browser, api, "ops")
    token = client.cookies["console_session"]
    [row] = await session_rows(api)
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {str(value) for value in row.values()}
    assert row["api_key_id"].startswith("key_")


async def test_signing_out_ends_the_session(api, browser):
    client = await signed_in(browser, api)
    token = client.cookies["console_session"]
    home = await client.get("/console")
    response = await client.post("/console/logout", data={"csrf_token": csrf_of(home.text)})
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?signed_out=1"
    assert "Max-Age=0" in set_cookies(response)["console_session"]
    assert await session_rows(api) == []
    client.cookies.set("console_session", token, path="/console")
    again = await client.get("/console")
    assert again.status_code == 303 and again.headers["location"].startswith("/console/login")
    page = await client.get("/console/login?signed_out=1")
    assert "You have signed out." in page.text


@pytest.mark.parametrize("token", [None, "", "not-the-token"])
async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(api, browser, token):
    client = await signed_in(browser, api)
    data = {} if token is None else {"csrf_token": token}
    response = await client.post("/console/logout", data=data)
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "Nothing was changed" in response.text
    assert "csrf_failed" in response.text
    assert len(await session_rows(api)) == 1
    assert (await client.get("/console")).status_code == 200


async def test_a_form_sent_from_another_origin_is_refused(api, browser):
    client = await signed_in(browser, api)
    home = await client.get("/console")
    response = await client.post(
        "/console/logout",
        data={"csrf_token": csrf_of(home.text)},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert "the form was sent from another site" in response.text
    assert len(await session_rows(api)) == 1
    same = await client.post(
        "/console/logout", data={"csrf_token": csrf_of(home.text)}, headers={"Origin": "http://t"}
    )
    assert same.status_code == 303


async def test_signing_in_needs_the_token_of_the_sign_in_cookie(api, browser):
    client = browser()
    await client.get("/console/login")
    forged = await client.post(
        "/console/login", data={"api_key": api.keys["ops"], "csrf_token": "attacker-token"}
    )
    assert forged.status_code == 403
    assert "console_session" not in set_cookies(forged)
    fresh = browser()  # no sign-in cookie at all
    blind = await fresh.post(
        "/console/login", data={"api_key": api.keys["ops"], "csrf_token": "x" * 43}
    )
    assert blind.status_code == 403
    assert await session_rows(api) == []


async def test_a_session_idle_for_30_minutes_ends(api, browser):
    client = await signed_in(browser, api)
    api.clock.advance(minutes=29)
    assert (await client.get("/console")).status_code == 200
    api.clock.advance(minutes=30)
    response = await client.get("/console/approvals")
    assert response.status_code == 303
    assert response.headers["location"] == ("/console/login?next=%2Fconsole%2Fapprovals&ended=idle")
    assert "Max-Age=0" in set_cookies(response)["console_session"]
    assert await session_rows(api) == []
    page = await client.get(response.headers["location"])
    assert "Your session ended after a spell without activity." in page.text
    assert 'name="next_page" value="/console/approvals"' in page.text


async def test_an_active_session_still_ends_12_hours_after_sign_in(api, browser):
    client = await signed_in(browser, api)
    for _ in range(11 * 3):
        api.clock.advance(minutes=20)
        assert (await client.get("/console")).status_code == 200
    api.clock.advance(minutes=60)
    response = await client.get("/console")
    assert response.status_code == 303
    assert response.headers["location"].endswith("ended=absolute")


async def test_revoking_a_key_ends_its_sessions_at_once(api, browser):
    key, secret = await api.container.keys.create("temp ops", ["ops"])
    first = browser()
    second = browser()
    for client in (first, second):
        assert (await sign_in(client, secret)).status_code == 303
    other = await signed_in(browser, api, "approver1")
    assert len(await session_rows(api)) == 3
    await api.container.keys.revoke(key.id)
    assert [row["api_key_id"] for row in await session_rows(api)] != [key.id]
    assert len(await session_rows(api)) == 1
    for client in (first, second):
        response = await client.get("/console")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/login")
    assert (await other.get("/console")).status_code == 200


async def test_a_revocation_by_another_process_is_seen_on_the_next_request(api, browser):
    """The session is read with its key's row on every request: no cache of
    the API's can keep a revoked key signed in."""
    key, secret = await api.container.keys.create("elsewhere", ["ops"])
    client = browser()
    assert (await sign_in(client, secret)).status_code == 303
    assert (await client.get("/console")).status_code == 200
    # Another process revoked it (its own transaction; this process's caches never heard).
    async with api.container.pool.acquire() as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key.id)
    response = await client.get("/console")
    assert response.status_code == 303
    assert response.headers["location"].endswith("ended=revoked")
    assert await session_rows(api) == []


async def test_a_new_sign_in_replaces_the_session_the_browser_had(api, browser):
    client = await signed_in(browser, api, "approver1")
    first = client.cookies["console_session"]
    page = await client.get("/console/login")
    assert page.status_code == 303  # signed in already: sent home
    token = "t" * 43
    client.cookies.set("console_login_csrf", token)
    again = await client.post(
        "/console/login", data={"api_key": api.keys["ops"], "csrf_token": token}
    )
    assert again.status_code == 303
    now = client.cookies["console_session"]
    assert now != first
    [row] = await session_rows(api)
    assert row["token_hash"] == hashlib.sha256(now.encode()).hexdigest()


async def test_the_next_page_after_sign_in_stays_in_the_console(api, browser):
    client = browser()
    page = await client.get("/console/login", params={"next": "https://evil.example/"})
    assert 'name="next_page" value="/console"' in page.text
    response = await client.post(
        "/console/login",
        data={
            "api_key": api.keys["ops"],
            "csrf_token": csrf_of(page.text),
            "next_page": "//evil.example/console",
        },
    )
    assert response.headers["location"] == "/console"


async def test_home_counts_the_queues_and_todays_refunds(api, browser):
    payment = await register(api, amount=500000)
    waiting = await refund(api, payment["id"], 20000)
    assert waiting.status_code == 201 and waiting.json()["status"] == "pending_approval"
    assert (await refund(api, payment["id"], 3000)).status_code == 201
    await api.settle()
    client = await signed_in(browser, api, "ops")
    home = await client.get("/console")
    assert home.status_code == 200
    assert re.search(
        r'<span class="count">1</span>\s*<span class="label">Waiting for approval', home.text
    )
    assert "status-pending_approval" in home.text
    assert re.search(r"<th scope=\"row\">All</th><td class=\"num\">2</td>", home.text)
    assert 'id="time-to-refund"' in home.text and 'id="refund-rate"' in home.text


@pytest.mark.parametrize("path", ["/approvals", "/refunds", "/attention", "/reconciliations"])
async def test_every_console_page_renders_in_the_layout(api, browser, path):
    client = await signed_in(browser, api, "ops")
    page = await client.get("/console" + path)
    assert page.status_code == 200
    assert 'aria-current="page"' in page.text
    assert "<h1" in page.text
    for link in ("/console", "/console/approvals", "/console/refunds", "/console/attention"):
        assert f'href="{link}"' in page.text


async def test_console_errors_are_pages_and_the_api_keeps_problem_json(api, browser):
    client = await signed_in(browser, api, "ops")
    missing = await client.get("/console/no-such-page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert missing.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "There is no such page" in missing.text and "not_found" in missing.text
    nul = await client.get("/console/x%00")
    assert nul.status_code == 422 and nul.headers["content-type"].startswith("text/html")
    problem = await api.client.get("/v1/refunds/rf_missing", headers=api.auth("ops"))
    assert problem.headers["content-type"] == "application/problem+json"


async def test_the_stylesheet_and_script_are_our_own_files(browser):
    client = browser()
    css = await client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.headers["cache-control"] == "no-cache"
    assert css.headers["x-content-type-options"] == "nosniff"
    js = await client.get("/console/static/console.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "http://" not in css.text + js.text and "https://" not in css.text + js.text


def _console_app(app):
    mount = next(route for route in app.routes if getattr(route, "name", None) == "console")
    return mount.app.app


async def test_a_console_action_goes_through_the_service_and_its_audit_says_via_console(
    api, browser
):
    """The pattern every button follows (actions.Act): the service decides,
    the message shows on the next page, the audit trail names the key and the
    console."""
    app = create_app(api.container)
    router = APIRouter()

    @router.post("/try/approve/{refund_id}")
    async def approve(
        refund_id: str,
        act: ActDep,
        refunds: RefundsDep,
        note: Annotated[str, Form(max_length=200)] = "",
    ):
        return await act(
            lambda: refunds.approve(refund_id, act.viewer.approver, note or None),
            done=lambda approved: f"Refund {approved.id} approved.",
            back="/",
        )

    _console_app(app).include_router(router)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    try:
        payment = await register(api)
        created = await refund(api, payment["id"], 20000)
        refund_id = created.json()["id"]
        assert (await sign_in(client, api.keys["approver1"])).status_code == 303
        token = csrf_of((await client.get("/console")).text)
        unchecked = await client.post(f"/console/try/approve/{refund_id}", data={"note": "ok"})
        assert unchecked.status_code == 403  # the form check covers every route
        done = await client.post(
            f"/console/try/approve/{refund_id}", data={"note": "fine", "csrf_token": token}
        )
        assert done.status_code == 303 and done.headers["location"] == "/console"
        await api.settle()
        assert (await get_refund(api, refund_id))["status"] != "pending_approval"
        home = await client.get("/console")
        assert f"Refund {refund_id} approved." in home.text
        again = await client.post(f"/console/try/approve/{refund_id}", data={"csrf_token": token})
        assert again.status_code == 303
        refused = await client.get("/console")
        assert 'class="message error"' in refused.text
        assert "<code>invalid_state</code>" in refused.text
        assert (await client.get("/console")).text.count('class="message error"') == 0
    finally:
        await client.aclose()
    await api.container.audit.flush()
    records = await api.container.audit.search(refund_id=refund_id, limit=100)
    decisions = [r for r in records if r.kind == "approval.decision"]
    assert [(r.actor, r.data()["data"]["via"]) for r in decisions] == [("approver1", "console")]
    statuses = [r for r in records if r.kind == "refund.status" and r.actor == "approver1"]
    assert statuses and all(r.data()["data"]["via"] == "console" for r in statuses)
    created_record = next(r for r in records if r.kind == "api.request")
    assert "via" not in created_record.data()["data"]


async def test_signing_in_and_out_is_in_the_audit_trail_without_the_key(api, browser):
    client = await signed_in(browser, api, "ops")
    token = csrf_of((await client.get("/console")).text)
    await client.post("/console/logout", data={"csrf_token": token})
    await sign_in(browser(), api.keys["store"])
    await api.container.audit.flush()
    records = await api.container.audit.search(limit=200)
    kinds = {r.kind: r for r in records if r.kind.startswith("console.")}
    assert {"console.signed_in", "console.signed_out", "console.sign_in_refused"} <= set(kinds)
    assert kinds["console.signed_in"].actor == "ops"
    assert kinds["console.signed_in"].data()["data"]["via"] == "console"
    assert kinds["console.sign_in_refused"].data()["data"]["reason"] == "no_console_role"
    for record in records:
        for secret in api.keys.values():
            assert secret not in record.body
