"""Prometheus metrics at /metrics: never served to whoever asks. Not at all by
default; with `metrics_token`, to scrapes that carry it; with `metrics_port`,
on that port alone."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import httpx
import pytest
import uvicorn

from app.api import metrics_access
from app.api.app import create_app
from app.cli.serve import metrics_socket
from tests.api.helpers import refund, register
from tests.e2e.test_chaos import free_port

TOKEN = "metrics-token-0123456789abcdef"
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def scraped(make_api):
    """An API whose metrics are read with TOKEN."""
    return await make_api(metrics_token=TOKEN)


async def scrape(api) -> str:
    r = await api.client.get("/metrics", headers=SCRAPER)
    assert r.status_code == 200, r.text
    return r.text


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


async def test_metrics_count_refunds_webhooks_and_open_states(scraped):
    api = scraped
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
    r = await api.client.get("/metrics", headers=SCRAPER)
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
    assert value(await scrape(api), "refunds_stale") == 1


async def test_pse_calls_are_timed_by_outcome(scraped):
    api = scraped
    with pytest.raises(httpx.TransportError):
        await api.container.http.get("http://127.0.0.1:9/v1/refunds", timeout=0.5)
    text = await scrape(api)
    assert value(text, "pse_calls_total", host="127.0.0.1", outcome="connection_error") == 1
    assert (
        value(text, "pse_call_duration_seconds_count", host="127.0.0.1", outcome="connection_error")
        == 1
    )


# -- who may scrape, and where ------------------------------------------------


def assert_problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code
    assert "refunds_created" not in r.text


async def test_without_a_token_or_a_port_metrics_are_not_served_at_all(api):
    assert api.container.settings.metrics_token is None
    assert api.container.settings.metrics_port is None
    assert_problem(await api.client.get("/metrics"), 404, "not_found")
    # Not to an API key either, whatever its role.
    assert_problem(await api.client.get("/metrics", headers=api.auth("admin")), 404, "not_found")
    assert (await api.client.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer metrics-token-0123456789abcdeX",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer prk_an_api_key_is_no_metrics_token",
    ],
)
async def test_with_a_token_a_scrape_without_it_is_refused(scraped, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await scraped.client.get("/metrics", headers=headers)
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in r.text


async def test_with_a_token_an_api_key_does_not_open_the_metrics(scraped):
    assert_problem(
        await scraped.client.get("/metrics", headers=scraped.auth("admin")), 401, "unauthorized"
    )


async def test_the_token_is_compared_in_constant_time(scraped, monkeypatch):
    compared = []

    def compare_digest(a, b):
        compared.append((a, b))
        return real(a, b)

    real = metrics_access.hmac.compare_digest
    monkeypatch.setattr(metrics_access.hmac, "compare_digest", compare_digest)
    assert (await scraped.client.get("/metrics", headers=SCRAPER)).status_code == 200
    assert (
        await scraped.client.get("/metrics", headers={"Authorization": "Bearer x"})
    ).status_code == 401
    assert compared == [(TOKEN.encode(), TOKEN.encode()), (b"x", TOKEN.encode())]


async def test_the_scheme_is_case_insensitive_and_the_token_is_not(scraped):
    assert (
        await scraped.client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
    ).status_code == 200
    wrong_case = {"Authorization": f"Bearer {TOKEN.upper()}"}
    assert_problem(await scraped.client.get("/metrics", headers=wrong_case), 401, "unauthorized")


async def test_a_refused_scrape_runs_no_query(scraped, monkeypatch):
    async def metrics_text():
        raise AssertionError("the database was queried for a refused scrape")

    monkeypatch.setattr(scraped.container.operations, "metrics_text", metrics_text)
    assert_problem(await scraped.client.get("/metrics"), 401, "unauthorized")


async def test_with_a_metrics_port_the_public_port_never_serves_metrics(make_api):
    api = await make_api(metrics_port=free_port(), metrics_token=TOKEN)
    # The test client's requests come in on port 80: not the metrics port.
    assert_problem(await api.client.get("/metrics", headers=SCRAPER), 404, "not_found")


class Listening:
    """The app served by uvicorn on a public port and on the metrics port, both
    on loopback, as `serve` serves it: one server, two sockets."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.metrics_port = app.state.container.settings.metrics_port
        public = socket.socket()
        public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        public.bind(("127.0.0.1", self.port))
        self.sockets = [public, metrics_socket("127.0.0.1", self.metrics_port)]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Listening:
        self.task = asyncio.create_task(self.server.serve(sockets=self.sockets))
        while not self.server.started:  # noqa: ASYNC110 - uvicorn exposes a flag only
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        assert self.task is not None
        await self.task
        for sock in self.sockets:
            sock.close()

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{port}{path}"


async def test_the_metrics_port_serves_the_metrics_and_nothing_else(make_api):
    api = await make_api(metrics_port=free_port())
    await register(api)
    # trust_env off: no proxy of the environment between the test and loopback.
    async with (
        Listening(create_app(api.container)) as served,
        httpx.AsyncClient(timeout=10, trust_env=False) as client,
    ):
        r = await client.get(served.url(served.metrics_port, "/metrics"))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert value(r.text, "refunds_open", status="pending_approval") == 0
        # The public port: the API, but no metrics.
        assert_problem(await client.get(served.url(served.port, "/metrics")), 404, "not_found")
        r = await client.get(served.url(served.port, "/v1/refunds"), headers=api.auth("ops"))
        assert r.status_code == 200
        # The metrics port: the metrics, and neither the API, whatever the key, nor the rest.
        for path in ("/v1/refunds", "/v1/payments", "/healthz", "/docs", "/console", "/metrics/"):
            r = await client.get(served.url(served.metrics_port, path), headers=api.auth("admin"))
            assert_problem(r, 404, "not_found")
        r = await client.post(served.url(served.metrics_port, "/v1/payments"), json={})
        assert_problem(r, 404, "not_found")


async def test_with_a_port_and_a_token_the_metrics_port_wants_the_token(make_api):
    api = await make_api(metrics_port=free_port(), metrics_token=TOKEN)
    async with (
        Listening(create_app(api.container)) as served,
        httpx.AsyncClient(timeout=10, trust_env=False) as client,
    ):
        metrics = served.url(served.metrics_port, "/metrics")
        assert_problem(await client.get(metrics), 401, "unauthorized")
        assert (await client.get(metrics, headers=SCRAPER)).status_code == 200
        public = served.url(served.port, "/metrics")
        assert_problem(await client.get(public, headers=SCRAPER), 404, "not_found")
