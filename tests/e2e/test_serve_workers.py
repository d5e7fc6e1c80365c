"""`pse-refunds serve --workers N`: several API processes on one port and one
PostgreSQL, their metrics merged; refused for the embedded demo, whose sandbox
PSE lives in its one process."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
import uvicorn
from prometheus_client import values as prometheus_values
from typer.testing import CliRunner

from app.cli import cli
from app.cli.serve import SERVED_APP, YOUNG_COLLECTION_THRESHOLD
from app.metrics import Metrics
from tests.e2e.test_chaos import SANDBOX_KEY, Processes, free_port, wait_until_up

FINAL = {"succeeded", "failed", "rejected", "canceled", "offline_paid"}
METRICS_TOKEN = "serve-workers-metrics-token-0123"
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture
def no_configuration(tmp_path, monkeypatch):
    """No config file and no PSE_REFUNDS_ variable; uvicorn must not be reached."""
    for name in list(os.environ):
        if name.startswith("PSE_REFUNDS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    started: list[tuple[object, dict]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw)))
    return started


def serve(*args: str):
    return CliRunner().invoke(cli, ["serve", *args], catch_exceptions=False)


def test_several_processes_are_refused_for_the_embedded_demo(no_configuration, tmp_path):
    result = serve("--workers", "2")
    assert result.exit_code == 2
    assert "--workers 2: the embedded demo runs in one process" in result.stderr
    assert no_configuration == []
    assert not (tmp_path / ".pse-refunds").exists()  # refused before anything started


def test_the_files_server_workers_start_that_many_processes(
    no_configuration, fresh_database, tmp_path
):
    (tmp_path / "pse-refunds.toml").write_text(
        f'database_url = "{fresh_database}"\n[server]\nworkers = 3\n'
    )
    result = serve("--port", "8124")
    assert result.exit_code == 0, result.output
    ((app, options),) = no_configuration
    assert app == SERVED_APP and options["workers"] == 3 and options["port"] == 8124
    assert "PSE Refund Service, 3 processes" in result.stdout
    assert "Listening: http://127.0.0.1:8124" in result.stdout


def test_several_processes_share_the_embedded_postgresql_this_process_holds(
    no_configuration, tmp_path, monkeypatch
):
    (tmp_path / "pse-refunds.toml").write_text("[server]\nworkers = 2\n")  # no database_url
    seen: dict[str, object] = {}

    def run(app, **options):
        # What the API processes are started with: the embedded server is up.
        seen["url"] = os.environ.get("PSE_REFUNDS_DATABASE_URL")
        seen["running"] = (tmp_path / ".pse-refunds" / "pgdata" / "postmaster.pid").exists()

    monkeypatch.setattr(uvicorn, "run", run)
    result = serve()
    assert result.exit_code == 0, result.output
    assert str(seen["url"]).startswith("postgresql+asyncpg://postgres@/refunds?host=")
    assert seen["running"] is True
    assert "Database:  embedded PostgreSQL in ./.pse-refunds/" in result.stdout
    # Stopped with the command, and the processes' variable gone with it.
    assert not (tmp_path / ".pse-refunds" / "pgdata" / "postmaster.pid").exists()
    assert "PSE_REFUNDS_DATABASE_URL" not in os.environ


def test_several_processes_are_not_started_when_an_account_cannot_be_built(
    no_configuration, tmp_path
):
    (tmp_path / "pse-refunds.toml").write_text(
        'database_url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"\n'
        '[accounts.rzp]\nprovider = "razorpay"\napi_key = "k"\n'
    )
    result = serve("--workers", "2")
    assert result.exit_code == 2
    assert "accounts.rzp.options.key_id" in result.stderr
    assert no_configuration == []


def test_one_process_runs_as_before_whatever_the_file_says(
    no_configuration, fresh_database, tmp_path
):
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    (tmp_path / "pse-refunds.toml").write_text(
        f'database_url = "{fresh_database}"\n[server]\nworkers = 4\n'
    )
    result = serve("--workers", "1", "--port", "8123")
    assert result.exit_code == 0, result.output
    ((app, options),) = no_configuration
    assert callable(app) and options["factory"] is True
    assert "workers" not in options and options["port"] == 8123
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") == multiproc_dir


def test_a_served_process_freezes_what_start_up_built_and_collects_less_often(
    no_configuration, fresh_database, tmp_path
):
    (tmp_path / "pse-refunds.toml").write_text(f'database_url = "{fresh_database}"\n')
    result = serve("--port", "8125")
    assert result.exit_code == 0, result.output
    ((factory, _options),) = no_configuration
    made_before = [[]]  # a container the collector tracks, as start-up makes them
    threshold = gc.get_threshold()
    try:
        factory()  # what uvicorn calls in the serving process
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
        assert gc.get_freeze_count() > 0
        assert not any(tracked is made_before for tracked in gc.get_objects())
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_shared_metrics_add_up_across_processes_and_forget_dead_buffers(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONPATH=os.getcwd())

    def process(body: str) -> str:
        script = "import os\nfrom app.metrics import Metrics\n"
        script += "m = Metrics(multiprocess_dir=os.environ['PROMETHEUS_MULTIPROC_DIR'])\n"
        script += textwrap.dedent(body)
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    process(
        """
        m.refunds_created.labels("sandbox", "approved").inc(3)
        m.pse_call_seconds.labels("127.0.0.1", "ok").observe(0.2)
        m.refunds_stale.set(5)
        m.audit_buffered.set(2)
        """
    )
    text = process(
        """
        m.refunds_created.labels("sandbox", "approved").inc(4)
        m.pse_call_seconds.labels("127.0.0.1", "ok").observe(0.02)
        m.refunds_stale.set(1)
        m.audit_buffered.set(7)
        print(m.render().decode())
        """
    )
    assert value(text, "refunds_created_total", pse_account="sandbox", status="approved") == 7
    assert value(text, "pse_call_duration_seconds_count", host="127.0.0.1", outcome="ok") == 2
    assert value(text, "refunds_stale") == 1  # the reading taken last
    assert value(text, "audit_records_buffered") == 7  # the first process has ended


def test_shared_metrics_need_the_directory_before_prometheus_client_is_imported(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(prometheus_values, "ValueClass", prometheus_values.MutexValue)
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(multiprocess_dir=str(tmp_path))


def value(text: str, name: str, **labels: str) -> float:
    return sum(values(text, name, **labels)) if labels else values(text, name)[0]


def values(text: str, name: str, **labels: str) -> list[float]:
    """Every sample of `name` whose labels include `labels`."""
    found = []
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if not match:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append(float(match.group(2)))
    if not found:
        raise AssertionError(f"{name} {labels} not in metrics:\n{text}")
    return found


def process_ids(metrics_parent) -> set[int]:
    """The processes that built their metrics in serve's shared directory."""
    files = metrics_parent.glob("pse-refunds-metrics-*/gauge_livesum_*.db")
    return {int(re.search(r"_(\d+)\.db$", f.name).group(1)) for f in files}


