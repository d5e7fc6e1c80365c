"""Strangers store nothing, and nobody calls faster than the limits.

The guard in front of the routes (app/api/guard.py): authentication before
any body is read, small capped summaries of refused requests, rate limits per
client address, API key, failed authentication, console sign-in and PSE
account, and a body that must arrive in time.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.api.app import create_app
from tests.api.helpers import assert_problem, payment_body

pytestmark = pytest.mark.postgres


@pytest.fixture
async def one_window() -> None:
    """The test's requests all fall in one minute of the limiter's clock.
    Its windows are minutes of the epoch, and a window's count carries into
    the next one weighted by the time left of it, rounded down: requests on
    both sides of the boundary would be allowed one more. A test that counts
    to a per-minute limit starts early enough in a minute to finish inside
    it."""
    into = time.time() % 60
    if into > 55:
        await asyncio.sleep(60 - into + 0.05)


async def refused_records(api, response: httpx.Response) -> list[Any]:
    await api.container.audit.flush()
    return await api.container.audit.search(request_id=response.headers["x-request-id"])


async def refused_post(api, path: str, body: bytes, status: int, code: str) -> Any:
    """`body` posted to `path` as JSON, refused with `status` and `code`: the
    one record the refusal left."""
    r = await api.client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_problem(r, status, code)
    (record,) = await refused_records(api, r)
    return record


async def post_raw(
    app,
    path: str,
    headers: list[tuple[bytes, bytes]],
    receive: Callable[[], Awaitable[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """A POST to `path` handed to `app` as the server would hand it, the body
    coming from `receive`; the messages `app` sent back."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("t", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


async def test_a_keyless_request_is_refused_before_its_body_and_leaves_a_small_summary(api):
    body = b'{"note": "' + b"x" * 1_000_000 + b'"}'
    record = await refused_post(api, "/v1/payments", body, 401, "unauthorized")
    assert record.kind == "api.refused"
    summary = record.data()["data"]
    assert summary["reason"] == "missing_key"
    assert summary["method"] == "POST" and summary["path"] == "/v1/payments"
    assert summary["size"] == len(body)
    assert len(record.body) < 1_000, "the body of a stranger's request is never kept"


async def test_a_wrong_key_is_refused_with_a_summary_naming_the_reason(api):
    r = await api.client.get("/v1/refunds", headers={"Authorization": "Bearer prk_not_a_key"})
    assert_problem(r, 401, "unauthorized")
    (record,) = await refused_records(api, r)
    assert record.data()["data"]["reason"] == "unknown_key"
    assert "prk_not_a_key" not in record.body


async def test_an_upload_without_a_key_is_refused_without_reading_a_byte(api):
    """The 200 MB settlement file of a stranger is never read, let alone spooled to disk."""
    app = create_app(api.container)
    chunks_read = 0

    async def receive() -> dict[str, Any]:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    headers = [
        (b"content-type", b"multipart/form-data; boundary=xyz"),
        (b"content-length", str(200 * 1024 * 1024).encode()),
    ]
    sent = await post_raw(app, "/v1/reconciliations", headers, receive)
    assert sent[0]["status"] == 401
    assert chunks_read == 0


async def test_an_unsigned_webhook_leaves_a_summary_without_its_body(api):
    body = b'{"id": "evt_1", "filler": "' + b"y" * 70_000 + b'"}'
    record = await refused_post(api, "/v1/webhooks/fake_jp", body, 400, "invalid_signature")
    assert record.kind == "webhook.refused"
    assert record.data()["data"]["size"] == len(body)
    assert "filler" not in record.body and len(record.body) < 1_000


