"""Prometheus metrics at /metrics."""

from __future__ import annotations

import json
import re

from tests.api.helpers import refund, register


def value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"{name} {labels} not in metrics")


async def test_metrics_count_refunds_webhooks_and_open_states(api):
    payment = await register(api)
    await refund(api, payment["id"], 100)
    await refund(api, payment["id"], 20000)  # waits for approval
    await api.settle()
    await api.client.post(
        "/v1/webhooks/fake_jp",
        content=json.dumps(
            {
                "id": "e1",
                "type": "refund.succeeded",
                "refund": {"id": "fre_1", "state": "succeeded"},
            }
        ).encode(),
        headers={"x-fake-signature": "ok"},
    )
    await api.client.post("/v1/webhooks/fake_jp", content=b"{}", headers={"x-fake-signature": "no"})
    r = await api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert value(text, "refunds_created_total", pse_account="fake_jp", status="approved") == 1
    assert (
        value(text, "refunds_created_total", pse_account="fake_jp", status="pending_approval") == 1
    )
    assert value(text, "refunds_finished_total", pse_account="fake_jp", status="succeeded") == 1
    assert value(text, "pse_webhooks_received_total", pse_account="fake_jp", result="ok") == 1
    assert (
        value(
            text, "pse_webhooks_received_total", pse_account="fake_jp", result="invalid_signature"
        )
        == 1
    )
    assert value(text, "refunds_open", status="pending_approval") == 1
    assert value(text, "refunds_open", status="unknown") == 0
    assert value(text, "refunds_stale") == 0
    api.clock.advance(hours=25)
    assert value((await api.client.get("/metrics")).text, "refunds_stale") == 1


async def test_pse_calls_are_timed_by_outcome(api):
    import httpx
    import pytest

    with pytest.raises(httpx.TransportError):
        await api.container.http.get("http://127.0.0.1:9/v1/refunds", timeout=0.5)
    text = (await api.client.get("/metrics")).text
    assert value(text, "pse_calls_total", host="127.0.0.1", outcome="connection_error") == 1
    assert (
        value(text, "pse_call_duration_seconds_count", host="127.0.0.1", outcome="connection_error")
        == 1
    )
