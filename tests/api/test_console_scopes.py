"""The console for a key scoped to PSE accounts (over HTTP, no browser): an
approver or ops key of one shop sees only its accounts' refunds in every
list, count and page, and gets the console's not-found page for the others;
its buttons cannot act on them either. Unscoped keys see everything."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.api import test_console
from tests.api.helpers import get_refund, refund, register
from tests.api.test_console import csrf_of, signed_in
from tests.api.test_console_decisions import text_of

pytestmark = pytest.mark.postgres

browser = test_console.browser

MINE = "fake_jp"
THEIRS = "other"


@pytest.fixture
async def scoped(api):
    for name, roles, level in (("approver_a", ["approver"], 3), ("ops_a", ["ops"], None)):
        _key, secret = await api.container.keys.create(name, roles, level, [MINE])
        api.keys[name] = secret
    return api


async def requested(api, account: str, value: int, **payment: Any) -> dict[str, Any]:
    paid = await register(api, pse_account=account, **payment)
    made = await refund(api, paid["id"], value)
    assert made.status_code == 201, made.text
    return made.json()


async def sql(api, statement: str, *args: Any) -> None:
    async with api.container.pool.acquire() as conn:
        await conn.execute(statement, *args)


def count_of(page: str, label: str) -> int:
    found = re.search(
        r'<span class="count">([\d,]+)\+?</span>\s*<span class="label">' + label, page
    )
    assert found, f"no tile {label}"
    return int(found.group(1).replace(",", ""))


async def test_a_scoped_approver_sees_only_its_accounts_refunds_everywhere(scoped, browser):
    api = scoped
    mine = await requested(api, MINE, 20_000)  # waits for approval
    theirs = await requested(api, THEIRS, 20_000)
    client = await signed_in(browser, api, "approver_a")
    approvals = (await client.get("/console/approvals")).text
    assert mine["id"] in approvals and theirs["id"] not in approvals
    listed = (await client.get("/console/refunds")).text
    assert mine["id"] in listed and theirs["id"] not in listed
    # The search's account choice holds its accounts only; another is refused.
    assert f'value="{THEIRS}"' not in listed
    refused = await client.get("/console/refunds", params={"pse_account": THEIRS})
    assert refused.status_code == 422 and theirs["id"] not in refused.text
    searched = await client.get("/console/refunds", params={"q": theirs["payment_id"]})
    assert theirs["id"] not in searched.text
    export = await client.get("/console/refunds.csv")
    assert mine["id"] in export.text and theirs["id"] not in export.text
    home = (await client.get("/console")).text
    assert count_of(home, "Waiting for you") == 1
    assert count_of(home, "Waiting for approval") == 1
    today = text_of(home[home.index('id="today"') : home.index('id="time-to-refund"')])
    assert "All 1" in today
    # An unscoped approver of the same level sees both.
    everyone = await signed_in(browser, api, "approver3")
    home = (await everyone.get("/console")).text
    assert count_of(home, "Waiting for you") == 2
    assert count_of(home, "Waiting for approval") == 2
    assert theirs["id"] in (await everyone.get("/console/refunds")).text


async def test_another_accounts_refund_is_the_not_found_page_and_its_buttons_act_on_nothing(
    scoped, browser
):
    api = scoped
    theirs = await requested(api, THEIRS, 20_000)
    client = await signed_in(browser, api, "approver_a")
    page = await client.get(f"/console/refunds/{theirs['id']}")
    unknown = await client.get("/console/refunds/rf_nope")
    assert page.status_code == unknown.status_code == 404
    assert "No such refund" in page.text and "not_found" in page.text
    assert theirs["payment_id"] not in page.text
    token = csrf_of((await client.get("/console/approvals")).text)
    for action, data in (("approve", {"note": "ok"}), ("reject", {"note": "no"})):
        answer = await client.post(
            f"/console/refunds/{theirs['id']}/{action}", data={"csrf_token": token, **data}
        )
        assert answer.status_code == 404, (action, answer.status_code)
        assert "No such refund" in answer.text
    ops = await signed_in(browser, api, "ops_a")
    token = csrf_of((await ops.get("/console/attention")).text)
    for action, data in (
        ("cancel", {}),
        ("acknowledge", {"note": "seen"}),
        ("offline-payout", {"reference": "BANK-1", "paid_on": "2026-11-27"}),
        ("sync", {}),
    ):
        answer = await ops.post(
            f"/console/refunds/{theirs['id']}/{action}", data={"csrf_token": token, **data}
        )
        if answer.status_code == 303:  # a message for the refund's page, which is not found
            answer = await ops.get(answer.headers["location"].removeprefix("http://t"))
        assert answer.status_code == 404, (action, answer.text[:300])
    after = await get_refund(api, theirs["id"])
    assert after["status"] == "pending_approval" and after["approvals"] == []


async def test_scoped_ops_see_only_their_accounts_attention_queues_and_runs(scoped, browser):
    api = scoped
    mine = await requested(api, MINE, 3_000, payment_method="konbini")  # offline_required
    theirs = await requested(api, THEIRS, 3_000, payment_method="konbini")
    await api.settle()
    await sql(api, "UPDATE refunds SET attention = 'look', attention_at = now()")
    await sql(api, "UPDATE events SET delivery_status = 'failed'")
    their_run = await api.container.reconciliations.start(THEIRS, "theirs.csv", None)
    my_run = await api.container.reconciliations.start(MINE, "mine.csv", None)
    client = await signed_in(browser, api, "ops_a")
    page = (await client.get("/console/attention")).text
    assert mine["id"] in page and theirs["id"] not in page
    assert re.search(r'Needs attention <span class="badge busy">1</span>', page)
    their_events = (
        await api.client.get(
            "/v1/events", params={"refund_id": theirs["id"]}, headers=api.auth("ops")
        )
    ).json()["data"]
    assert their_events
    for event in their_events:
        assert event["id"] not in page
    home = (await client.get("/console")).text
    assert count_of(home, "Offline payout") == 1 and count_of(home, "Needs attention") == 1
    runs = (await client.get("/console/reconciliations")).text
    assert my_run.id in runs and their_run.id not in runs
    assert (await client.get(f"/console/reconciliations/{their_run.id}")).status_code == 404
    report = await client.get(f"/console/reconciliations/{their_run.id}/report.csv")
    assert report.status_code == 404
    assert (await client.get(f"/console/reconciliations/{my_run.id}")).status_code == 200
    # Redelivering another account's event: as an unknown event.
    token = csrf_of(page)
    await client.post(
        f"/console/attention/deliveries/{their_events[0]['id']}/redeliver",
        data={"csrf_token": token},
    )
    shown = (await client.get("/console/attention")).text
    assert "Code not_found" in text_of(shown)
    # The unscoped ops key sees both accounts.
    everyone = await signed_in(browser, api, "ops")
    page = (await everyone.get("/console/attention")).text
    assert mine["id"] in page and theirs["id"] in page
    assert their_run.id in (await everyone.get("/console/reconciliations")).text