@pytest.mark.slow
async def test_two_processes_share_the_port_the_work_and_the_metrics(fresh_database, tmp_path):
    procs = Processes(tmp_path, fresh_database)
    metrics_parent = tmp_path / "tmp"
    metrics_parent.mkdir()
    procs.env["TMPDIR"] = str(metrics_parent)  # where serve makes its metrics directory
    # The metrics on a listener of their own, which both processes accept on.
    metrics_port = free_port()
    procs.env["PSE_REFUNDS_METRICS_PORT"] = str(metrics_port)
    procs.env["PSE_REFUNDS_METRICS_TOKEN"] = METRICS_TOKEN
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    key = procs.create_key()
    auth = {"Authorization": f"Bearer {key}"}
    api_url = f"http://127.0.0.1:{procs.api_port}"
    sandbox_url = f"http://127.0.0.1:{procs.sandbox_port}"
    procs.sandbox = procs.cli(
        "sandbox",
        "--port",
        str(procs.sandbox_port),
        "--api-key",
        SANDBOX_KEY,
        "--webhook-url",
        f"{api_url}/v1/webhooks/sandbox",
        "--webhook-secret",
        procs.whsec,
        "--settle-delay",
        "0.1",
    )
    procs.api = procs.cli("serve", "--port", str(procs.api_port), "--workers", "2")
    try:
        await wait_until_up(f"{sandbox_url}/_control/faults")
        await wait_until_up(f"{api_url}/readyz")
        deadline = time.monotonic() + 30
        while len(process_ids(metrics_parent)) < 2:  # both processes have started
            assert time.monotonic() < deadline, f"one process: {process_ids(metrics_parent)}"
            await asyncio.sleep(0.1)

        # A connection per request, so that both processes accept some.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=30, limits=limits) as client,
            httpx.AsyncClient(base_url=sandbox_url, timeout=30) as sandbox,
        ):
            payment_ids = []
            for i in range(4):
                pse_id = f"pay_workers_{i}"
                r = await sandbox.post(
                    "/v1/payments",
                    json={"id": pse_id, "amount": 10_000, "currency": "JPY"},
                    headers={"Authorization": f"Bearer {SANDBOX_KEY}"},
                )
                assert r.status_code in (200, 201), r.text
                r = await client.post(
                    "/v1/payments",
                    json={
                        "pse_account": "sandbox",
                        "pse_payment_id": pse_id,
                        "amount": 10_000,
                        "currency": "JPY",
                        "captured_at": "2026-11-20T00:00:00Z",
                    },
                    headers=auth,
                )
                assert r.status_code == 201, r.text
                payment_ids.append(r.json()["id"])

            async def refund(n: int) -> str:
                r = await client.post(
                    "/v1/refunds",
                    json={
                        "payment_id": payment_ids[n % 4],
                        "amount": 500,
                        "reason": "requested_by_customer",
                    },
                    headers={**auth, "Idempotency-Key": f"workers-{n}"},
                )
                assert r.status_code == 201, r.text
                return r.json()["id"]

            created = set(await asyncio.gather(*(refund(n) for n in range(16))))
            assert len(created) == 16

            deadline = time.monotonic() + 60
            while True:
                page = (await client.get("/v1/refunds?limit=200", headers=auth)).json()
                statuses = {r["id"]: r["status"] for r in page["data"]}
                if set(statuses) == created and set(statuses.values()) <= FINAL:
                    break
                assert time.monotonic() < deadline, f"not final in time: {statuses}"
                await asyncio.sleep(0.2)
            assert set(statuses.values()) == {"succeeded"}
            for payment_id in payment_ids:
                payment = (await client.get(f"/v1/payments/{payment_id}", headers=auth)).json()
                assert payment["refunded_amount"] == 2000 and payment["reserved_amount"] == 0

            # Whichever process answers, it counts what both did; never on the public port.
            r = await client.get("/metrics", headers=SCRAPER)
            assert r.status_code == 404 and r.json()["code"] == "not_found"
            assert (await client.get(metrics_url)).status_code == 401
            for _ in range(4):
                r = await client.get(metrics_url, headers=SCRAPER)
                assert r.status_code == 200, r.text
                text = r.text
                assert value(text, "refunds_created_total", pse_account="sandbox") == 16
                assert (
                    value(text, "refunds_finished_total", pse_account="sandbox", status="succeeded")
                    == 16
                )
                assert value(text, "pse_webhooks_received_total", result="ok") >= 16
                assert sum(values(text, "refunds_open")) == 0

        procs.api.send_signal(signal.SIGTERM)
        assert procs.api.wait(timeout=60) == 0
        assert list(metrics_parent.iterdir()) == []  # the metrics directory is gone
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop()


