"""Disputes in the console over HTTP (no browser): the attention page lists
open disputes by evidence deadline with the overdue ones marked, within a
scoped key's accounts; the home page counts them; a refund held for its
payment's dispute says so, lists the disputes and offers no Approve; dispute
lines of a reconciliation read as disputes. Strict CSP throughout."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from app.console.paging import encode_cursor
from app.console.security import CONTENT_SECURITY_POLICY
from tests.api import test_console
from tests.api.helpers import get_refund, refund, register
from tests.api.test_console import csrf_of, signed_in
from tests.api.test_console_decisions import card_of, text_of
from tests.integration.test_reconciliation import opener
from tests.integration.test_reconciliation_disputes import GENERIC, add_dispute

pytestmark = pytest.mark.postgres

browser = test_console.browser


async def sql(api, statement: str, *args) -> None:
    async with api.container.pool.acquire() as conn:
        await conn.execute(statement, *args)


def section(page: str, key: str) -> str:
    """The HTML of the page's section `key` (its id, or the id of its heading)."""
    found = re.search(rf'<section[^>]*\b(?:id|aria-labelledby)="{key}"', page)
    assert found, f"no section {key}"
    return page[found.start() : page.index("</section>", found.start())]


def dispute_rows(html: str) -> list[str]:
    """The text of each row of the open disputes' table, in order."""
    body = section(html, "open_disputes")
    return [text_of(row) for row in re.findall(r'<tr class="dispute[^"]*">(.*?)</tr>', body, re.S)]


def count_of(page: str, label: str) -> int:
    found = re.search(
        r'<span class="count">([\d,]+)\+?</span>\s*<span class="label">' + label, page
    )
    assert found, f"no tile {label}"
    return int(found.group(1).replace(",", ""))


def assert_strict(response) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert not re.search(r"\sstyle=|\son[a-z]+=", response.text)
    assert all("src=" in tag for tag in re.findall(r"<script\b([^>]*)>", response.text))


