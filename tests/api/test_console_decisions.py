"""The console's approvals inbox, refund page and home figures over HTTP (no
browser): what each key sees, the actions a refund's status and the key's role
allow, forms shown again with what was typed, and the same service calls,
errors and audit records as the API."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from typing import Any

import pytest

from app.domain.pse import PseRefund, PseRefundState
from app.services.console_results import RefundAction
from tests.api import test_console
from tests.api.helpers import get_refund, refund, register
from tests.api.test_console import csrf_of, signed_in

pytestmark = pytest.mark.postgres

browser = test_console.browser


async def requested(api, value: int, *, who: str = "store", **payment: Any) -> dict[str, Any]:
    paid = await register(api, **payment)
    made = await refund(api, paid["id"], value, who=who)
    assert made.status_code == 201, made.text
    return made.json()


def text_of(page: str) -> str:
    """The page's words, tags removed, spaces collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page))).strip()


def card_of(page: str, refund_id: str) -> str:
    found = re.search(
        rf'<article class="card refund-card[^"]*" aria-labelledby="title-{refund_id}">'
        r"(.*?)</article>",
        page,
        re.S,
    )
    assert found, f"no card for {refund_id}"
    return found.group(1)


def buttons_of(page: str) -> set[str]:
    return set(re.findall(r"<button type=\"submit\"[^>]*>([^<]+)</button>", page)) - {"Sign out"}


async def post(client, path: str, token: str, *, source: str | None = None, **data: str):
    """A form of the console; `source` is the page it is on (its `from` field)."""
    fields = {"csrf_token": token, **data}
    if source is not None:
        fields["from"] = source
    return await client.post(f"/console{path}", data=fields)


# -- the approvals inbox -------------------------------------------------------------


async def test_the_inbox_lists_what_this_approver_decides_and_words_why(api, browser):
    big = await requested(api, 150_000, amount=200_000)  # above ¥100,000: levels (2, 1)
    own = await requested(api, 12_000, who="store_approver")
    risky = await requested(api, 3_000, risk_level="high")
    client = await signed_in(browser, api, "approver1")
    page = (await client.get("/console/approvals")).text

    inbox = page[page.index('id="inbox"') : page.index('id="blocked"')]
    assert [m for m in re.findall(r'aria-labelledby="title-(rf_\w+)"', inbox)] == [
        big["id"],
        own["id"],
        risky["id"],
    ]
    card = text_of(card_of(page, big["id"]))
    assert "¥150,000" in card and big["payment_id"] in card and "ORD-1001" in card
    assert (
        "Above the ¥100,000 tier, which asks for 2 approvals from different approvers, "
        "one of level 2 or above." in card
    )
    assert "Requires 2 approvals from different approvers, one of level 2 or above" in card
    # Level 1 may approve the big one but not veto it.
    assert buttons_of(card_of(page, big["id"])) == {"Approve"}
    assert "Rejecting it needs level 2" in card
    assert buttons_of(card_of(page, own["id"])) == {"Approve", "Reject"}
    risky_card = text_of(card_of(page, risky["id"]))
    assert "The payment is marked high-risk." in risky_card and "Risk high" in risky_card
    assert f'href="/console/refunds/{big["id"]}"' in page

    # The creator's key sees its own refund among those it cannot decide, and why.
    creator = await signed_in(browser, api, "store_approver")
    page = (await creator.get("/console/approvals")).text
    blocked = page[page.index('id="blocked"') :]
    assert own["id"] in blocked and own["id"] not in page[: page.index('id="blocked"')]
    assert "You created this refund" in text_of(card_of(page, own["id"]))
    assert "separation of duties" in text_of(card_of(page, own["id"]))


async def test_a_key_without_an_approval_level_sees_why_there_is_no_inbox(api, browser):
    await requested(api, 12_000)
    client = await signed_in(browser, api, "ops")
    page = await client.get("/console/approvals")
    assert page.status_code == 200
    words = text_of(page.text)
    assert "This key does not approve" in words
    assert "Approve</button>" not in page.text


