"""Disputes (chargebacks) end to end through the sandbox PSE's webhooks: the
standalone sandbox and `pse-refunds serve` as subprocesses on loopback, on
PostgreSQL. Disputes are raised and moved with the sandbox's
`POST /_control/disputes`, which sends signed `dispute.opened|closed`
webhooks to the service; nothing is reported through the service's API.

One payment takes a refund that waits for an approval: a dispute opened on
it refuses new refunds (nothing reaches the PSE), holds the waiting refund
(no approval goes through), and once won releases it, to be approved and
paid at the PSE. A second payment's dispute is lost: what it took counts
against the payment. The store reads both in its event feed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.sandbox.config import new_webhook_secret
from tests.e2e import chaos_support as support

pytestmark = pytest.mark.slow

AMOUNT = 10_000
HELD_REFUND = 8_000  # above the approval tier: waits for an approver
LOST_DISPUTE = 4_000
DISPUTE_EVENTS = ["payment.dispute_opened", "payment.dispute_closed"]

POLICY = """
[policy]
on_dispute = "hold"

[[policy.approval_tiers]]
currency = "JPY"
above = 5000
approvals = 1
min_level = 1
"""


def approver_key(workdir: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        support.cli_command(
            "keys",
            "create",
            "--name",
            "approver",
            "--role",
            "approver",
            "--approval-level",
            "1",
            "--json",
        ),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)["key"]


def just_captured() -> str:
    return (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def eventually(
    read: Callable[[], Awaitable[Any]],
    done: Callable[[Any], bool],
    what: str,
    *,
    seconds: float = 10,
    logs: Callable[[], str] = lambda: "",
) -> Any:
    """`read()` again and again until `done` says yes to what it returned."""
    deadline = time.monotonic() + seconds
    while True:
        seen = await read()
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds}s; last seen {seen!r}\n{logs()}")
        await asyncio.sleep(0.05)


def problem_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    code: str = response.json()["code"]
    return code


async def test_disputes_raised_at_the_sandbox_hold_release_and_count_by_signed_webhooks(
    fresh_database, tmp_path
):
    sandbox_port, api_port = support.free_port(), support.free_port()
    whsec = new_webhook_secret()
    config = support.write_config(
        tmp_path,
        database_url=fresh_database,
        sandbox_port=sandbox_port,
        whsec=whsec,
        submitting_grace_seconds=2,
        lease_seconds=15,
    )
    config.write_text(config.read_text() + POLICY)
    env = support.service_env(config)
    procs: list[subprocess.Popen] = []

    def logs() -> str:
        return support.logs(tmp_path, 3000)

    try:
        procs.append(
            support.spawn(
                tmp_path,
                env,
                "sandbox",
                *support.sandbox_args(
                    port=sandbox_port,
                    webhook_url=f"http://127.0.0.1:{api_port}/v1/webhooks/sandbox",
                    whsec=whsec,
                    seed=1,
                    faults={},
                ),
            )
        )
        procs.append(support.spawn(tmp_path, env, "serve", "serve", "--port", str(api_port)))
        store = {"Authorization": f"Bearer {support.create_key(tmp_path, env)}"}
        approver = {"Authorization": f"Bearer {approver_key(tmp_path, env)}"}
        api_url = f"http://127.0.0.1:{api_port}"
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        await support.wait_until_up(f"{sandbox_url}/_control/faults")
        await support.wait_until_up(f"{api_url}/readyz")
        async with (
            httpx.AsyncClient(base_url=api_url, timeout=10) as client,
            httpx.AsyncClient(base_url=sandbox_url, timeout=10) as sandbox,
        ):

            async def register(pse_id: str) -> dict:
                r = await sandbox.post(
                    "/v1/payments",
                    json={"id": pse_id, "amount": AMOUNT, "currency": "JPY"},
                    headers=support.SANDBOX_AUTH,
                )
                assert r.status_code == 201, r.text
                r = await client.post(
                    "/v1/payments",
                    json={
                        "pse_account": "sandbox",
                        "pse_payment_id": pse_id,
                        "amount": AMOUNT,
                        "currency": "JPY",
                        "captured_at": just_captured(),
                    },
                    headers=store,
                )
                assert r.status_code == 201, r.text
                return r.json()

            async def payment(payment_id: str) -> dict:
                r = await client.get(f"/v1/payments/{payment_id}", headers=store)
                assert r.status_code == 200, r.text
                return r.json()

            async def refund(refund_id: str) -> dict:
                r = await client.get(f"/v1/refunds/{refund_id}", headers=store)
                assert r.status_code == 200, r.text
                return r.json()

            async def raise_dispute(pse_id: str, status: str, **fields: Any) -> dict:
                r = await sandbox.post(
                    "/_control/disputes", json={"payment_id": pse_id, "status": status, **fields}
                )
                assert r.status_code == (200 if "dispute_id" in fields else 201), r.text
                return r.json()

            async def pse_refunds_of(pse_id: str) -> list[dict]:
                listing = (await sandbox.get("/_control/refunds")).json()["data"]
                return [r for r in listing if r["payment_id"] == pse_id]

            def approve(refund_id: str) -> Awaitable[httpx.Response]:
                return client.post(
                    f"/v1/refunds/{refund_id}/approve", json={"note": "ok"}, headers=approver
                )

            # -- a payment, and a refund that waits for an approver --------------------
            paid = await register("pay_dsp_won")
            r = await client.post(
                "/v1/refunds",
                json={
                    "payment_id": paid["id"],
                    "amount": HELD_REFUND,
                    "reason": "requested_by_customer",
                },
                headers={**store, "Idempotency-Key": "dsp-held-1"},
            )
            assert r.status_code == 201, r.text
            waiting = r.json()
            assert waiting["status"] == "pending_approval" and waiting["hold"] is None

            # -- the PSE opens a dispute: its signed webhook reaches the service -------
            opened = await raise_dispute("pay_dsp_won", "open", reason="fraudulent")
            assert opened["amount"] == AMOUNT
            disputed = await eventually(
                lambda: payment(paid["id"]),
                lambda p: p["open_disputes"] == 1,
                "the dispute.opened webhook applied",
                logs=logs,
            )
            assert disputed["disputed_amount"] == 0
            assert disputed["reserved_amount"] == HELD_REFUND

            refused = await client.post(
                "/v1/refunds",
                json={"payment_id": paid["id"], "amount": 1000, "reason": "requested_by_customer"},
                headers={**store, "Idempotency-Key": "dsp-while-open-1"},
            )
            assert problem_code(refused, 409) == "payment_disputed"

            held = await refund(waiting["id"])
            assert held["status"] == "pending_approval"
            assert held["hold"] == "payment_disputed"
            assert held["attention"] is not None
            assert "dispute" in held["attention"]["detail"]
            assert problem_code(await approve(waiting["id"]), 409) == "payment_disputed"
            assert (await refund(waiting["id"]))["approvals"] == []

            (recorded,) = (
                await client.get(f"/v1/payments/{paid['id']}/disputes", headers=store)
            ).json()["data"]
            assert recorded["pse_dispute_id"] == opened["id"]
            assert (recorded["status"], recorded["source"]) == ("open", "pse")
            assert recorded["reason"] == "fraudulent" and recorded["amount"] == AMOUNT

            stats = (await sandbox.get("/_control/stats")).json()
            assert stats["refunds"] == 0
            assert stats["payments"]["pay_dsp_won"]["refunds_by_reference"] == {}
            assert await pse_refunds_of("pay_dsp_won") == []

            # -- won at the PSE: the hold is released, the refund approved and paid ----
            await raise_dispute("pay_dsp_won", "won", dispute_id=opened["id"])
            released = await eventually(
                lambda: refund(waiting["id"]),
                lambda r: r["hold"] is None,
                "the dispute.closed (won) webhook released the hold",
                logs=logs,
            )
            assert released["status"] == "pending_approval"  # its approval is still to come
            after_won = await payment(paid["id"])
            assert after_won["open_disputes"] == 0 and after_won["disputed_amount"] == 0

            r = await approve(waiting["id"])
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "approved"
            done = await eventually(
                lambda: refund(waiting["id"]),
                lambda r: r["status"] in support.FINAL,
                "the released refund settled",
                logs=logs,
            )
            assert done["status"] == "succeeded", done
            (at_pse,) = await pse_refunds_of("pay_dsp_won")
            assert at_pse["reference"] == waiting["id"]
            assert (at_pse["amount"], at_pse["status"]) == (HELD_REFUND, "succeeded")
            settled = await payment(paid["id"])
            assert settled["refunded_amount"] == HELD_REFUND
            assert settled["refundable_amount"] == AMOUNT - HELD_REFUND

            # -- a second payment: its dispute is lost ---------------------------------
            charged_back = await register("pay_dsp_lost")
            assert charged_back["refundable_amount"] == AMOUNT
            lost = await raise_dispute("pay_dsp_lost", "open", amount=LOST_DISPUTE)
            await eventually(
                lambda: payment(charged_back["id"]),
                lambda p: p["open_disputes"] == 1,
                "the second dispute.opened webhook applied",
                logs=logs,
            )
            await raise_dispute("pay_dsp_lost", "lost", dispute_id=lost["id"])
            after_lost = await eventually(
                lambda: payment(charged_back["id"]),
                lambda p: p["open_disputes"] == 0,
                "the dispute.closed (lost) webhook applied",
                logs=logs,
            )
            assert after_lost["disputed_amount"] == LOST_DISPUTE
            assert after_lost["refundable_amount"] == AMOUNT - LOST_DISPUTE
            (counted,) = (
                await client.get(f"/v1/payments/{charged_back['id']}/disputes", headers=store)
            ).json()["data"]
            assert (counted["status"], counted["counted_amount"]) == ("lost", LOST_DISPUTE)
            too_much = await client.post(
                "/v1/refunds",
                json={
                    "payment_id": charged_back["id"],
                    "amount": AMOUNT - LOST_DISPUTE + 1,
                    "reason": "requested_by_customer",
                },
                headers={**store, "Idempotency-Key": "dsp-after-lost-1"},
            )
            assert problem_code(too_much, 422) == "amount_exceeds_refundable"

            # -- the store's feed: both disputes, opened and closed with their outcome --
            async def dispute_events() -> list[dict]:
                r = await client.get(
                    "/v1/events",
                    params={"after": "0", "type": DISPUTE_EVENTS, "limit": 50},
                    headers=store,
                )
                assert r.status_code == 200, r.text
                return r.json()["data"]

            events = await eventually(
                dispute_events, lambda e: len(e) >= 4, "four dispute events", logs=logs
            )
            seen = [(e["type"], e["payment_id"], e["data"].get("outcome")) for e in events]
            assert seen == [
                ("payment.dispute_opened", paid["id"], None),
                ("payment.dispute_closed", paid["id"], "won"),
                ("payment.dispute_opened", charged_back["id"], None),
                ("payment.dispute_closed", charged_back["id"], "lost"),
            ]
            assert all(e["refund_id"] is None for e in events)
            assert [e["data"]["pse_dispute_id"] for e in events] == [opened["id"]] * 2 + [
                lost["id"]
            ] * 2
            closed_lost = events[3]["data"]
            assert closed_lost["counted_amount"] == LOST_DISPUTE
            assert closed_lost["payment"]["disputed_amount"] == LOST_DISPUTE
            assert closed_lost["payment"]["refundable_amount"] == AMOUNT - LOST_DISPUTE

            # Every dispute webhook was signed, and taken at the first attempt.
            deliveries = (await sandbox.get("/_control/webhooks")).json()["data"]
            of_disputes = [d for d in deliveries if d["type"].startswith("dispute.")]
            assert [d["type"] for d in of_disputes] == [
                "dispute.opened",
                "dispute.closed",
                "dispute.opened",
                "dispute.closed",
            ]
            assert all(d["delivered"] and d["attempts"] == 1 for d in of_disputes), of_disputes
    except BaseException:
        print(logs())
        raise
    finally:
        support.stop(procs)
