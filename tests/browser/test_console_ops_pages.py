"""Refund search and export, the attention queues and reconciliations in
headless Chromium: what a person does with the pages, end to end."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.domain.models import Actor, RefundReason
from app.domain.records import DeliveryStatus
from app.services.payments import RegisterPayment
from app.services.refund_csv import CSV_HEADER
from app.services.refunds import RequestRefund
from tests.browser.conftest import ConsoleServer, screenshot, sign_in

pytestmark = pytest.mark.postgres

# Another account than the other browser tests': a settlement file's period
# then holds only the refunds made here.
ACCOUNT = "other"
HEADER = (
    "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
    "settlement_amount,settlement_currency\n"
)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8].upper()}"


async def _refunds(
    server: ConsoleServer,
    order_id: str,
    amounts: list[tuple[int, str]],
    *,
    account: str = "fake_jp",
) -> list[str]:
    """Refunds of `amounts` ((minor units, currency)), one payment each, all of
    one order; those the policy approves are sent to the (fake) PSE."""
    store = Actor(server.key_ids["store"], "store")
    made = []
    for amount, currency in amounts:
        paid, _new = await server.container.payments.register(
            RegisterPayment(
                account,
                f"pay_{uuid.uuid4().hex[:12]}",
                order_id,
                amount * 10,
                currency,
                server.clock.now() - timedelta(days=2),
            ),
            store.id,
        )
        refund = await server.container.refunds.request(
            RequestRefund(paid.id, amount, RefundReason.REQUESTED_BY_CUSTOMER), store
        )
        made.append(refund.id)
    await server.container.submitter.drain()
    return made


async def _sql(server: ConsoleServer, statement: str, *args: Any) -> Any:
    async with server.container.pool.acquire() as conn:
        return await conn.fetchval(statement, *args)


def _result_ids(page: Any) -> list[str]:
    return page.locator("section[aria-labelledby=results] tbody th[scope=row]").all_inner_texts()


# -- refunds ------------------------------------------------------------------------


def test_filters_narrow_the_list_and_a_bad_one_is_explained(page, console_server):
    order = _unique("ORD")
    small, large, dollars = console_server.run(
        _refunds(console_server, order, [(3_000, "JPY"), (12_000, "JPY"), (1_500, "USD")])
    )
    sign_in(page, console_server.keys["approver1"])
    page.get_by_role("link", name="Refunds", exact=True).click()
    assert page.get_by_role("heading", name="Refunds", level=1).is_visible()

    page.get_by_label("Payment or order id").fill(order)
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    assert f"q={order}" in page.url  # the search is its address
    assert _result_ids(page) == [dollars, large, small]  # newest first
    row = page.locator("tbody tr", has_text=dollars)
    assert row.get_by_text("$15.00").is_visible()
    assert page.locator("tbody tr", has_text=large).get_by_text("¥12,000").is_visible()

    page.get_by_label("pending_approval").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    assert _result_ids(page) == [dollars, large]

    page.get_by_label("Currency").fill("JPY")
    page.get_by_label("Amount from").fill("10000")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    assert _result_ids(page) == [large]
    link = page.get_by_role("link", name=large)
    assert link.get_attribute("href") == f"/console/refunds/{large}"
    screenshot(page, "refunds-filtered-1280")

    page.get_by_label("Currency").fill("")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    alert = page.get_by_role("alert")
    assert "An amount range needs its currency." in alert.inner_text()
    assert "validation_error" in alert.inner_text()
    assert page.get_by_label("Amount from").input_value() == "10000"  # kept, to correct
    screenshot(page, "refunds-bad-filter-1280")


def test_the_csv_export_holds_exactly_the_filtered_refunds(page, console_server, tmp_path):
    order = _unique("EXP")
    made = console_server.run(
        _refunds(console_server, order, [(3_000, "JPY"), (4_000, "JPY"), (1_500, "USD")])
    )
    console_server.run(_refunds(console_server, _unique("NOT"), [(3_000, "JPY")]))
    sign_in(page, console_server.keys["ops"])
    page.goto(f"/console/refunds?q={order}&currency=JPY")
    assert _result_ids(page) == [made[1], made[0]]
    with page.expect_download() as started:
        page.get_by_role("link", name="Export CSV").click()
    download = started.value
    assert re.fullmatch(r"refunds-\d{8}T\d{6}Z\.csv", download.suggested_filename)
    saved = Path(tmp_path) / download.suggested_filename
    download.save_as(saved)
    rows = list(csv.reader(io.StringIO(saved.read_text(encoding="utf-8"))))
    assert rows[0] == list(CSV_HEADER)
    by_column = [dict(zip(CSV_HEADER, row, strict=True)) for row in rows[1:]]
    assert [r["id"] for r in by_column] == [made[1], made[0]]
    assert {(r["order_id"], r["currency"]) for r in by_column} == {(order, "JPY")}
    assert [r["amount"] for r in by_column] == ["4000", "3000"]
    screenshot(page, "refunds-export-1280")


# -- attention ------------------------------------------------------------------------


def test_attention_lists_a_flagged_refund_and_redeliver_requeues_a_failed_delivery(
    new_page, console_server
):
    flagged, offline = console_server.run(
        _refunds(console_server, _unique("ATT"), [(3_000, "JPY"), (2_000, "JPY")])
    )
    console_server.run(
        _sql(
            console_server,
            "UPDATE refunds SET attention = 'The PSE reports a second refund of this payment',"
            " attention_at = now() WHERE id = $1",
            flagged,
        )
    )
    console_server.run(
        _sql(
            console_server, "UPDATE refunds SET status = 'offline_required' WHERE id = $1", offline
        )
    )
    event_id = console_server.run(
        _sql(
            console_server,
            "UPDATE events SET delivery_status = 'failed', delivery_attempts = 9,"
            " last_error = 'HTTP 503' WHERE id = (SELECT max(id) FROM events WHERE refund_id = $1)"
            " RETURNING id",
            flagged,
        )
    )
    page = new_page()
    sign_in(page, console_server.keys["ops"])
    page.get_by_role("link", name="Attention", exact=True).click()
    assert page.get_by_role("heading", name="Attention", level=1).is_visible()

    needs = page.locator("section#needs_attention")
    row = needs.locator("tbody tr", has_text=flagged)
    assert row.get_by_text("The PSE reports a second refund of this payment").is_visible()
    acknowledge = row.get_by_role("link", name=re.compile("Acknowledge"))
    assert acknowledge.get_attribute("href") == f"/console/refunds/{flagged}"
    count = int(needs.locator("h2 .badge").inner_text().replace(",", ""))
    assert count >= 1
    payout = page.locator("section#offline_required tbody tr", has_text=offline)
    assert payout.get_by_role("link", name=re.compile("Record offline payout")).is_visible()

    deliveries = page.locator("section#failed_deliveries")
    event_row = deliveries.locator("tbody tr", has_text=event_id)
    assert event_row.get_by_text("HTTP 503").is_visible()
    screenshot(page, "attention-queues-1280")

    with page.expect_navigation():
        event_row.get_by_role("button", name=re.compile("Redeliver")).click()
    assert page.url.endswith("/console/attention#failed_deliveries")
    assert (
        "is queued for delivery to the store again."
        in page.get_by_role("status").first.inner_text()
    )
    assert page.locator("section#failed_deliveries tbody tr", has_text=event_id).count() == 0
    event = console_server.run(console_server.container.events.get(event_id))
    assert event.delivery_status is DeliveryStatus.PENDING
    screenshot(page, "attention-redelivered-1280")

    phone = new_page(width=390, height=844)
    sign_in(phone, console_server.keys["ops"])
    phone.goto("/console/attention")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(phone, "attention-queues-390")


# -- reconciliations ------------------------------------------------------------------


def test_a_settlement_file_upload_shows_its_differences(new_page, console_server):
    matched, short = console_server.run(
        _refunds(console_server, _unique("REC"), [(3_000, "JPY"), (5_000, "JPY")], account=ACCOUNT)
    )
    # One line matched (by our reference), one settled for another amount,
    # one refund the service does not know.
    ghost = f"re_ghost_{uuid.uuid4().hex[:8]}"
    settlement = HEADER + (
        f",{matched},refund,3000,JPY,succeeded,2020-01-06T08:00:00Z,30,,\n"
        f",{short},refund,4990,JPY,succeeded,2020-01-06T08:10:00Z,,,\n"
        f"{ghost},,refund,700,JPY,succeeded,2020-01-06T08:20:00Z,,,\n"
    )
    page = new_page()
    sign_in(page, console_server.keys["ops"])
    page.get_by_role("link", name="Reconciliations", exact=True).click()
    page.get_by_label("PSE account").select_option(ACCOUNT)
    page.get_by_label("Settlement file", exact=True).set_input_files(
        files=[{"name": "settlement.csv", "mimeType": "text/csv", "buffer": settlement.encode()}]
    )
    screenshot(page, "reconciliations-upload-1280")
    with page.expect_navigation():
        page.get_by_role("button", name="Upload and reconcile").click()
    assert re.search(r"/console/reconciliations/rec_[0-9a-z]+$", page.url)
    run_id = page.url.rsplit("/", 1)[1]
    assert f"run {run_id} has started" in page.get_by_role("status").first.inner_text()
    # Processing, then the page reloads itself (console.js) until the run ends.
    page.locator(".facts .status", has_text="completed").wait_for(timeout=20_000)

    outcomes = page.locator("section[aria-labelledby=outcomes]")

    def count(outcome: str) -> int:
        # Exactly: "matched" is also in "dispute_matched".
        name = page.locator("th", has_text=re.compile(rf"^\s*{outcome}\s*$"))
        row = outcomes.locator("tbody tr", has=name)
        return int(row.locator("td.num").inner_text())

    assert (count("matched"), count("amount_mismatch"), count("missing_in_service")) == (1, 1, 1)
    assert (count("status_mismatch"), count("missing_in_file")) == (0, 0)
    lines = page.locator("section[aria-labelledby=lines] tbody tr")
    assert lines.count() == 3
    mismatch = lines.filter(has_text="amount_mismatch")
    assert (
        mismatch.get_by_text("¥4,990").is_visible() and mismatch.get_by_text("¥5,000").is_visible()
    )
    assert (
        mismatch.get_by_role("link", name=short).get_attribute("href")
        == f"/console/refunds/{short}"
    )
    assert lines.filter(has_text=ghost).get_by_text("missing_in_service").is_visible()
    screenshot(page, "reconciliation-run-1280")

    outcomes.get_by_role("link", name="amount_mismatch").click()
    page.wait_for_url(re.compile(r"outcome=amount_mismatch"))
    assert page.locator("section[aria-labelledby=lines] tbody tr").count() == 1
    screenshot(page, "reconciliation-run-differences-1280")

    with page.expect_download() as started:
        page.get_by_role("link", name="Download the report (CSV)").click()
    report = Path(started.value.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(report)))
    assert sorted(r["outcome"] for r in rows) == [
        "amount_mismatch",
        "matched",
        "missing_in_service",
    ]

    phone = new_page(width=390, height=844)
    sign_in(phone, console_server.keys["ops"])
    phone.goto(f"/console/reconciliations/{run_id}")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(phone, "reconciliation-run-390")
    phone.goto("/console/reconciliations")
    assert phone.get_by_role("link", name=run_id).is_visible()


def test_a_run_still_processing_says_so_and_offers_a_reload(page, console_server):
    started = console_server.run(
        console_server.container.reconciliations.start(ACCOUNT, "arriving.csv", None)
    )
    sign_in(page, console_server.keys["ops"])
    page.goto(f"/console/reconciliations/{started.id}")
    status = page.locator(".processing")
    assert "Processing" in status.inner_text()
    assert status.get_attribute("data-reload-after") == "2"
    assert page.get_by_role("link", name="Reload").get_attribute("href") == (
        f"/console/reconciliations/{started.id}"
    )
    screenshot(page, "reconciliation-processing-1280")
    # The run ends (here by hand); the page, reloading itself, shows it.
    console_server.run(
        _sql(
            console_server,
            "UPDATE reconciliations SET status = 'failed', error = 'line 2: not UTF-8 text',"
            " completed_at = now() WHERE id = $1",
            started.id,
        )
    )
    page.get_by_role("alert").filter(has_text="line 2: not UTF-8 text").wait_for(timeout=10_000)
    assert page.locator(".processing").count() == 0