async def test_the_inbox_pages_oldest_first(api, browser, monkeypatch):
    monkeypatch.setattr("app.console.pages.approvals.PAGE_SIZE", 2)
    made = [(await requested(api, 12_000))["id"] for _ in range(3)]
    client = await signed_in(browser, api, "approver1")
    first = (await client.get("/console/approvals")).text
    assert re.findall(r'aria-labelledby="title-(rf_\w+)"', first) == made[:2]
    following = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first)
    assert following
    second = (await client.get(html.unescape(following.group(1)))).text
    assert re.findall(r'aria-labelledby="title-(rf_\w+)"', second) == made[2:]
    assert ">First page</a>" in second
    refused = await client.get("/console/approvals", params={"cursor": "not-ours"})
    assert refused.status_code == 422 and "validation_error" in refused.text


async def test_approving_from_the_inbox_comes_back_to_it_with_the_outcome(api, browser):
    waiting = await requested(api, 12_000)
    client = await signed_in(browser, api, "approver1")
    token = csrf_of((await client.get("/console/approvals")).text)
    done = await post(
        client, f"/refunds/{waiting['id']}/approve", token, note="ok", source="approvals"
    )
    assert done.status_code == 303 and done.headers["location"] == "/console/approvals"
    page = (await client.get("/console/approvals")).text
    assert f"Refund {waiting['id']} approved" in text_of(page)
    await api.settle()
    assert (await get_refund(api, waiting["id"]))["approvals"][0]["note"] == "ok"
    await api.container.audit.flush()
    records = await api.container.audit.search(refund_id=waiting["id"], limit=50)
    decision = next(r for r in records if r.kind == "approval.decision")
    assert decision.actor == "approver1" and decision.data()["data"]["via"] == "console"


async def test_a_rejection_without_a_note_shows_the_form_again(api, browser):
    waiting = await requested(api, 12_000)
    client = await signed_in(browser, api, "approver1")
    token = csrf_of((await client.get("/console/approvals")).text)
    refused = await post(
        client, f"/refunds/{waiting['id']}/reject", token, note="  ", source="approvals"
    )
    assert refused.status_code == 422
    card = card_of(refused.text, waiting["id"])
    assert 'aria-invalid="true"' in card and "autofocus" in card
    words = text_of(refused.text)
    assert "A rejection needs a note: write why the refund is rejected." in words
    assert "validation_error" in words
    assert (await get_refund(api, waiting["id"]))["status"] == "pending_approval"

    done = await post(client, f"/refunds/{waiting['id']}/reject", token, note="duplicate order")
    assert (
        done.status_code == 303 and done.headers["location"] == f"/console/refunds/{waiting['id']}"
    )
    assert (await get_refund(api, waiting["id"]))["status"] == "rejected"


async def test_a_refused_decision_keeps_what_was_typed_and_says_the_rule(api, browser):
    big = await requested(api, 150_000, amount=200_000)
    client = await signed_in(browser, api, "approver1")
    token = csrf_of((await client.get(f"/console/refunds/{big['id']}")).text)
    # No Reject button for level 1 here; a form sent anyway meets the service's rule.
    refused = await post(client, f"/refunds/{big['id']}/reject", token, note="too much <b>")
    assert refused.status_code == 403
    assert "too much &lt;b&gt;</textarea>" in refused.text
    assert "approval_level_insufficient" in text_of(refused.text)
    assert "Rejecting this refund needs level 2; this approver has level 1." in text_of(
        refused.text
    )


async def test_the_creator_cannot_approve_its_own_refund(api, browser):
    own = await requested(api, 12_000, who="store_approver")
    client = await signed_in(browser, api, "store_approver")
    page = (await client.get(f"/console/refunds/{own['id']}")).text
    assert "You cannot approve it:" in text_of(page) and "Approve</button>" not in page
    token = csrf_of(page)
    refused = await post(client, f"/refunds/{own['id']}/approve", token)
    assert refused.status_code == 403
    words = text_of(refused.text)
    assert "The key that created this refund cannot decide on it." in words
    assert "self_approval_forbidden" in words


