"""Card data is refused, not stored: a card number in any free text a client
sends (a body field, a metadata key or value, a search filter, a console form)
is a 422 `card_data_forbidden` naming the field, never the number, and nothing
is written nor sent to the PSE. Whatever is recorded of the refused request is
masked, and a configured secret of three characters is redacted too."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import httpx
import pytest

from app.api.app import create_app
from app.bootstrap import build_container
from app.services.context import lock_refund, save
from tests.api import test_console
from tests.api.helpers import assert_problem, get_payment, get_refund, payment_body, register
from tests.api.test_console import csrf_of, signed_in
from tests.api.test_console_decisions import post, requested, text_of
from tests.conftest import KEY_SPECS, settings_for

# How card numbers arrive: each a way that used to slip through masking.
WRITTEN = {
    "spaces": "4242 4242 4242 4242",
    "dots": "4242.4242.4242.4242",
    "slashes": "4111/1111/1111/1111",
    "double spaces": "5555  5555  5555  4444",
    "tab and no-break space": "4242\t4242\u00a04242 4242",
    "amex 4-6-5": "3782-822463-10005",
    "19 digits in a block": "4571736012345678918",
}
DIGITS = {name: re.sub(r"\D", "", pan) for name, pan in WRITTEN.items()}
TWO = ["spaces", "tab and no-break space"]

browser = test_console.browser


def refused_card(response, where: str) -> dict:
    body = assert_problem(response, 422, "card_data_forbidden")
    assert body["detail"].startswith(f"{where} holds what looks like a card number"), body
    assert [e["loc"] for e in body["errors"]] == [where.removeprefix("a key of ")]
    for digits in DIGITS.values():
        assert digits[-8:] not in response.text.replace(" ", "")
    return body


async def audit_dump(api) -> str:
    await api.container.audit.flush()
    async with api.container.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM audit_log ORDER BY seq")
    return json.dumps([dict(row) for row in rows], default=str, ensure_ascii=False)


def assert_not_in(dump: str, name: str) -> None:
    """Neither as written nor with more than its first six digits in a row
    (whatever the separators or escapes between them)."""
    assert WRITTEN[name] not in dump
    assert not re.search(r"(?:[\s./_-]|\\u00a0|\\t)*".join(DIGITS[name][:11]), dump), name


async def refunds_of(api, payment_id: str) -> list:
    r = await api.client.get(f"/v1/refunds?payment_id={payment_id}", headers=api.auth("ops"))
    assert r.status_code == 200, r.text
    return r.json()["data"]


# -- the API: request bodies ---------------------------------------------------------


@pytest.mark.parametrize("name", list(WRITTEN))
@pytest.mark.parametrize(
    ("field", "where"),
    [
        (lambda pan: {"note": f"customer paid with {pan}, exp 12/29"}, "body.note"),
        (lambda pan: {"metadata": {"rma": "R-77", "card": pan}}, "body.metadata.card"),
        (lambda pan: {"metadata": {f"card {pan}": "x"}}, "a key of body.metadata"),
    ],
    ids=["note", "metadata value", "metadata key"],
)
async def test_a_refund_holding_a_card_number_is_refused_and_nothing_is_kept(
    api, field, where, name
):
    payment = await register(api)
    body = {"payment_id": payment["id"], "amount": 3000, "reason": "other", **field(WRITTEN[name])}
    r = await api.client.post(
        "/v1/refunds", json=body, headers={**api.auth("store"), "Idempotency-Key": "k-card"}
    )
    refused_card(r, where)
    assert await refunds_of(api, payment["id"]) == []
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 0
    await api.settle()
    assert api.gateway.created == []
    # The request is in the audit trail, its body masked.
    dump = await audit_dump(api)
    assert "card_data_forbidden" in dump
    assert_not_in(dump, name)


@pytest.mark.parametrize("escape", ["ascii", "php"])
async def test_a_card_number_escaped_in_json_is_refused_and_masked_in_the_trail(api, escape):
    payment = await register(api)
    pan = "4242\u00a04242/4242\t4242"
    text = json.dumps({"payment_id": payment["id"], "reason": "other", "note": f"card {pan}"})
    if escape == "php":
        text = text.replace("/", "\\/")
    assert "\\u00a0" in text and "\\t" in text
    r = await api.client.post(
        "/v1/refunds",
        content=text.encode(),
        headers={
            **api.auth("store"),
            "Idempotency-Key": "k-esc",
            "content-type": "application/json",
        },
    )
    refused_card(r, "body.note")
    dump = await audit_dump(api)
    assert "4242424242424242" not in re.sub(r"\\u00a0|\\t|\\/|\D", "", dump)
    assert "424242******4242" in dump


@pytest.mark.parametrize("field", ["order_id", "pse_payment_id", "payment_method"])
@pytest.mark.parametrize("name", TWO)
async def test_a_payment_holding_a_card_number_is_refused_and_not_registered(api, field, name):
    body = payment_body(**{field: f"x {WRITTEN[name]}"})
    r = await api.client.post("/v1/payments", json=body, headers=api.auth("store"))
    refused_card(r, f"body.{field}")
    listed = await api.client.get("/v1/payments", headers=api.auth("ops"))
    assert listed.json()["data"] == []


async def test_a_payment_keeps_its_times_and_rates_out_of_the_search(api):
    # 15 digits joined by a dot, passing the Luhn check: in a note it would be
    # refused; a rate is checked by its own validator, it is not free text.
    rate = "149.123456789017"
    r = await api.client.post(
        "/v1/payments",
        json=payment_body(settlement_currency="USD", settlement_rate=rate),
        headers=api.auth("store"),
    )
    assert r.status_code == 201, r.text


async def _flag(api, refund_id: str) -> None:
    async with api.container.deps.uow() as uow:
        payment, held = await lock_refund(uow, refund_id)
        held.flag("the PSE reported a different amount", api.clock.now())
        await save(api.container.deps, uow, payment, held)
        await uow.commit()


@pytest.mark.parametrize("name", TWO)
async def test_notes_and_references_of_actions_holding_a_card_number_are_refused(api, name):
    pan = WRITTEN[name]
    waiting = await requested(api, 20_000)  # above ¥10,000: waits for an approver
    old = api.clock.now() - timedelta(days=200)
    offline = await requested(api, 3_000, captured_at=old.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert offline["status"] == "offline_required"
    flagged = await requested(api, 3_000)
    await api.settle()
    await _flag(api, flagged["id"])
    sent_before = len(api.gateway.created)
    before = {r["id"]: await get_refund(api, r["id"]) for r in (waiting, offline, flagged)}
    for refund_id, action, body, who, where in [
        (waiting["id"], "approve", {"note": f"ok {pan}"}, "approver3", "body.note"),
        (waiting["id"], "reject", {"note": pan}, "approver3", "body.note"),
        (waiting["id"], "cancel", {"note": f"card {pan}"}, "store", "body.note"),
        (flagged["id"], "acknowledge", {"note": f"PSE says {pan}"}, "ops", "body.note"),
        (
            offline["id"],
            "offline-payout",
            {"reference": f"BANK {pan}", "paid_at": "2026-11-27T09:00:00Z"},
            "ops",
            "body.reference",
        ),
    ]:
        r = await api.client.post(
            f"/v1/refunds/{refund_id}/{action}", json=body, headers=api.auth(who)
        )
        refused_card(r, where)
    await api.settle()
    for refund_id, was in before.items():
        assert await get_refund(api, refund_id) == was
    assert len(api.gateway.created) == sent_before
    assert_not_in(await audit_dump(api), name)


# -- the API: search filters and uploads -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/v1/payments?order_id={pan}", "query.order_id"),
        ("/v1/refunds?payment_id={pan}", "query.payment_id"),
        ("/v1/events?refund_id={pan}", "query.refund_id"),
        ("/v1/audit?request_id={pan}", "query.request_id"),
    ],
)
async def test_a_search_filter_holding_a_card_number_is_refused(api, path, where):
    r = await api.client.get(path.format(pan="4242%204242%204242%204242"), headers=api.auth("ops"))
    refused_card(r, where)
    assert_not_in(await audit_dump(api), "spaces")


async def test_a_settlement_file_named_with_a_card_number_is_refused(api):
    r = await api.client.post(
        "/v1/reconciliations",
        files={"file": ("4242 4242 4242 4242.csv", b"pse_refund_id\n", "text/csv")},
        data={"pse_account": "fake_jp"},
        headers=api.auth("ops"),
    )
    body = assert_problem(r, 422, "card_data_forbidden")
    assert body["detail"].startswith("the file's name holds")
    listed = await api.client.get("/v1/reconciliations", headers=api.auth("ops"))
    assert listed.json()["data"] == []


async def test_ordinary_free_text_is_accepted(api):
    payment = await register(api, order_id="ORD-20261127-000123")
    r = await api.client.post(
        "/v1/refunds",
        json={
            "payment_id": payment["id"],
            "amount": 3000,
            "reason": "other",
            "note": "card ending 4242, refunded 2026-11-27 15000 JPY, call +81 90-1234-5678",
            "metadata": {"trace": "4bf92f3577b34da6a3ce929d0e0e4736", "masked": "424242******4242"},
        },
        headers={**api.auth("store"), "Idempotency-Key": "k-ok"},
    )
    assert r.status_code == 201, r.text


# -- the console ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TWO)
async def test_console_forms_holding_a_card_number_are_refused_and_change_nothing(
    api, browser, name
):
    pan = WRITTEN[name]
    waiting = await requested(api, 20_000)
    old = api.clock.now() - timedelta(days=200)
    offline = await requested(api, 3_000, captured_at=old.strftime("%Y-%m-%dT%H:%M:%SZ"))
    flagged = await requested(api, 3_000)
    await api.settle()
    await _flag(api, flagged["id"])
    sent_before = len(api.gateway.created)
    before = {r["id"]: await get_refund(api, r["id"]) for r in (waiting, offline, flagged)}
    approver = await signed_in(browser, api, "approver3")
    ops = await signed_in(browser, api, "ops")
    approver_token = csrf_of((await approver.get("/console/approvals")).text)
    ops_token = csrf_of((await ops.get("/console")).text)
    for client, token, path, fields, source in [
        (approver, approver_token, f"/refunds/{waiting['id']}/approve", {"note": pan}, None),
        (approver, approver_token, f"/refunds/{waiting['id']}/approve", {"note": pan}, "approvals"),
        (approver, approver_token, f"/refunds/{waiting['id']}/reject", {"note": pan}, None),
        (approver, approver_token, f"/refunds/{waiting['id']}/reject", {"note": pan}, "approvals"),
        (ops, ops_token, f"/refunds/{waiting['id']}/cancel", {"note": f"x {pan}"}, None),
        (ops, ops_token, f"/refunds/{flagged['id']}/acknowledge", {"note": pan}, None),
        (
            ops,
            ops_token,
            f"/refunds/{offline['id']}/offline-payout",
            {"reference": pan, "paid_on": "2026-11-26"},
            None,
        ),
    ]:
        refused = await post(client, path, token, source=source, **fields)
        assert refused.status_code == 422, (path, refused.text)
        words = text_of(refused.text)
        assert "card_data_forbidden" in words and "holds what looks like a card number" in words
        # The form comes back with the number masked to its last four digits.
        assert DIGITS[name][:8] not in re.sub(r"\D", "", refused.text), path
        assert "************4242" in refused.text, path
    await api.settle()
    for refund_id, was in before.items():
        assert await get_refund(api, refund_id) == was
    assert len(api.gateway.created) == sent_before


@pytest.mark.parametrize("field", ["q", "created_from", "amount_min", "status"])
async def test_a_console_search_holding_a_card_number_is_refused_and_not_echoed(
    api, browser, field
):
    ops = await signed_in(browser, api, "ops")
    page = await ops.get(
        "/console/refunds", params={field: "4242 4242 4242 4242", "currency": "JPY"}
    )
    assert page.status_code == 422
    words = text_of(page.text)
    assert "card_data_forbidden" in words
    assert "424242424242" not in re.sub(r"\D", "", page.text)
    csv = await ops.get("/console/refunds.csv", params={field: "4242-4242-4242-4242"})
    assert csv.status_code == 422 and "card_data_forbidden" in text_of(csv.text)


async def test_the_console_fx_report_refuses_a_card_number_and_masks_it(api, browser):
    ops = await signed_in(browser, api, "ops")
    page = await ops.get("/console/reconciliations", params={"fx_from": "4242.4242.4242.4242"})
    assert page.status_code == 422
    assert "card_data_forbidden" in text_of(page.text)
    assert "42424242" not in re.sub(r"\D", "", page.text)


# -- short secrets -------------------------------------------------------------------------


async def test_a_three_character_pse_key_is_not_in_the_audit_trail_after_a_call(
    db, postgres_url, clock
):
    secret = "abc"

    def pse(request: httpx.Request) -> httpx.Response:
        # The call carries the key; the PSE's answer names it back.
        assert request.headers["authorization"] == f"Bearer {secret}"
        return httpx.Response(
            401,
            json={
                "status": 401,
                "code": "unauthorized",
                "title": "Unauthorized",
                "detail": f"API key {secret} is not valid",
                "instance": f"/v2/payment_refunds?key={secret}",
            },
            headers={"content-type": "application/problem+json", "x-key-echo": secret},
        )

    settings = settings_for(
        postgres_url,
        accounts={
            "payjp_jp": {
                "provider": "payjp",
                "api_key": secret,
                "base_url": "https://api.pay.jp.test",
                "max_attempts": 1,
            }
        },
    )
    container = build_container(
        settings, clock=clock, pse_transport=httpx.MockTransport(pse), pool=db
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(container)), base_url="http://t"
    )
    try:
        keys = {}
        for who in ("store", "ops"):
            _key, keys[who] = await container.keys.create(who, *KEY_SPECS[who])
        auth = {"Authorization": f"Bearer {keys['store']}"}
        paid = await client.post(
            "/v1/payments",
            json=payment_body(pse_account="payjp_jp", pse_payment_id="pfw_abc123"),
            headers=auth,
        )
        assert paid.status_code == 201, paid.text
        made = await client.post(
            "/v1/refunds",
            json={"payment_id": paid.json()["id"], "amount": 3000, "reason": "other"},
            headers={**auth, "Idempotency-Key": "k-short-secret"},
        )
        assert made.status_code == 201, made.text
        await container.submitter.drain()
        await container.audit.flush()
        async with container.pool.acquire() as conn:
            rows = await conn.fetch("SELECT kind, body FROM audit_log ORDER BY seq")
        calls = [row["body"] for row in rows if row["kind"] == "pse.call"]
        assert calls, [row["kind"] for row in rows]
        dump = json.dumps([row["body"] for row in rows])
        assert not re.search(rf"(?<![A-Za-z0-9_]){secret}(?![A-Za-z0-9_])", dump), dump
        assert "[redacted]" in "".join(calls)
        # Other words holding the three letters are left alone.
        assert "pfw_abc123" in dump
    finally:
        await container.submitter.aclose()
        await client.aclose()
        await container.http.aclose()
