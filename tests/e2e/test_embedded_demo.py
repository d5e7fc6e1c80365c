"""`pse-refunds serve` with no configuration: the embedded demo, as a newcomer
uses it, on the embedded PostgreSQL in ./.pse-refunds/ of the folder it runs in."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unconfigured_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSE_REFUNDS_")}
    return {**env, "PYTHONPATH": os.getcwd()}


@dataclass
class Demo:
    proc: subprocess.Popen
    base: str
    keys: dict[str, str]
    banner: str
    workdir: Path

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def start_demo(workdir: Path) -> Demo:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=workdir,
        env=unconfigured_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    banner: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail("the demo exited:\n" + "".join(banner))
            banner.append(line)
            if line == "\n" and any("Try it:" in seen for seen in banner):
                break  # the end of the banner: its example follows "Try it:"
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    text = "".join(banner)
    keys = dict(re.findall(r"^\s{4}(\S+)(?: \(level \d\))?\s+(prk_\S+)$", text, re.M))
    return Demo(proc, base, keys, text, workdir)


@pytest.fixture
def demos(tmp_path):
    """Start demos in tmp_path; whatever is left running is stopped at the end."""
    started: list[Demo] = []

    def start() -> Demo:
        demo = start_demo(tmp_path)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        if demo.proc.poll() is None:
            demo.stop()


def pgdata(workdir: Path) -> Path:
    return workdir / ".pse-refunds" / "pgdata"


def postgres_running_in(folder: Path) -> bool:
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(folder) in " ".join(proc.info["cmdline"] or ()):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    return True
            except psutil.Error:
                continue
    return False


def just_captured() -> str:
    return (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_for_status(client, refund_id, headers, wanted, seconds=15.0):
    deadline = time.monotonic() + seconds
    status = None
    while time.monotonic() < deadline:
        status = client.get(f"/v1/refunds/{refund_id}", headers=headers).json()["status"]
        if status == wanted:
            return
        time.sleep(0.1)
    pytest.fail(f"refund {refund_id} is {status}, not {wanted}")


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """A command run beside the demo, with no configuration either."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=workdir,
        env=unconfigured_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_embedded_demo_takes_a_newcomer_from_payment_to_succeeded_refund(demos):
    demo = demos()
    assert set(demo.keys) == {"store", "approver-1", "approver-2", "ops", "admin"}
    assert "embedded PostgreSQL in ./.pse-refunds/" in demo.banner
    assert f"Listening: {demo.base}" in demo.banner
    assert (pgdata(demo.workdir) / "PG_VERSION").exists()
    assert not list(demo.workdir.glob("*.db"))
    store, approver = demo.auth("store"), demo.auth("approver-1")
    with httpx.Client(base_url=demo.base, timeout=10) as client:
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        assert "/v1/refunds/{refund_id}/approve" in spec["paths"]
        assert client.get("/readyz").status_code == 200

        # The banner's example is one a newcomer can paste as it is.
        example = re.search(r"-d '(\{.*\})'", demo.banner).group(1)
        r = client.post(
            "/v1/payments", content=example, headers={**store, "Content-Type": "application/json"}
        )
        assert r.status_code == 201, r.text
        payment = r.json()

        small = client.post(
            "/v1/refunds",
            json={"payment_id": payment["id"], "amount": 3000, "reason": "requested_by_customer"},
            headers={**store, "Idempotency-Key": "demo-1"},
        ).json()
        assert small["status"] == "submitting"
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

        # The metrics want the token the banner prints, even in the demo.
        assert client.get("/metrics").status_code == 401
        printed = re.search(
            r"Metrics: +curl -s (\S+) -H 'Authorization: (Bearer \S+)'", demo.banner
        )
        assert printed.group(1) == f"{demo.base}/metrics"
        r = client.get("/metrics", headers={"Authorization": printed.group(2)})
        assert r.status_code == 200 and "refunds_finished_total" in r.text


def test_the_commands_beside_a_running_demo_see_its_database_and_its_sandbox_account(
    demos, tmp_path
):
    demo = demos()
    listed = cli(tmp_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[-1] for line in listed.stdout.splitlines()[1:]}
    assert {"demo-store", "demo-approver-1", "demo-admin"} <= names

    settlement = tmp_path / "settlement.csv"
    settlement.write_text(
        "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
        "settlement_amount,settlement_currency\n"
        f"re_elsewhere,,refund,1000,JPY,succeeded,{just_captured()},,,\n"
    )
    reconciled = cli(tmp_path, "reconcile", "--account", "sandbox", str(settlement))
    assert reconciled.returncode == 0, reconciled.stderr
    assert "(generic, 1 refund rows)" in reconciled.stdout
    assert re.search(r"^\s*missing_in_service +1$", reconciled.stdout, re.M), reconciled.stdout

    audited = cli(tmp_path, "audit", "verify")
    assert audited.returncode == 0, audited.stderr
    assert audited.stdout.startswith("audit chain intact")

    # The commands let go of the server as they ended; the demo still holds it.
    assert postgres_running_in(pgdata(tmp_path))
    with httpx.Client(base_url=demo.base, timeout=10) as client:
        assert client.get("/readyz").status_code == 200
        reconciliation = re.search(r"^reconciliation (\S+) ", reconciled.stdout, re.M).group(1)
        r = client.get(f"/v1/reconciliations/{reconciliation}", headers=demo.auth("ops"))
        assert r.status_code == 200 and r.json()["pse_account"] == "sandbox"


def test_the_demos_data_survives_a_restart_and_stopping_it_stops_postgresql(demos, tmp_path):
    first = demos()
    with httpx.Client(base_url=first.base, timeout=10) as client:
        payment = client.post(
            "/v1/payments",
            json={
                "pse_account": "sandbox",
                "pse_payment_id": "pay_restart_1",
                "amount": 8000,
                "currency": "JPY",
                "captured_at": just_captured(),
            },
            headers=first.auth("store"),
        ).json()
        refund = client.post(
            "/v1/refunds",
            json={"payment_id": payment["id"], "amount": 1500, "reason": "requested_by_customer"},
            headers={**first.auth("store"), "Idempotency-Key": "restart-1"},
        ).json()
        wait_for_status(client, refund["id"], first.auth("store"), "succeeded")

    assert first.stop() == 0
    assert not (pgdata(tmp_path) / "postmaster.pid").exists()
    assert not postgres_running_in(pgdata(tmp_path))

    second = demos()
    with httpx.Client(base_url=second.base, timeout=10) as client:
        # The earlier run's demo keys were revoked; its payment and refund remain.
        assert client.get("/v1/payments", headers=first.auth("store")).status_code == 401
        kept = client.get(f"/v1/payments/{payment['id']}", headers=second.auth("store"))
        assert kept.status_code == 200
        assert kept.json()["refunded_amount"] == 1500
        again = client.get(f"/v1/refunds/{refund['id']}", headers=second.auth("store")).json()
        assert again["status"] == "succeeded"
    assert second.stop() == 0
    assert not postgres_running_in(pgdata(tmp_path))
