"""`pse-refunds serve` with no configuration: the embedded demo, as a newcomer uses it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": os.getcwd()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    banner: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail("the demo exited:\n" + "".join(banner))
            banner.append(line)
            if "Try it:" in line:
                break
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        keys = dict(
            re.findall(r"^\s{4}(\S+)(?: \(level \d\))?\s+(prk_\S+)$", "".join(banner), re.M)
        )
        yield base, keys, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_status(client, refund_id, headers, wanted, seconds=15.0):
    deadline = time.monotonic() + seconds
    status = None
    while time.monotonic() < deadline:
        status = client.get(f"/v1/refunds/{refund_id}", headers=headers).json()["status"]
        if status == wanted:
            return
        time.sleep(0.1)
    pytest.fail(f"refund {refund_id} is {status}, not {wanted}")


def test_the_embedded_demo_takes_a_newcomer_from_payment_to_succeeded_refund(demo):
    base, keys, workdir = demo
    assert set(keys) == {"store", "approver-1", "approver-2", "ops", "admin"}
    assert (workdir / "pse-refunds.db").exists()
    store = {"Authorization": f"Bearer {keys['store']}"}
    approver = {"Authorization": f"Bearer {keys['approver-1']}"}
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        assert "/v1/refunds/{refund_id}/approve" in spec["paths"]
        assert client.get("/readyz").status_code == 200

        payment = client.post(
            "/v1/payments",
            json={
                "pse_account": "sandbox",
                "pse_payment_id": "pay_demo_1",
                "amount": 50000,
                "currency": "JPY",
                "captured_at": "2026-11-01T10:00:00Z",
            },
            headers=store,
        ).json()

        small = client.post(
            "/v1/refunds",
            json={"payment_id": payment["id"], "amount": 3000, "reason": "requested_by_customer"},
            headers={**store, "Idempotency-Key": "demo-1"},
        ).json()
        assert small["status"] == "approved"
        wait_for_status(client, small["id"], store, "succeeded")

        large = client.post(
            "/v1/refunds",
            json={"payment_id": payment["id"], "amount": 20000, "reason": "order_canceled"},
            headers={**store, "Idempotency-Key": "demo-2"},
        ).json()
        assert large["status"] == "pending_approval"
        r = client.post(f"/v1/refunds/{large['id']}/approve", json={"note": "ok"}, headers=approver)
        assert r.status_code == 200 and r.json()["status"] == "approved"
        wait_for_status(client, large["id"], store, "succeeded")

        final = client.get(f"/v1/refunds/{large['id']}", headers=store).json()
        assert [h["status"] for h in final["status_history"]] == [
            "pending_approval",
            "approved",
            "submitting",
            "pending",
            "succeeded",
        ]
        assert final["status_history"][-1]["actor"] == "pse:sandbox webhook"
        paid = client.get(f"/v1/payments/{payment['id']}", headers=store).json()
        assert paid["refunded_amount"] == 23000 and paid["reserved_amount"] == 0
