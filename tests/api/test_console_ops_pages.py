"""The console's refund search and export, attention queues and
reconciliations over HTTP (no browser): streaming headers, filters refused
with a sentence and its code, roles, CSRF, and the same service calls as the API."""

from __future__ import annotations

import csv
import html
import io
import re
from typing import Any

import pytest

from app.console.paging import encode_cursor
from app.domain.records import DeliveryStatus
from app.services.refund_csv import CSV_HEADER
from tests.api import test_console
from tests.api.helpers import refund, register
from tests.api.test_console import csrf_of, signed_in
from tests.integration.test_reconciliation import reconcile

pytestmark = pytest.mark.postgres

# Signed-in clients, each with its own cookie jar (the console tests' fixture).
browser = test_console.browser

HEADER = (
    "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
    "settlement_amount,settlement_currency\n"
)


async def requested(api, value: int, **payment: Any) -> dict[str, Any]:
    paid = await register(api, **payment)
    made = await refund(api, paid["id"], value)
    assert made.status_code == 201, made.text
    return made.json()


async def sql(api, statement: str, *args: Any) -> None:
    async with api.container.pool.acquire() as conn:
        await conn.execute(statement, *args)


async def failed_event(api, refund_id: str) -> str:
    events = (
        await api.client.get("/v1/events", params={"refund_id": refund_id}, headers=api.auth("ops"))
    ).json()["data"]
    event_id = events[-1]["id"]
    await sql(api, "UPDATE events SET delivery_status = 'failed' WHERE id = $1", event_id)
    return event_id


def message_of(page: str) -> str:
    found = re.search(r'<div class="message error" role="alert">(.*?)</div>', page, re.S)
    assert found, "the page shows no error"
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1))).strip()
    return html.unescape(text)


# -- refunds: search and export ------------------------------------------------------


