"""Text that cannot be stored, and times a payment cannot have, are the
client's error (422), said before anything is written."""

from __future__ import annotations

import json

import pytest

from tests.api.helpers import assert_problem, get_payment, payment_body, register

LONE_SURROGATE = "\\ud800"  # as it travels in JSON: valid JSON, no character
NUL = "\\u0000"


async def post_raw(api, path: str, text: str, who: str = "store", **headers: str):
    return await api.client.post(
        path,
        content=text.encode(),
        headers={**api.auth(who), "content-type": "application/json", **headers},
    )


async def refunds_of(api, payment_id: str) -> list:
    r = await api.client.get(f"/v1/refunds?payment_id={payment_id}", headers=api.auth("ops"))
    return r.json()["data"]


@pytest.mark.parametrize("bad", [LONE_SURROGATE, "\\udfff", NUL])
@pytest.mark.parametrize(
    "template",
    [
        '{{"payment_id": "{p}", "amount": 100, "reason": "other", "metadata": {{"k": "{bad}"}}}}',
        '{{"payment_id": "{p}", "amount": 100, "reason": "other", "metadata": {{"{bad}": "v"}}}}',
        '{{"payment_id": "{p}", "amount": 100, "reason": "other", "note": "a{bad}b"}}',
        '{{"payment_id": "{p}{bad}", "amount": 100, "reason": "other"}}',
    ],
)
async def test_a_refund_with_unstorable_text_is_refused_and_nothing_is_created(api, template, bad):
    payment = await register(api)
    body = template.format(p=payment["id"], bad=bad)
    r = await post_raw(api, "/v1/refunds", body, **{"Idempotency-Key": "k-bad-text"})
    assert_problem(r, 422, "validation_error")
    assert await refunds_of(api, payment["id"]) == []
    assert (await get_payment(api, payment["id"]))["reserved_amount"] == 0


@pytest.mark.parametrize("field", ["order_id", "pse_payment_id", "payment_method"])
async def test_a_payment_with_unstorable_text_is_refused(api, field):
    body = json.dumps(payment_body()).replace('"card"', '"card"')
    data = json.loads(body)
    data[field] = "x"
    text = json.dumps(data).replace('"x"', f'"x{LONE_SURROGATE}"')
    r = await post_raw(api, "/v1/payments", text)
    assert_problem(r, 422, "validation_error")


async def test_notes_and_references_of_actions_refuse_unstorable_text(api):
    payment = await register(api)
    r = await api.client.post(
        "/v1/refunds",
        json={"payment_id": payment["id"], "amount": 20000, "reason": "other"},
        headers={**api.auth("store"), "Idempotency-Key": "k-action"},
    )
    refund_id = r.json()["id"]
    for action, body, who in [
        ("approve", f'{{"note": "ok{LONE_SURROGATE}"}}', "approver3"),
        ("reject", f'{{"note": "no{LONE_SURROGATE}"}}', "approver3"),
        ("offline-payout", f'{{"reference": "b{NUL}", "paid_at": "2026-11-27T09:00:00Z"}}', "ops"),
    ]:
        r = await post_raw(api, f"/v1/refunds/{refund_id}/{action}", body, who=who)
        assert_problem(r, 422, "validation_error")
    r = await api.client.get(f"/v1/refunds/{refund_id}", headers=api.auth("ops"))
    assert r.json()["status"] == "pending_approval" and r.json()["approvals"] == []


async def test_a_header_with_nul_is_refused_before_it_reaches_the_audit_log(api):
    payment = await register(api)
    r = await api.client.post(
        "/v1/refunds",
        json={"payment_id": payment["id"], "amount": 100, "reason": "other"},
        headers={**api.auth("store"), "Idempotency-Key": "k\x00nul"},
    )
    assert_problem(r, 422, "validation_error")
    assert await refunds_of(api, payment["id"]) == []


@pytest.mark.parametrize("where", ["reference", "id"])
async def test_a_signed_webhook_with_unstorable_text_is_a_client_error(api, where):
    refund = {"id": "fre_1", "state": "succeeded", "reference": "rf_1"}
    refund[where] = "x"
    text = json.dumps({"id": "evt_bad", "type": "refund.succeeded", "refund": refund})
    text = text.replace('"x"', f'"x{LONE_SURROGATE}"')
    r = await api.client.post(
        "/v1/webhooks/fake_jp", content=text.encode(), headers={"x-fake-signature": "ok"}
    )
    assert_problem(r, 400, "invalid_webhook_payload")


async def test_a_capture_in_the_future_is_refused(api):
    soon = api.clock.now().replace(microsecond=0)
    ahead = soon.timestamp() + 6 * 60
    from datetime import UTC, datetime

    late = datetime.fromtimestamp(ahead, UTC).isoformat().replace("+00:00", "Z")
    r = await api.client.post(
        "/v1/payments", json=payment_body(captured_at=late), headers=api.auth("store")
    )
    body = assert_problem(r, 422, "validation_error")
    assert "future" in body["detail"]


async def test_a_capture_within_the_clock_skew_is_accepted(api):
    from datetime import UTC, datetime

    skewed = datetime.fromtimestamp(api.clock.now().timestamp() + 4 * 60, UTC)
    r = await api.client.post(
        "/v1/payments",
        json=payment_body(captured_at=skewed.isoformat().replace("+00:00", "Z")),
        headers=api.auth("store"),
    )
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("value", [1764000000, 1764000000.5, True])
async def test_a_capture_time_must_be_rfc3339_text_not_a_number(api, value):
    r = await api.client.post(
        "/v1/payments", json=payment_body(captured_at=value), headers=api.auth("store")
    )
    assert_problem(r, 422, "validation_error")