async def test_the_attention_page_lists_open_disputes_soonest_deadline_first(api, browser):
    now = api.clock.now()
    later = await register(api, order_id="ORD-LATER")
    await add_dispute(api, later, "du_later", 5000, due=now + timedelta(days=9))
    soon = await register(api, order_id="ORD-SOON")
    await add_dispute(
        api, soon, "du_soon", 7000, reason="product_not_received", due=now + timedelta(days=2)
    )
    overdue = await register(api, order_id="ORD-LATE")
    await add_dispute(api, overdue, "du_overdue", 3000, due=now - timedelta(hours=3))
    no_deadline = await register(api)
    await add_dispute(api, no_deadline, "du_whenever", 1000, reason=None)
    settled = await register(api)
    await add_dispute(api, settled, "du_won", 2000, status="won", due=now + timedelta(days=1))
    client = await signed_in(browser, api, "ops")
    page = await client.get("/console/attention")
    assert page.status_code == 200
    assert_strict(page)
    assert re.search(r'Open disputes <span class="badge busy">4</span>', page.text)
    rows = dispute_rows(page.text)
    assert [re.search(r"du_\w+", row).group(0) for row in rows] == [
        "du_overdue",
        "du_soon",
        "du_later",
        "du_whenever",
    ]
    # The overdue one is marked, and only it; its deadline is shown as RFC 3339.
    assert "overdue" in rows[0] and not any("overdue" in row for row in rows[1:])
    due = (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert due in rows[0]
    assert "1 past the deadline." in text_of(section(page.text, "open_disputes"))
    assert "product_not_received" in rows[1] and "¥7,000" in rows[1]
    assert soon["id"] in rows[1] and soon["pse_payment_id"] in rows[1]
    assert "ORD-SOON" in rows[1]
    assert "no deadline given" in rows[3]
    body = section(page.text, "open_disputes")
    assert f'href="/console/refunds?q={soon["id"]}"' in body
    assert '<tr class="dispute overdue">' in body
    assert "du_won" not in page.text


async def test_open_disputes_page_through_their_deadlines(api, browser, monkeypatch):
    monkeypatch.setattr("app.console.pages.attention.PAGE_SIZE", 2)
    now = api.clock.now()
    expected = []
    for i, days in enumerate((3, 1, None, 2, None)):
        paid = await register(api)
        name = f"du_page{i}"
        await add_dispute(api, paid, name, 1000, due=now + timedelta(days=days) if days else None)
        expected.append((days or 99, name))
    order = [name for _days, name in sorted(expected)]
    client = await signed_in(browser, api, "ops")
    seen = []
    url = "/console/attention"
    while url:
        page = await client.get(url)
        assert page.status_code == 200
        seen += [re.search(r"du_page\d", row).group(0) for row in dispute_rows(page.text)]
        found = re.search(
            r'<nav class="pager" aria-label="Pages of open disputes">.*?'
            r'<a href="([^"]+)" rel="next">',
            page.text,
            re.S,
        )
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen[:2] == order[:2] and sorted(seen) == sorted(order)
    # Those with a deadline by it, then those without one by id.
    assert seen[:3] == order[:3] and set(seen[3:]) == {"du_page2", "du_page4"}
    edited = await client.get(
        "/console/attention", params={"queue": "open_disputes", "cursor": "x"}
    )
    assert edited.status_code == 422
    # A well-formed link whose deadline has no UTC form, or is beyond 1970-2999.
    for due in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1900-01-01T00:00:00Z"):
        edited = await client.get(
            "/console/attention",
            params={"queue": "open_disputes", "cursor": encode_cursor(f"{due}|du_page1")},
        )
        assert edited.status_code == 422, (due, edited.text[:300])


async def test_a_scoped_key_sees_only_its_accounts_disputes_and_their_count(api, browser):
    _key, secret = await api.container.keys.create("ops_a", ["ops"], None, ["fake_jp"])
    api.keys["ops_a"] = secret
    mine = await register(api)
    await add_dispute(api, mine, "du_mine", 1000, due=api.clock.now() + timedelta(days=1))
    theirs = await register(api, pse_account="other")
    await add_dispute(api, theirs, "du_theirs", 1000, due=api.clock.now() - timedelta(days=1))
    scoped = await signed_in(browser, api, "ops_a")
    page = (await scoped.get("/console/attention")).text
    assert "du_mine" in page and "du_theirs" not in page
    home = (await scoped.get("/console")).text
    assert count_of(home, "Open disputes") == 1
    assert "chargebacks to answer before their evidence deadline" in home
    everyone = await signed_in(browser, api, "ops")
    home = (await everyone.get("/console")).text
    assert count_of(home, "Open disputes") == 2
    assert "chargebacks: 1 past the evidence deadline" in home
    assert 'href="/console/attention#open_disputes"' in home
    assert "du_theirs" in (await everyone.get("/console/attention")).text


async def test_a_held_refund_says_so_lists_the_disputes_and_offers_no_approve(api, browser):
    paid = await register(api, order_id="ORD-HELD")
    made = (await refund(api, paid["id"], 20_000)).json()
    assert made["status"] == "pending_approval"
    due = api.clock.now() + timedelta(days=6)
    dispute_id = await add_dispute(api, paid, "du_held", 50_000, due=due)
    await add_dispute(api, paid, "du_old", 1_000, status="won", reason="duplicate")
    await sql(api, "UPDATE payments SET open_disputes = 1 WHERE id = $1", paid["id"])
    await sql(api, "UPDATE refunds SET hold = 'payment_disputed' WHERE id = $1", made["id"])
    client = await signed_in(browser, api, "approver1")
    page = await client.get(f"/console/refunds/{made['id']}")
    assert page.status_code == 200
    assert_strict(page)
    text = text_of(page.text)
    assert "Held: the payment is disputed" in text
    act = text_of(section(page.text, "act"))
    assert "It cannot be approved while the payment has an open dispute" in act
    assert "payment_disputed" in act
    assert ">Approve</button>" not in page.text
    assert ">Reject</button>" in page.text  # a held refund may still be turned down
    disputes = text_of(section(page.text, "disputes"))
    assert "du_held" in disputes and dispute_id in disputes and "¥50,000" in disputes
    assert due.strftime("%Y-%m-%dT%H:%M:%SZ") in disputes
    assert "du_old" in disputes and "won" in disputes and "duplicate" in disputes
    assert "dispute opened on the payment: 50000 JPY (fraudulent)" in text  # the timeline
    # The domain refuses it all the same; the page says why, with the code.
    refused = await client.post(
        f"/console/refunds/{made['id']}/approve",
        data={"csrf_token": csrf_of(page.text), "note": "ok", "from": "refund"},
    )
    if refused.status_code == 303:
        refused = await client.get(refused.headers["location"].removeprefix("http://t"))
    assert "payment_disputed" in refused.text
    assert (await get_refund(api, made["id"]))["status"] == "pending_approval"


async def test_an_unheld_refund_of_a_disputed_payment_lists_its_disputes_only(api, browser):
    paid = await register(api)
    made = (await refund(api, paid["id"], 20_000)).json()
    await add_dispute(api, paid, "du_closed", 2_000, status="closed")
    client = await signed_in(browser, api, "approver1")
    page = (await client.get(f"/console/refunds/{made['id']}")).text
    assert "Held: the payment is disputed" not in page
    assert ">Approve</button>" in page
    assert 'id="disputes"' in page and "du_closed" in page


async def test_dispute_lines_of_a_run_read_as_disputes_with_their_payment(api, browser):
    paid = await register(api)
    dispute_id = await add_dispute(api, paid, "du_run", 5000)
    text = GENERIC + (
        ",,dispute,5000,JPY,,2026-11-27T09:00:00Z,,,,du_run,\n"
        f",,dispute,800,JPY,,2026-11-27T09:10:00Z,,,,,{paid['pse_payment_id']}\n"
    )
    service = api.container.reconciliations
    started = await service.start("fake_jp", "disputes.csv", None)
    run = await service.run(started.id, opener(text))
    client = await signed_in(browser, api, "ops")
    page = await client.get(f"/console/reconciliations/{run.id}")
    assert page.status_code == 200
    assert_strict(page)
    assert f'href="/console/reconciliations/{run.id}?outcome=dispute_matched#lines"' in page.text
    assert "A dispute's money taken back" in text_of(page.text)
    assert f'href="/console/refunds?q={paid["id"]}"' in page.text
    assert f'href="/console/refunds/{dispute_id}"' not in page.text
    assert "outcome-dispute_amount_mismatch" in page.text
    listed = await client.get(
        f"/console/reconciliations/{run.id}", params={"outcome": "dispute_amount_mismatch"}
    )
    assert "file 800 JPY, ours 5000 JPY" in text_of(listed.text)
    runs = text_of((await client.get("/console/reconciliations")).text)
    assert "disputes.csv" in runs


async def test_a_held_refund_in_the_inbox_offers_reject_only(api, browser):
    paid = await register(api)
    made = (await refund(api, paid["id"], 20_000)).json()
    free = (await refund(api, (await register(api))["id"], 20_000)).json()
    await add_dispute(api, paid, "du_inbox", 50_000)
    await sql(api, "UPDATE payments SET open_disputes = 1 WHERE id = $1", paid["id"])
    await sql(api, "UPDATE refunds SET hold = 'payment_disputed' WHERE id = $1", made["id"])
    client = await signed_in(browser, api, "approver1")
    page = (await client.get("/console/approvals")).text
    held = card_of(page, made["id"])
    assert "Held: the payment is disputed." in text_of(held)
    assert ">Approve</button>" not in held and ">Reject</button>" in held
    assert f'action="/console/refunds/{made["id"]}/reject"' in held
    assert ">Approve</button>" in card_of(page, free["id"])