async def test_the_export_streams_the_filtered_set_as_a_csv_attachment(api, browser):
    yen = [await requested(api, 3_000 + i, order_id=f"ORD-{i}") for i in range(3)]
    await requested(api, 1_500, currency="USD", amount=5_000)
    client = await signed_in(browser, api, "approver1")
    response = await client.get("/console/refunds.csv", params={"currency": "JPY"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = response.headers["content-disposition"]
    assert re.fullmatch(r'attachment; filename="refunds-\d{8}T\d{6}Z\.csv"', disposition)
    assert response.headers["cache-control"] == "no-store"
    assert "content-length" not in response.headers  # streamed, not built in memory
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == list(CSV_HEADER)
    assert [row[0] for row in rows[1:]] == [r["id"] for r in reversed(yen)]
    assert {row[6] for row in rows[1:]} == {"JPY"}


async def test_the_list_filters_and_links_its_export_and_next_page(api, browser):
    made = [await requested(api, 3_000, order_id="ORD-PAGE") for _ in range(2)]
    made.append(await requested(api, 12_000, order_id="ORD-PAGE"))  # pending_approval
    other = await requested(api, 3_000, order_id="ORD-ELSE")
    await api.settle()
    client = await signed_in(browser, api, "ops")
    filters = {"q": "ORD-PAGE", "status": ["pending_approval", "pending"]}
    page = await client.get("/console/refunds", params=filters)
    assert page.status_code == 200
    for found in made:
        assert f'href="/console/refunds/{found["id"]}"' in page.text
    assert other["id"] not in page.text
    assert "¥3,000" in page.text
    assert (
        'href="/console/refunds.csv?status=pending_approval&amp;status=pending&amp;q=ORD-PAGE"'
        in page.text
    )
    assert 'value="pending" checked' in page.text and 'value="ORD-PAGE"' in page.text
    assert "¥12,000" in page.text


async def test_the_list_pages_with_cursor_links(api, browser, monkeypatch):
    monkeypatch.setattr("app.console.pages.refunds.PAGE_SIZE", 2)
    made = [(await requested(api, 3_000))["id"] for _ in range(3)]
    client = await signed_in(browser, api, "ops")
    first = await client.get("/console/refunds")
    assert made[2] in first.text and made[1] in first.text and made[0] not in first.text
    next_url = re.search(r'<a href="([^"]+)" rel="next">', first.text).group(1)
    second = await client.get(next_url.replace("&amp;", "&"))
    assert made[0] in second.text and made[1] not in second.text
    assert 'rel="next"' not in second.text and ">First page</a>" in second.text


@pytest.mark.parametrize(
    ("query", "sentence", "code"),
    [
        ({"amount_min": "10"}, "An amount range needs its currency.", "validation_error"),
        (
            {"currency": "XXX"},
            "'XXX' is not an ISO 4217 currency code.",
            "validation_error",
        ),
        (
            {"currency": "JPY", "amount_min": "12.5"},
            "The smallest amount has more decimals than JPY has (0).",
            "validation_error",
        ),
        (
            {"currency": "USD", "amount_min": "20", "amount_max": "10"},
            "The amount range ends below where it starts.",
            "validation_error",
        ),
        ({"status": "lost"}, "There is no status 'lost'; the statuses are", "validation_error"),
        (
            {"created_from": "yesterday"},
            "Created from must be a day such as 2026-11-27",
            "validation_error",
        ),
        (
            {"created_from": "2026-11-28", "created_to": "2026-11-01"},
            "The created range ends before it starts.",
            "validation_error",
        ),
        (
            {"pse_account": "nope"},
            "No PSE account named 'nope' is configured.",
            "unknown_pse_account",
        ),
        ({"cursor": "garbage"}, "This page link is not one the console gave", "validation_error"),
    ],
)
async def test_a_bad_filter_is_a_sentence_with_its_code(api, browser, query, sentence, code):
    client = await signed_in(browser, api, "ops")
    # The export is of the whole set: it reads no page cursor.
    paths = ["/console/refunds"] + ([] if "cursor" in query else ["/console/refunds.csv"])
    for path in paths:
        response = await client.get(path, params=query)
        assert response.status_code == 422, path
        # The export's refusal is the page again, never a CSV cut short.
        assert response.headers["content-type"].startswith("text/html"), path
        shown = message_of(response.text)
        assert sentence in shown and f"Code {code}" in shown, shown
        assert '<form method="get" action="/console/refunds"' in response.text


# -- attention ---------------------------------------------------------------------------


async def test_the_attention_page_lists_every_queue_with_its_count(api, browser):
    offline = await requested(api, 3_000, payment_method="konbini")
    flagged = await requested(api, 3_000)
    await api.settle()
    await sql(
        api,
        "UPDATE refunds SET attention = 'The PSE reports it failed', attention_at = now() "
        "WHERE id = $1",
        flagged["id"],
    )
    event_id = await failed_event(api, flagged["id"])
    client = await signed_in(browser, api, "ops")
    page = await client.get("/console/attention")
    assert page.status_code == 200
    text = page.text
    for key in ("stale", "unknown", "needs_attention", "offline_required", "failed_deliveries"):
        assert f'<section id="{key}"' in text
    assert re.search(r'Needs attention <span class="badge busy">1</span>', text)
    assert "The PSE reports it failed" in text
    assert f'href="/console/refunds/{offline["id"]}">Record offline payout' in text
    assert f'href="/console/refunds/{flagged["id"]}">Acknowledge' in text
    assert f'action="/console/attention/deliveries/{event_id}/redeliver"' in text


async def test_ops_redeliver_a_failed_event_through_the_service(api, browser):
    made = await requested(api, 3_000)
    event_id = await failed_event(api, made["id"])
    client = await signed_in(browser, api, "ops")
    token = csrf_of((await client.get("/console/attention")).text)
    done = await client.post(
        f"/console/attention/deliveries/{event_id}/redeliver", data={"csrf_token": token}
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/console/attention#failed_deliveries"
    event = await api.container.events.get(event_id)
    assert event.delivery_status is DeliveryStatus.PENDING
    page = await client.get("/console/attention")
    assert f"Event {event_id} (refund.created) is queued for delivery to the store again." in (
        page.text
    )
    assert f"/deliveries/{event_id}/redeliver" not in page.text
    await api.container.audit.flush()
    records = await api.container.audit.search(refund_id=made["id"], limit=200)
    (record,) = [r for r in records if r.kind == "event.redelivered"]
    assert record.actor == "ops" and record.data()["data"]["via"] == "console"


async def test_an_approver_cannot_redeliver_and_is_told_why(api, browser):
    made = await requested(api, 3_000)
    event_id = await failed_event(api, made["id"])
    client = await signed_in(browser, api, "approver1")
    page = await client.get("/console/attention")
    assert "Redelivery needs the ops role" in page.text
    assert "/redeliver" not in page.text
    refused = await client.post(
        f"/console/attention/deliveries/{event_id}/redeliver",
        data={"csrf_token": csrf_of(page.text)},
    )
    assert refused.status_code == 303
    shown = message_of((await client.get("/console/attention")).text)
    assert "This needs one of the roles ops; this key is approver (level 1)." in shown
    assert "Code forbidden" in shown
    assert (await api.container.events.get(event_id)).delivery_status is DeliveryStatus.FAILED


async def test_redelivering_an_unknown_event_says_so(api, browser):
    client = await signed_in(browser, api, "ops")
    token = csrf_of((await client.get("/console/attention")).text)
    await client.post(
        "/console/attention/deliveries/evt_nope/redeliver", data={"csrf_token": token}
    )
    shown = message_of((await client.get("/console/attention")).text)
    assert "No event evt_nope." in shown and "Code not_found" in shown


# -- reconciliations ------------------------------------------------------------------------


async def upload(client, text: str, token: str, account: str = "fake_jp", **extra: Any):
    return await client.post(
        "/console/reconciliations",
        data={"csrf_token": token, "pse_account": account, **extra},
        files={"file": ("settlement.csv", text.encode(), "text/csv")},
    )


async def test_ops_upload_a_file_and_read_its_run_and_report(api, browser):
    made = await requested(api, 3_000)
    text = HEADER + (
        f",{made['id']},refund,2999,JPY,pending,2026-11-27T08:00:00Z,,,\n"
        "re_ghost,,refund,700,JPY,succeeded,2026-11-27T08:05:00Z,,,\n"
    )
    client = await signed_in(browser, api, "ops")
    token = csrf_of((await client.get("/console/reconciliations")).text)
    sent = await upload(client, text, token)
    assert sent.status_code == 303, sent.text
    location = sent.headers["location"]
    run_id = location.rsplit("/", 1)[1]
    assert location == f"/console/reconciliations/{run_id}" and run_id.startswith("rec_")
    await api.container.jobs.drain()
    page = await client.get(location)
    assert "The file settlement.csv was received" in page.text
    assert re.search(r">amount_mismatch</a></th>\s*<td class=\"num\">1</td>", page.text)
    assert re.search(r">missing_in_service</a></th>\s*<td class=\"num\">1</td>", page.text)
    assert "re_ghost" in page.text and "¥2,999" in page.text
    only = await client.get(location, params={"outcome": "missing_in_service"})
    assert "re_ghost" in only.text and "¥2,999" not in only.text
    ours = await client.get(f"{location}/report.csv")
    assert ours.status_code == 200
    assert ours.headers["content-type"] == "text/csv; charset=utf-8"
    assert ours.headers["content-disposition"] == f'attachment; filename="{run_id}.csv"'
    theirs = await api.client.get(
        f"/v1/reconciliations/{run_id}/report.csv", headers=api.auth("ops")
    )
    assert ours.content == theirs.content  # one code path: the same bytes
    assert len(ours.text.splitlines()) == 3
    listed = await client.get("/console/reconciliations")
    assert f'href="/console/reconciliations/{run_id}"' in listed.text


async def test_a_settlement_file_past_the_body_limit_is_accepted(api, browser):
    # Lines of another type are skipped: a large file that reconciles nothing.
    text = HEADER + "ch_1,,charge,9000,JPY,succeeded,2026-11-27T08:40:00Z,,,\n" * 25_000
    assert len(text) > api.container.settings.max_body_bytes
    client = await signed_in(browser, api, "admin")
    token = csrf_of((await client.get("/console/reconciliations")).text)
    sent = await upload(client, text, token)
    assert sent.status_code == 303, sent.text[:500]
    await api.container.jobs.drain()
    run = await api.container.reconciliations.get(sent.headers["location"].rsplit("/", 1)[1])
    assert run.status == "completed" and run.rows_total == 0


async def test_reconciliations_need_the_ops_role_as_through_the_api(api, browser):
    client = await signed_in(browser, api, "approver2")
    page = await client.get("/console/reconciliations")
    assert page.status_code == 403
    assert "This needs one of the roles ops; this key is approver (level 2)." in page.text
    assert (await client.get("/console/reconciliations/rec_x/report.csv")).status_code == 403
    assert (await api.container.console_queries.reconciliations()).items == []


@pytest.mark.parametrize(
    ("account", "file", "sentence", "code"),
    [
        ("nope", HEADER, "No PSE account named 'nope' is configured.", "unknown_pse_account"),
        ("", HEADER, "Choose the PSE account the settlement file comes from.", "validation_error"),
        ("fake_jp", "", "The file 'settlement.csv' is empty.", "validation_error"),
    ],
)
async def test_a_refused_upload_says_why(api, browser, account, file, sentence, code):
    client = await signed_in(browser, api, "ops")
    token = csrf_of((await client.get("/console/reconciliations")).text)
    refused = await upload(client, file, token, account=account)
    assert refused.status_code == 303
    shown = message_of((await client.get("/console/reconciliations")).text)
    assert sentence in shown and f"Code {code}" in shown


async def test_the_upload_and_redeliver_forms_need_their_csrf_token(api, browser):
    made = await requested(api, 3_000)
    event_id = await failed_event(api, made["id"])
    client = await signed_in(browser, api, "ops")
    forged = await upload(client, HEADER, "not-the-token")
    assert forged.status_code == 403
    assert "Nothing was changed" in forged.text and "csrf_failed" in forged.text
    no_token = await client.post(f"/console/attention/deliveries/{event_id}/redeliver")
    assert no_token.status_code == 403 and "csrf_failed" in no_token.text
    assert (await api.container.console_queries.reconciliations()).items == []
    assert (await api.container.events.get(event_id)).delivery_status is DeliveryStatus.FAILED


async def test_a_run_page_refuses_a_bad_outcome_with_a_sentence(api, browser):
    started = await api.container.reconciliations.start("fake_jp", "x.csv", None)
    client = await signed_in(browser, api, "ops")
    processing = await client.get(f"/console/reconciliations/{started.id}")
    assert processing.status_code == 200
    assert "<strong>Processing</strong>" in processing.text
    assert 'data-reload-after="2"' in processing.text
    assert f'<a href="/console/reconciliations/{started.id}">Reload</a>' in processing.text
    bad = await client.get(f"/console/reconciliations/{started.id}", params={"outcome": "lost"})
    assert bad.status_code == 422
    assert "Outcome must be one of: matched" in message_of(bad.text)
    missing = await client.get("/console/reconciliations/rec_nope")
    assert missing.status_code == 404 and "No reconciliation rec_nope." in missing.text
    assert (await client.get("/console/reconciliations/rec_nope/report.csv")).status_code == 404


async def test_the_fx_report_filters_are_read_and_refused_with_a_sentence(api, browser):
    client = await signed_in(browser, api, "ops")
    fine = await client.get(
        "/console/reconciliations", params={"fx_from": "2026-11-01", "fx_currency": "usd"}
    )
    assert fine.status_code == 200 and 'value="USD"' in fine.text
    bad = await client.get("/console/reconciliations", params={"fx_currency": "XXX"})
    assert bad.status_code == 422
    assert "'XXX' is not an ISO 4217 currency code." in message_of(bad.text)


async def test_a_page_link_of_lines_the_console_did_not_write_is_a_sentence(api, browser):
    done = await reconcile(api, HEADER + "re_1,,refund,1,JPY,succeeded,,,,\n")
    client = await signed_in(browser, api, "ops")
    # Well-formed links to ids that are no line's: digits int() refuses or
    # misreads, and one past any 64-bit id.
    for after in ["\u00b2", "\u0661\u0662", "9" * 19, "x"]:
        response = await client.get(
            f"/console/reconciliations/{done.id}", params={"cursor": encode_cursor(after)}
        )
        assert response.status_code == 422, (after, response.text[:300])
        assert "Code validation_error" in message_of(response.text)
    page = await client.get(
        f"/console/reconciliations/{done.id}", params={"cursor": encode_cursor("0")}
    )
    assert page.status_code == 200
