"""Reconciliation against settlement files, on PostgreSQL."""

from __future__ import annotations

import asyncio
import io
from contextlib import contextmanager

from app.domain.pse import (
    Accepted,
    PseRefund,
    PseRefundState,
    Unanswered,
)
from tests.api.helpers import get_payment, get_refund, refund, register

HEADER = (
    "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
    "settlement_amount,settlement_currency\n"
)


def opener(text: str):
    @contextmanager
    def open_file():
        yield io.BytesIO(text.encode())

    return open_file


async def reconcile(api, text: str, account: str = "fake_jp"):
    service = api.container.reconciliations
    started = await service.start(account, "file.csv", None)
    return await service.run(started.id, opener(text))


async def upload(api, text: str, account: str = "fake_jp") -> dict:
    """The file sent as ops send one (`POST /v1/reconciliations`), and its run
    done: the 202's body."""
    r = await api.client.post(
        "/v1/reconciliations",
        files={"file": ("settlement.csv", text.encode(), "text/csv")},
        data={"pse_account": account},
        headers=api.auth("ops"),
    )
    assert r.status_code == 202, r.text
    await api.container.jobs.drain()
    return r.json()


async def lines(api, reconciliation_id: str, outcome: str | None = None) -> list:
    return await api.container.reconciliations.lines(
        reconciliation_id, outcome=outcome, limit=1000, after_id=None
    )


async def succeeded_refund(api, amount=3000, **payment):
    p = await register(api, **payment)
    created = (await refund(api, p["id"], amount)).json()
    await api.settle()
    api.gateway.settle(created["id"], PseRefundState.SUCCEEDED)
    await api.client.post(f"/v1/refunds/{created['id']}/sync", headers=api.auth("ops"))
    now = await get_refund(api, created["id"])
    assert now["status"] == "succeeded"
    return p, now


async def test_each_line_is_matched_by_pse_id_or_reference_and_counted(api):
    _, a = await succeeded_refund(api)
    _, b = await succeeded_refund(api)
    _, c = await succeeded_refund(api)
    text = HEADER + (
        f"{a['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,30,,\n"
        f",{b['id']},refund,3000,JPY,succeeded,2026-11-27T08:10:00Z,,,\n"
        f"{c['pse_refund_id']},,refund,2999,JPY,succeeded,2026-11-27T08:20:00Z,,,\n"
        "re_unknown_1,,refund,500,JPY,succeeded,2026-11-27T08:30:00Z,,,\n"
        "ch_1,,charge,9000,JPY,succeeded,2026-11-27T08:40:00Z,,,\n"
    )
    done = await reconcile(api, text)
    assert done.status == "completed" and done.error is None
    assert done.rows_total == 4  # the charge line is skipped
    assert done.counts == {
        "matched": 2,
        "amount_mismatch": 1,
        "status_mismatch": 0,
        "missing_in_service": 1,
        "missing_in_file": 0,
        "dispute_matched": 0,
        "dispute_amount_mismatch": 0,
        "dispute_status_mismatch": 0,
        "dispute_missing_in_service": 0,
    }
    missing = await lines(api, done.id, "missing_in_service")
    assert [m.pse_refund_id for m in missing] == ["re_unknown_1"]
    mismatch = (await lines(api, done.id, "amount_mismatch"))[0]
    assert mismatch.refund_id == c["id"] and mismatch.file_amount == 2999
    assert mismatch.our_amount == 3000
    assert (await get_refund(api, a["id"]))["fee_amount"] == 30


async def test_an_unknown_refund_the_file_proves_settled_becomes_succeeded(api):
    api.gateway.next_results.append(Unanswered("timeout"))
    p = await register(api)
    created = (await refund(api, p["id"], 3000)).json()
    await api.settle()
    assert (await get_refund(api, created["id"]))["status"] == "unknown"
    text = HEADER + f",{created['id']},refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,,,\n"
    done = await reconcile(api, text)
    assert done.counts["matched"] == 1 and done.adopted == 1
    now = await get_refund(api, created["id"])
    assert now["status"] == "succeeded"
    assert now["status_history"][-1]["actor"] == f"settlement file {done.id}"
    assert (await get_payment(api, p["id"]))["refunded_amount"] == 3000