async def test_refusals_are_recorded_within_a_budget_and_all_counted_in_metrics(make_api):
    api = await make_api(rate_limits={"failed_auth_per_address": "1000/minute"})
    api.container.audit._refusals_per_minute = 5
    responses = [await api.client.get("/v1/refunds") for _ in range(12)]
    assert {r.status_code for r in responses} == {401}
    await api.container.audit.flush()
    recorded = [r for response in responses for r in await refused_records(api, response)]
    assert len(recorded) == 5
    metrics = (await api.container.operations.metrics_text()).decode()
    counted = re.search(r'http_requests_refused_total\{reason="missing_key"\} (\d+)', metrics)
    assert counted and int(float(counted.group(1))) == 12
    # After the window, the next entry says how many were left out.
    api.container.audit._refusal_window -= 61
    late = await api.client.get("/v1/refunds")
    (record,) = await refused_records(api, late)
    assert record.data()["data"]["suppressed"] == 7


async def test_a_key_over_its_limit_gets_429_with_retry_after(make_api, one_window):
    api = await make_api(rate_limits={"per_key": "3/minute"})
    ops = api.auth("ops")
    for _ in range(3):
        assert (await api.client.get("/v1/refunds", headers=ops)).status_code == 200
    r = await api.client.get("/v1/refunds", headers=ops)
    assert_problem(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # Another key is not slowed by the first one's spending.
    assert (await api.client.get("/v1/refunds", headers=api.auth("store"))).status_code == 200


async def test_an_address_guessing_keys_is_stopped_even_with_a_right_key(make_api, one_window):
    api = await make_api(rate_limits={"failed_auth_per_address": "5/minute"})
    wrong = {"Authorization": "Bearer prk_guess"}
    for _ in range(5):
        assert (await api.client.get("/v1/refunds", headers=wrong)).status_code == 401
    r = await api.client.get("/v1/refunds", headers=api.auth("ops"))
    assert_problem(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1


async def test_one_address_is_limited_whatever_keys_it_uses(make_api, one_window):
    api = await make_api(rate_limits={"per_address": "4/minute"})
    statuses = [
        (await api.client.get("/v1/refunds", headers=api.auth(who))).status_code
        for who in ("ops", "store", "store2", "approver1", "admin")
    ]
    assert statuses == [200, 200, 200, 200, 429]
    # Probes are never limited: the load balancer must keep seeing the process.
    assert (await api.client.get("/healthz")).status_code == 200


async def test_console_sign_in_is_limited_harder_and_answered_as_a_page(make_api, one_window):
    api = await make_api(rate_limits={"console_login_per_address": "3/minute"})
    for _ in range(3):
        r = await api.client.post("/console/login", data={"api_key": "prk_wrong"})
        assert r.status_code != 429
    r = await api.client.post("/console/login", data={"api_key": api.keys["ops"]})
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("text/html")
    assert "rate_limited" in r.text and int(r.headers["retry-after"]) >= 1


async def test_webhooks_are_limited_per_account_with_a_429_the_pse_retries(make_api, one_window):
    api = await make_api(rate_limits={"webhooks_per_account": "2/minute"})
    for _ in range(2):
        r = await api.client.post("/v1/webhooks/fake_jp", content=b"{}")
        assert r.status_code == 400
    r = await api.client.post("/v1/webhooks/fake_jp", content=b"{}")
    assert_problem(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    # Another account's webhooks are not held up.
    assert (await api.client.post("/v1/webhooks/other", content=b"{}")).status_code == 400


async def test_limits_can_be_turned_off(make_api):
    api = await make_api(rate_limits={"enabled": False, "per_key": "1/minute"})
    for _ in range(3):
        assert (await api.client.get("/v1/refunds", headers=api.auth("ops"))).status_code == 200


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(make_api):
    api = await make_api(server={"body_timeout_seconds": 0.2})
    app = create_app(api.container)
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b'{"pse_account"', "more_body": True}
        await asyncio.sleep(30)  # the rest never comes
        raise AssertionError("unreachable")

    headers = [
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {api.keys['store']}".encode()),
        (b"content-length", str(len(str(payment_body())) + 100).encode()),
    ]
    sent = await post_raw(app, "/v1/payments", headers, receive)
    assert sent[0]["status"] == 408
    assert b"request_timeout" in sent[1]["body"]