@pytest.mark.slow
async def test_one_process_serves_its_metrics_on_the_metrics_port_alone(fresh_database, tmp_path):
    procs = Processes(tmp_path, fresh_database)
    metrics_port = free_port()
    procs.env["PSE_REFUNDS_METRICS_PORT"] = str(metrics_port)
    key = procs.create_key()
    api_url = f"http://127.0.0.1:{procs.api_port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    procs.api = procs.cli("serve", "--port", str(procs.api_port))
    try:
        await wait_until_up(f"{api_url}/readyz")
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            r = await client.get(f"{metrics_url}/metrics")
            assert r.status_code == 200 and "refunds_created_total" in r.text
            r = await client.get(f"{api_url}/metrics")
            assert r.status_code == 404 and r.json()["code"] == "not_found"
            auth = {"Authorization": f"Bearer {key}"}
            assert (await client.get(f"{api_url}/v1/refunds", headers=auth)).status_code == 200
            r = await client.get(f"{metrics_url}/v1/refunds", headers=auth)
            assert r.status_code == 404 and r.json()["code"] == "not_found"
        procs.api.send_signal(signal.SIGTERM)
        assert procs.api.wait(timeout=60) == 0
        listening = (procs.workdir / "serve-0.log").read_text()
        assert f"Metrics:   {metrics_url}/metrics" in listening
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop()