# -- one refund -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("approver2", {"Approve", "Reject"}),
        ("approver1", {"Approve"}),
        ("ops", {"Cancel"}),
        ("admin", {"Approve", "Reject", "Cancel"}),
    ],
)
async def test_the_refund_page_offers_exactly_what_the_status_and_role_allow(
    api, browser, who, expected
):
    big = await requested(api, 150_000, amount=200_000)
    client = await signed_in(browser, api, who)
    page = (await client.get(f"/console/refunds/{big['id']}")).text
    assert buttons_of(page) == expected
    viewer = await api.container.keys.authenticate(api.keys[who])
    detail = await api.container.console_queries.refund_detail(big["id"], viewer)
    names = {
        RefundAction.APPROVE: "Approve",
        RefundAction.REJECT: "Reject",
        RefundAction.CANCEL: "Cancel",
        RefundAction.SYNC: "Sync now",
        RefundAction.OFFLINE_PAYOUT: "Record offline payout",
        RefundAction.ACKNOWLEDGE: "Acknowledge",
    }
    assert {names[action] for action in detail.actions} == expected


async def test_the_refund_page_shows_the_refund_its_payment_and_timeline(api, browser):
    made = await requested(api, 12_000, amount=30_000)
    approver = await signed_in(browser, api, "approver1")
    token = csrf_of((await approver.get(f"/console/refunds/{made['id']}")).text)
    await post(approver, f"/refunds/{made['id']}/approve", token, note="looks right")
    await api.settle()
    page = await approver.get(f"/console/refunds/{made['id']}")
    assert page.status_code == 200 and 'aria-current="page"' in page.text
    words = text_of(page.text)
    sent = await get_refund(api, made["id"])
    assert sent["status"] == "pending" and sent["pse_refund_id"] in words
    for shown in ("¥12,000", "¥30,000", made["payment_id"], "ORD-1001", "fake_jp"):
        assert shown in words
    assert "Above the ¥10,000 tier, which asks for 1 approval." in words
    timeline = words[words.index("Timeline") :]
    for moved in (
        "pending_approval → approved: looks right",
        "approved → submitting",
        "submitting → pending",
        "approved at level 1: looks right",
    ):
        assert moved in timeline
    assert "refund.created" in timeline  # the store's event
    assert "approver1" in timeline


async def test_an_unknown_refund_is_a_404_page(api, browser):
    client = await signed_in(browser, api, "ops")
    page = await client.get("/console/refunds/rf_nope")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "No such refund" in page.text and "not_found" in page.text


async def test_sync_now_asks_the_pse_and_applies_its_answer(api, browser):
    made = await requested(api, 3_000)  # approved by the policy, sent to the PSE
    await api.settle()
    sent = await get_refund(api, made["id"])
    assert sent["status"] == "pending"
    reference = api.gateway.created[-1].reference
    held = api.gateway.refunds[reference]
    api.gateway.refunds[reference] = PseRefund(
        pse_refund_id=held.pse_refund_id,
        state=PseRefundState.SUCCEEDED,
        amount=held.amount,
        reference=held.reference,
        pse_payment_ids=held.pse_payment_ids,
    )
    client = await signed_in(browser, api, "ops")
    page = (await client.get(f"/console/refunds/{made['id']}")).text
    assert buttons_of(page) == {"Sync now"}
    done = await post(client, f"/refunds/{made['id']}/sync", csrf_of(page))
    assert done.status_code == 303
    assert (await get_refund(api, made["id"]))["status"] == "succeeded"
    after = (await client.get(f"/console/refunds/{made['id']}")).text
    assert f"Asked the PSE about refund {made['id']}: it is succeeded." in text_of(after)
    assert buttons_of(after) == set()


