"""`pse-refunds worker` on its own: it sends refunds an API process left behind,
settles them from the PSE's look-up, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from app.bootstrap import build_container
from app.config import load_settings
from app.services.payments import RegisterPayment
from app.services.refunds import RequestRefund
from tests.e2e.test_chaos import free_port, wait_until_up

pytestmark = pytest.mark.slow


async def test_the_standalone_worker_settles_a_refund_left_behind_and_stops_on_sigterm(
    empty_database, tmp_path, monkeypatch
):
    sandbox_port = free_port()
    config = tmp_path / "pse-refunds.toml"
    config.write_text(
        f"""
database_url = "{empty_database}"
log_format = "json"

[accounts.sandbox]
provider = "sandbox"
api_key = "sk_w"
base_url = "http://127.0.0.1:{sandbox_port}"
timeout_seconds = 2

[worker]
poll_interval_seconds = 0.1
approved_grace_seconds = 0
pending_check_after_seconds = 0.5
resolve_backoff_seconds = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
    env.update(PSE_REFUNDS_CONFIG_FILE=str(config), PYTHONPATH=os.getcwd())
    monkeypatch.setenv("PSE_REFUNDS_CONFIG_FILE", str(config))

    def cli(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    assert cli("migrate").wait(timeout=60) == 0
    sandbox = cli(
        "sandbox", "--port", str(sandbox_port), "--api-key", "sk_w", "--settle-delay", "0.1"
    )
    worker = None
    try:
        await wait_until_up(f"http://127.0.0.1:{sandbox_port}/_control/faults")
        container = build_container(load_settings())
        await container.submitter.aclose()  # this "API process" never sends it
        payment, _ = await container.payments.register(
            RegisterPayment("sandbox", "pay_w1", None, 5000, "JPY", container.deps.clock.now()),
            "test",
        )
        from app.domain.models import Actor, RefundReason

        refund = await container.refunds.request(
            RequestRefund(payment.id, 1200, RefundReason.OTHER), Actor("k", "shop")
        )
        assert refund.status.value == "approved"

        worker = cli("worker")
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            status = (await container.refunds.get(refund.id)).status.value
            if status == "succeeded":
                break
            await asyncio.sleep(0.2)
        assert status == "succeeded"
        paid = await container.payments.get(payment.id)
        assert paid.refunded_amount == 1200 and paid.reserved_amount == 0
        await container.aclose()

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
        output = worker.stdout.read()
        assert "worker.started" in output and "worker.stopped" in output
    finally:
        for proc in (worker, sandbox):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
