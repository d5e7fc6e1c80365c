from __future__ import annotations

import pytest

from tests.api.helpers import assert_problem, payment_body, register


async def test_registering_a_payment_answers_201_with_its_refundable_amount_and_deadline(api):
    r = await api.client.post(
        "/v1/payments",
        json=payment_body(settlement_currency="USD", settlement_rate="0.0067"),
        headers=api.auth("store"),
    )
    assert r.status_code == 201
    body = r.json()
    assert body["id"].startswith("pay_")
    assert body["refundable_amount"] == 50000
    assert body["refunded_amount"] == 0 and body["reserved_amount"] == 0
    assert body["refund_deadline"] == "2027-04-30T10:00:00Z"  # captured_at + 180 days
    assert body["settlement_rate"] == "0.0067"


async def test_registering_the_same_payment_again_returns_the_existing_one(api):
    body = payment_body()
    first = await api.client.post("/v1/payments", json=body, headers=api.auth("store"))
    again = await api.client.post("/v1/payments", json=body, headers=api.auth("store"))
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


async def test_registering_the_same_payment_with_other_fields_is_a_conflict(api):
    body = payment_body()
    await api.client.post("/v1/payments", json=body, headers=api.auth("store"))
    r = await api.client.post(
        "/v1/payments", json={**body, "amount": 49999}, headers=api.auth("store")
    )
    assert_problem(r, 409, "payment_conflict")


async def test_an_unknown_pse_account_is_refused(api):
    r = await api.client.post(
        "/v1/payments", json=payment_body(pse_account="nope"), headers=api.auth("store")
    )
    assert_problem(r, 422, "unknown_pse_account")


async def test_a_float_amount_is_a_validation_error_naming_the_field(api):
    r = await api.client.post(
        "/v1/payments", json=payment_body(amount=120.5), headers=api.auth("store")
    )
    body = assert_problem(r, 422, "validation_error")
    assert any(e["loc"] == "body.amount" for e in body["errors"])


async def test_unknown_fields_and_client_set_counters_are_refused(api):
    r = await api.client.post(
        "/v1/payments", json=payment_body(refunded_amount=0), headers=api.auth("store")
    )
    body = assert_problem(r, 422, "validation_error")
    assert any("refunded_amount" in e["loc"] for e in body["errors"])


async def test_a_naive_capture_time_and_a_lower_case_currency_are_refused(api):
    r = await api.client.post(
        "/v1/payments",
        json=payment_body(captured_at="2026-11-01T10:00:00", currency="jpy"),
        headers=api.auth("store"),
    )
    body = assert_problem(r, 422, "validation_error")
    locs = {e["loc"] for e in body["errors"]}
    assert {"body.captured_at", "body.currency"} <= locs


@pytest.mark.parametrize("rate", ["-1", "0", "NaN", "Infinity", "1e-6", "0.0000000000001"])
async def test_a_settlement_rate_must_be_a_positive_decimal_string_of_sane_digits(api, rate):
    r = await api.client.post(
        "/v1/payments",
        json=payment_body(settlement_currency="USD", settlement_rate=rate),
        headers=api.auth("store"),
    )
    assert_problem(r, 422, "validation_error")


async def test_requests_without_a_key_are_unauthorized(api):
    r = await api.client.post("/v1/payments", json=payment_body())
    assert_problem(r, 401, "unauthorized")
    r = await api.client.get("/v1/payments", headers={"Authorization": "Bearer prk_wrong"})
    assert_problem(r, 401, "unauthorized")


async def test_a_key_without_the_store_role_cannot_register_payments(api):
    r = await api.client.post("/v1/payments", json=payment_body(), headers=api.auth("approver1"))
    assert_problem(r, 403, "forbidden")


async def test_a_revoked_key_stops_working_at_once(api):
    key, secret = await api.container.keys.create("temp", ["store"])
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.client.get("/v1/payments", headers=headers)).status_code == 200
    await api.container.keys.revoke(key.id)
    assert_problem(await api.client.get("/v1/payments", headers=headers), 401, "unauthorized")


async def test_the_callers_request_id_is_echoed_and_a_new_one_is_made_otherwise(api):
    r = await api.client.get("/healthz", headers={"X-Request-ID": "req-123"})
    assert r.headers["x-request-id"] == "req-123"
    r = await api.client.get("/healthz")
    assert len(r.headers["x-request-id"]) == 32