async def test_an_offline_payout_needs_its_reference_and_day(api, browser):
    old = api.clock.now() - timedelta(days=200)
    made = await requested(api, 3_000, captured_at=old.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert made["status"] == "offline_required"
    client = await signed_in(browser, api, "ops")
    page = (await client.get(f"/console/refunds/{made['id']}")).text
    assert buttons_of(page) == {"Cancel", "Record offline payout"}
    token = csrf_of(page)
    path = f"/refunds/{made['id']}/offline-payout"
    refused = await post(client, path, token, reference="BANK-1", paid_on="27/11/2026")
    assert refused.status_code == 422
    assert 'value="BANK-1"' in refused.text and 'value="27/11/2026"' in refused.text
    assert "The paid-at date must be a day such as 2026-11-27" in text_of(refused.text)
    refused = await post(client, path, token, reference=" ", paid_on="2026-11-26")
    assert refused.status_code == 422 and "The payout reference is required" in refused.text
    done = await post(client, path, token, reference="BANK-1", paid_on="2026-11-26")
    assert done.status_code == 303
    paid = await get_refund(api, made["id"])
    assert paid["status"] == "offline_paid" and paid["offline_reference"] == "BANK-1"
    assert paid["offline_paid_at"] == "2026-11-26T00:00:00Z"


async def test_acknowledging_a_flag_needs_a_note(api, browser):
    made = await requested(api, 3_000)
    await api.settle()
    async with api.container.deps.uow() as uow:
        payment, held = await _locked(uow, made["id"])
        held.flag("the PSE reported a different amount", api.clock.now())
        await _save(api, uow, payment, held)
        await uow.commit()
    client = await signed_in(browser, api, "ops")
    page = (await client.get(f"/console/refunds/{made['id']}")).text
    assert "Flagged for attention" in text_of(page)
    assert "Acknowledge" in buttons_of(page)
    token = csrf_of(page)
    refused = await post(client, f"/refunds/{made['id']}/acknowledge", token, note="")
    assert refused.status_code == 422
    assert "An acknowledgement needs a note" in text_of(refused.text)
    done = await post(client, f"/refunds/{made['id']}/acknowledge", token, note="PSE confirmed")
    assert done.status_code == 303
    assert (await get_refund(api, made["id"])).get("attention") is None


async def _locked(uow, refund_id: str):
    from app.services.context import lock_refund

    return await lock_refund(uow, refund_id)


async def _save(api, uow, payment, refund) -> None:
    from app.services.context import save

    await save(api.container.deps, uow, payment, refund)


async def test_an_approver_cannot_cancel_and_is_told_why(api, browser):
    waiting = await requested(api, 12_000)
    client = await signed_in(browser, api, "approver1")
    token = csrf_of((await client.get("/console")).text)
    done = await post(client, f"/refunds/{waiting['id']}/cancel", token)
    assert done.status_code == 403
    assert "This needs one of the roles store, ops" in text_of(done.text)
    assert (await get_refund(api, waiting["id"]))["status"] == "pending_approval"


# -- home ---------------------------------------------------------------------------------


async def test_home_shows_the_inbox_time_to_refund_and_the_refund_rate(api, browser):
    made = await requested(api, 3_000, amount=20_000)
    await api.settle()
    await requested(api, 12_000)  # waits for approval
    api.clock.advance(minutes=90)
    sent = await get_refund(api, made["id"])
    body = json.dumps(
        {
            "id": "evt_home_1",
            "type": "refund.succeeded",
            "refund": {
                "id": sent["pse_refund_id"],
                "state": "succeeded",
                "reference": made["id"],
                "amount": 3000,
                "currency": "JPY",
            },
        }
    )
    r = await api.client.post(
        "/v1/webhooks/fake_jp",
        content=body,
        headers={"x-fake-signature": "ok", "content-type": "application/json"},
    )
    assert r.json()["status"] == "applied", r.text
    client = await signed_in(browser, api, "approver1")
    page = (await client.get("/console")).text
    assert re.search(r'<span class="count">1</span>\s*<span class="label">Waiting for you', page)
    speed = text_of(page[page.index('id="time-to-refund"') : page.index('id="refund-rate"')])
    assert "fake_jp 1 1 h 30 min 1 h 30 min 1 1 h 30 min 1 h 30 min" in speed
    rate = text_of(page[page.index('id="refund-rate"') :])
    # Both refunds count (one succeeded, one waiting): ¥15,000 of ¥70,000 paid.
    assert "JPY 21.43 % of the amount (¥15,000 of ¥70,000)" in rate
    assert "100.00 % by count (2 refunds, 2 payments)" in rate
    ops = await signed_in(browser, api, "ops")
    assert "Waiting for you" not in (await ops.get("/console")).text