async def test_a_status_the_file_contradicts_is_reported_and_not_changed(api):
    api.gateway.next_results.append(Unanswered("timeout"))
    p = await register(api)
    created = (await refund(api, p["id"], 3000)).json()
    await api.settle()
    text = HEADER + f",{created['id']},refund,3000,JPY,failed,2026-11-27T08:00:00Z,,,\n"
    done = await reconcile(api, text)
    assert done.counts["status_mismatch"] == 1 and done.adopted == 0
    assert (await get_refund(api, created["id"]))["status"] == "unknown"


async def test_a_succeeded_refund_absent_from_the_files_period_is_missing_in_file(api):
    _, inside = await succeeded_refund(api)
    api.clock.advance(days=3)
    _, later = await succeeded_refund(api)
    text = HEADER + (
        "re_other,,refund,100,JPY,succeeded,2026-11-27T00:00:00Z,,,\n"
        "re_other2,,refund,100,JPY,succeeded,2026-11-28T00:00:00Z,,,\n"
    )
    done = await reconcile(api, text)
    missing = await lines(api, done.id, "missing_in_file")
    assert [m.refund_id for m in missing] == [inside["id"]]
    assert done.counts["missing_in_file"] == 1
    assert later["id"] not in {m.refund_id for m in missing}


async def test_the_actual_settled_amount_gives_the_fx_difference(make_api):
    api = await make_api(policy={})
    _, done_refund = await succeeded_refund(
        api, amount=10000, settlement_currency="USD", settlement_rate="0.0067"
    )
    assert done_refund["settlement_amount"] == 6700  # USD 67.00 at the payment's rate
    text = HEADER + (
        f"{done_refund['pse_refund_id']},,refund,10000,JPY,succeeded,2026-11-27T08:00:00Z,"
        "45,6650,USD\n"
    )
    await reconcile(api, text)
    now = await get_refund(api, done_refund["id"])
    assert now["fx_difference"] == -50 and now["fee_amount"] == 45
    r = await api.client.get("/v1/reports/fx", params={"currency": "USD"}, headers=api.auth("ops"))
    assert r.status_code == 200
    assert r.json()["data"] == [
        {
            "settlement_currency": "USD",
            "refunds": 1,
            "refunds_with_actual_settlement": 1,
            "fx_difference": -50,
            "fees": 45,
        }
    ]


async def test_a_malformed_file_names_the_line_and_changes_nothing(api):
    api.gateway.next_results.append(Unanswered("timeout"))
    p = await register(api)
    created = (await refund(api, p["id"], 3000)).json()
    await api.settle()
    text = HEADER + (
        f",{created['id']},refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,,,\n"
        "re_2,,refund,12.50,JPY,succeeded,2026-11-27T08:00:00Z,,,\n"
    )
    done = await reconcile(api, text)
    assert done.status == "failed"
    assert done.error == "line 3: amount '12.50' is not an integer of minor units"
    assert await lines(api, done.id) == []
    assert (await get_refund(api, created["id"]))["status"] == "unknown"


async def test_an_unknown_header_is_refused_at_line_one(api):
    done = await reconcile(api, "id,amount\n1,2\n")
    assert done.status == "failed" and done.error.startswith("line 1: unknown header")


async def test_a_stripe_itemized_export_is_read(make_api):
    api = await make_api(policy={})
    p = await register(api, currency="USD", amount=10000)
    created = (await refund(api, p["id"], 2500)).json()
    api.gateway.next_results.append(
        Accepted(PseRefund("re_3Q1", PseRefundState.PENDING, reference=created["id"]))
    )
    await api.settle()
    text = (
        "balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,"
        "source_id,customer_facing_amount,customer_facing_currency\n"
        "txn_1,2026-11-27 08:00:00,usd,-25.00,0.00,-25.00,refund,re_3Q1,25.00,usd\n"
        "txn_2,2026-11-27 08:00:00,usd,100.00,3.20,96.80,charge,ch_1,100.00,usd\n"
    )
    done = await reconcile(api, text)
    assert done.file_format == "stripe_itemized"
    assert done.rows_total == 1 and done.counts["matched"] == 1 and done.adopted == 1
    assert (await get_refund(api, created["id"]))["status"] == "succeeded"