async def test_an_unknown_payment_is_not_found(api):
    r = await api.client.get("/v1/payments/pay_nope", headers=api.auth("ops"))
    assert_problem(r, 404, "not_found")


async def test_payments_list_by_order_id_newest_first_with_cursor_pages(api):
    ids = [(await register(api, order_id="ORD-X"))["id"] for _ in range(3)]
    await register(api, order_id="ORD-Y")
    r = await api.client.get(
        "/v1/payments", params={"order_id": "ORD-X", "limit": 2}, headers=api.auth("store")
    )
    first = r.json()
    assert [p["id"] for p in first["data"]] == ids[::-1][:2]
    assert first["next_cursor"]
    r = await api.client.get(
        "/v1/payments",
        params={"order_id": "ORD-X", "limit": 2, "cursor": first["next_cursor"]},
        headers=api.auth("store"),
    )
    second = r.json()
    assert [p["id"] for p in second["data"]] == [ids[0]]
    assert second["next_cursor"] is None


async def test_a_forged_cursor_and_an_out_of_range_limit_are_refused(api):
    r = await api.client.get("/v1/payments", params={"cursor": "zzz"}, headers=api.auth("ops"))
    assert_problem(r, 422, "validation_error")
    r = await api.client.get("/v1/payments", params={"limit": 201}, headers=api.auth("ops"))
    assert_problem(r, 422, "validation_error")


async def test_an_oversized_body_is_refused_with_413(make_api):
    api = await make_api(max_body_bytes=2048)
    r = await api.client.post(
        "/v1/payments",
        content=b'{"x": "' + b"a" * 5000 + b'"}',
        headers={**api.auth("store"), "Content-Type": "application/json"},
    )
    assert_problem(r, 413, "payload_too_large")


async def test_unknown_routes_answer_problem_json(api):
    ops = api.auth("ops")
    assert_problem(await api.client.get("/v1/nothing-here", headers=ops), 404, "not_found")
    assert_problem(await api.client.delete("/v1/payments", headers=ops), 405, "method_not_allowed")
    # To a stranger, every path under /v1 answers the same 401: none is revealed.
    assert_problem(await api.client.get("/v1/nothing-here"), 401, "unauthorized")


async def test_nul_in_a_body_a_path_or_a_query_is_a_validation_error(api):
    r = await api.client.post(
        "/v1/payments", json=payment_body(order_id="ORD\x00"), headers=api.auth("store")
    )
    assert_problem(r, 422, "validation_error")
    assert_problem(
        await api.client.get("/v1/payments/pay_x%00", headers=api.auth("ops")),
        422,
        "validation_error",
    )
    assert_problem(
        await api.client.get("/v1/payments", params={"order_id": "a\x00"}, headers=api.auth("ops")),
        422,
        "validation_error",
    )


async def test_times_out_of_range_are_validation_errors(api):
    for captured in (
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
        "1900-01-01T00:00:00Z",
    ):
        r = await api.client.post(
            "/v1/payments", json=payment_body(captured_at=captured), headers=api.auth("store")
        )
        assert_problem(r, 422, "validation_error")
    r = await api.client.get(
        "/v1/refunds",
        params={"created_from": "9999-12-31T23:59:59-14:00"},
        headers=api.auth("ops"),
    )
    assert_problem(r, 422, "validation_error")


async def test_a_body_that_is_not_utf8_is_a_validation_error(api):
    r = await api.client.post(
        "/v1/payments",
        content=b'{"a": "\xa2\xae"}',
        headers={**api.auth("store"), "Content-Type": "application/json"},
    )
    assert_problem(r, 422, "validation_error")


async def test_the_openapi_document_describes_every_422_as_problem_json(api):
    spec = (await api.client.get("/openapi.json")).json()
    for item in spec["paths"].values():
        for operation in item.values():
            if "422" in operation["responses"]:
                assert list(operation["responses"]["422"]["content"]) == [
                    "application/problem+json"
                ]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    params = spec["paths"]["/v1/refunds"]["post"]["parameters"]
    assert next(p for p in params if p["name"] == "Idempotency-Key")["required"] is True