async def test_ops_upload_a_file_and_read_the_outcome_its_lines_and_the_csv(api):
    _, a = await succeeded_refund(api)
    text = HEADER + (
        f"{a['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,,,\n"
        "re_ghost,,refund,700,JPY,succeeded,2026-11-27T08:05:00Z,,,\n"
    )
    accepted = await upload(api, text)
    assert accepted["status"] == "processing"
    rec_id = accepted["id"]
    r = await api.client.get(f"/v1/reconciliations/{rec_id}", headers=api.auth("ops"))
    body = r.json()
    assert body["status"] == "completed" and body["file_format"] == "generic"
    assert body["counts"]["matched"] == 1 and body["counts"]["missing_in_service"] == 1
    assert len(body["rows"]["data"]) == 2
    r = await api.client.get(
        f"/v1/reconciliations/{rec_id}",
        params={"outcome": "missing_in_service", "limit": 1},
        headers=api.auth("ops"),
    )
    assert [x["pse_refund_id"] for x in r.json()["rows"]["data"]] == ["re_ghost"]
    r = await api.client.get(f"/v1/reconciliations/{rec_id}/report.csv", headers=api.auth("ops"))
    assert r.headers["content-type"].startswith("text/csv")
    report = r.text.splitlines()
    assert report[0].startswith("line,outcome,pse_refund_id")
    assert len(report) == 3 and "re_ghost" in report[2]


async def test_ops_list_past_reconciliations_newest_first_a_page_at_a_time(api):
    runs = []
    for name in ("first.csv", "second.csv", "third.csv"):
        started = await api.container.reconciliations.start("fake_jp", name, None)
        runs.append(await api.container.reconciliations.run(started.id, opener(HEADER)))
        await asyncio.sleep(0.002)  # ids sort by the millisecond they were made in
    r = await api.client.get("/v1/reconciliations", params={"limit": 2}, headers=api.auth("ops"))
    assert r.status_code == 200, r.text
    first = r.json()
    assert [x["filename"] for x in first["data"]] == ["third.csv", "second.csv"]
    assert first["data"][0] == {
        "id": runs[2].id,
        "pse_account": "fake_jp",
        "status": "completed",
        "filename": "third.csv",
        "file_format": "generic",
        "rows_total": 0,
        "counts": runs[2].counts,
        "adopted": 0,
        "range_from": None,
        "range_to": None,
        "error": None,
        "created_at": first["data"][0]["created_at"],
        "completed_at": first["data"][0]["completed_at"],
    }
    r = await api.client.get(
        "/v1/reconciliations",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=api.auth("ops"),
    )
    second = r.json()
    assert [x["id"] for x in second["data"]] == [runs[0].id] and second["next_cursor"] is None
    r = await api.client.get("/v1/reconciliations", headers=api.auth("store"))
    assert r.status_code == 403
    r = await api.client.get(
        "/v1/reconciliations", params={"cursor": "nope"}, headers=api.auth("ops")
    )
    assert r.status_code == 422 and r.json()["code"] == "validation_error"


async def test_reconciliation_is_for_ops_and_needs_a_known_account(api):
    files = {"file": ("s.csv", HEADER.encode(), "text/csv")}
    r = await api.client.post(
        "/v1/reconciliations",
        files=files,
        data={"pse_account": "fake_jp"},
        headers=api.auth("store"),
    )
    assert r.status_code == 403
    r = await api.client.post(
        "/v1/reconciliations", files=files, data={"pse_account": "nope"}, headers=api.auth("ops")
    )
    assert r.status_code == 422 and r.json()["code"] == "unknown_pse_account"
    r = await api.client.post(
        "/v1/reconciliations", data={"pse_account": "fake_jp"}, headers=api.auth("ops")
    )
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    r = await api.client.get("/v1/reconciliations/rec_nope", headers=api.auth("ops"))
    assert r.status_code == 404


async def test_a_file_that_is_not_utf8_names_its_line(api):
    done = await reconcile(api, HEADER + "re_1,,refund,1,JPY,succeeded,,,,\n")
    assert done.status == "completed"
    service = api.container.reconciliations
    started = await service.start("fake_jp", "bad.csv", None)

    @contextmanager
    def binary():
        yield io.BytesIO(HEADER.encode() + b"\xff\xfe,,\n")

    failed = await service.run(started.id, binary)
    assert failed.status == "failed" and failed.error == "line 2: not UTF-8 text"


async def test_a_reconciliation_whose_process_died_is_failed_after_an_hour(api):
    started = await api.container.reconciliations.start("fake_jp", "lost.csv", None)
    api.clock.advance(minutes=59)
    await api.container.worker.run_once()
    assert (await api.container.reconciliations.get(started.id)).status == "processing"
    api.clock.advance(minutes=2)
    await api.container.worker.run_once()
    failed = await api.container.reconciliations.get(started.id)
    assert failed.status == "failed" and "interrupted" in failed.error


async def test_small_batches_on_several_connections_keep_file_order_and_settle(api, monkeypatch):
    monkeypatch.setattr("app.services.reconciliation.BATCH", 2)
    api.gateway.next_results.append(Unanswered("timeout"))
    p = await register(api)
    unknown = (await refund(api, p["id"], 3000)).json()
    await api.settle()
    settled = [(await succeeded_refund(api))[1] for _ in range(3)]
    text = HEADER + "".join(
        f"{s['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:0{i}:00Z,{i + 1},,\n"
        for i, s in enumerate(settled)
    )
    text += "ch_1,,charge,9000,JPY,succeeded,2026-11-27T08:40:00Z,,,\n"
    text += f",{unknown['id']},refund,3000,JPY,succeeded,2026-11-27T08:50:00Z,12,,\n"
    text += "re_ghost,,refund,100,JPY,failed,2026-11-26T08:00:00Z,,,\n"
    text += f",{unknown['id']},refund,3000,JPY,succeeded,2026-11-27T09:00:00Z,,,\n"
    done = await reconcile(api, text)
    assert done.status == "completed" and done.rows_total == 6
    every = await lines(api, done.id)
    assert [line.line for line in every] == [2, 3, 4, 6, 7, 8]
    assert [line.id for line in every] == sorted(line.id for line in every)
    assert done.counts["matched"] == 5 and done.counts["missing_in_service"] == 1
    assert done.range_from.isoformat() == "2026-11-26T08:00:00+00:00"
    assert done.range_to.isoformat() == "2026-11-27T09:00:00+00:00"
    # The first line settles the uncertain refund, with its fee; the second finds it settled.
    assert done.adopted == 1
    now = await get_refund(api, unknown["id"])
    assert now["status"] == "succeeded" and now["fee_amount"] == 12
    assert [(await get_refund(api, s["id"]))["fee_amount"] for s in settled] == [1, 2, 3]


async def test_a_bad_line_after_batches_in_flight_keeps_no_line_and_no_change(api, monkeypatch):
    monkeypatch.setattr("app.services.reconciliation.BATCH", 2)
    _, settled = await succeeded_refund(api)
    good = f"{settled['pse_refund_id']},,refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,5,,\n"
    text = HEADER + good * 7 + "re_2,,refund,3000,JPY,settled,2026-11-27T08:00:00Z,,,\n"
    done = await reconcile(api, text)
    assert done.status == "failed"
    assert done.error == "line 9: status 'settled' is not succeeded, failed or pending"
    assert await lines(api, done.id) == []
    assert (await get_refund(api, settled["id"]))["fee_amount"] is None


# Cursors that `str.isdigit()` takes and `int()` refuses ("²"), reads as
# another number ("١٢" is 12), or that no 64-bit id reaches.
NOT_OUR_CURSORS = ["\u00b2", "\u0661\u0662", "9" * 19, "-1", "1e3", ""]


async def test_a_cursor_of_lines_or_audit_records_that_we_did_not_issue_is_a_422(api):
    done = await reconcile(api, HEADER + "re_1,,refund,1,JPY,succeeded,,,,\n")
    paths = [f"/v1/reconciliations/{done.id}", "/v1/audit"]
    for path in paths:
        for cursor in NOT_OUR_CURSORS:
            r = await api.client.get(path, params={"cursor": cursor}, headers=api.auth("ops"))
            assert r.status_code == 422, (path, cursor, r.text)
            assert r.json()["code"] == "validation_error" and r.json()["detail"] == (
                "cursor is not one we issued"
            )
        assert (await api.client.get(path, headers=api.auth("ops"))).status_code == 200
