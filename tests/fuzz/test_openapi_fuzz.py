"""Fuzzing of the HTTP contract: every operation of `/openapi.json`, driven by
schemathesis (positive and negative data, plus the schema's own examples) with
the key of each role and with none, must never answer 5xx and never contradict
its own schema: documented status code, content type, headers and body.

The app is served in-process. Schemathesis calls ASGI apps on an event loop of
its own, in another thread, while the app's database pool belongs to the test
session's loop: `OnLoop` carries each request across, and the generator runs in
a worker thread so the session loop stays free to serve. Generated cases are
steered toward seeded objects (payments, refunds in several states, events, a
reconciliation) and toward edge values (see `aim`). Failures are collected
rather than raised, so one run reports every operation that misbehaves, each
with the request that showed it (API keys masked).

Nothing is excluded. `POST /v1/webhooks/{pse_account}` is fuzzed like the rest,
without its positive path: the signature header is not part of the contract
(each provider names its own), so no generated request carries a valid one,
and every answer must be a 4xx.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
import structlog
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.openapi.checks import UndefinedStatusCode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.app import create_app
from app.logs import configure_logging
from tests.api.helpers import refund, register

pytestmark = pytest.mark.postgres

# The key used for each role (names from `KEY_SPECS` in tests/conftest.py).
ROLES = {"store": "store", "approver": "approver3", "ops": "ops", "admin": "admin"}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# Per operation, key and generation mode: about 25 operations x (4 roles x 2
# modes + anonymous), 2,700 requests. Generating them is most of the file's
# time (schemathesis's filtered strategies): 12 examples take about 100 s on
# two slow cores, 20 took 130 s, a fifth of the whole suite.
MAX_EXAMPLES = 12

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # Failures are collected, not raised: nothing to shrink or replay.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)
EXAMPLE_SETTINGS = settings(FUZZ_SETTINGS, max_examples=1)

MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)

REQUEST_TIMEOUT = 10.0
EXCERPT = 400
SAMPLES = 2


class OnLoop:
    """An ASGI app that serves every request with `app` on `loop`, whatever loop
    it is called on. The lifespan is not forwarded: the `make_api` fixture owns
    the container (and the session's database engine) and closes what it opened."""

    def __init__(self, app: Callable[..., Awaitable[None]], loop: asyncio.AbstractEventLoop):
        self.app = app
        self.loop = loop

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        caller = asyncio.get_running_loop()

        def from_caller(channel: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(*args: Any) -> Any:
                future = asyncio.run_coroutine_threadsafe(channel(*args), caller)
                return await asyncio.wrap_future(future)

            return call

        served = asyncio.run_coroutine_threadsafe(
            self.app(scope, from_caller(receive), from_caller(send)), self.loop
        )
        await asyncio.wrap_future(served)


@dataclass
class Finding:
    operation: str
    problem: str
    status: str
    roles: set[str] = field(default_factory=set)
    modes: set[str] = field(default_factory=set)
    samples: list[str] = field(default_factory=list)
    count: int = 0

    def __str__(self) -> str:
        return "\n".join(
            [
                f"{self.operation} -> {self.status}: {self.problem}",
                f"  {self.count} time(s), as {', '.join(sorted(self.roles))}"
                f" ({', '.join(sorted(self.modes))} data); for example:",
                *(f"  - {sample}" for sample in self.samples),
            ]
        )


async def seed(api) -> dict[str, list[str]]:
    """Real objects in several states, so generated ids sometimes exist."""
    card = await register(api, amount=500_000)
    konbini = await register(api, amount=20_000, payment_method="konbini")
    old = await register(api, amount=30_000, captured_at="2025-01-10T10:00:00Z")
    usd = await register(
        api,
        amount=12_000,
        currency="USD",
        settlement_currency="JPY",
        settlement_rate="151.25",
        risk_level="high",
    )
    refunds = []
    for payment, amount in (
        (card, 3_000),  # approved, then pending at the PSE
        (card, 20_000),  # one approval needed
        (card, 150_000),  # two approvals, one of level 2
        (konbini, 5_000),  # offline_required: cash method
        (old, 4_000),  # offline_required: past the window
        (usd, 1_000),  # high risk: one approval, converted for the tiers
    ):
        created = await refund(api, payment["id"], amount)
        assert created.status_code == 201, created.text
        refunds.append(created.json()["id"])
    await api.settle()
    # Disputes: one open (its payment's refund held), one won (its event closed).
    for payment, pse_dispute_id, statuses in (
        (old, "dp_seed_open", ("open",)),
        (konbini, "dp_seed_won", ("open", "won")),
    ):
        for status in statuses:
            reported = await api.client.post(
                f"/v1/payments/{payment['id']}/disputes",
                json={"pse_dispute_id": pse_dispute_id, "status": status, "reason": "fraudulent"},
                headers=api.auth("ops"),
            )
            assert reported.status_code in (200, 201), reported.text

    csv = (
        "pse_refund_id,reference,type,amount,currency,status,settled_at,fee,"
        "settlement_amount,settlement_currency\n"
        f",{refunds[0]},refund,3000,JPY,succeeded,2026-11-27T08:00:00Z,30,,\n"
        "re_unknown,,refund,500,JPY,succeeded,2026-11-27T08:30:00Z,,,\n"
    )
    uploaded = await api.client.post(
        "/v1/reconciliations",
        files={"file": ("settlement.csv", csv.encode(), "text/csv")},
        data={"pse_account": "fake_jp"},
        headers=api.auth("ops"),
    )
    assert uploaded.status_code == 202, uploaded.text
    await api.container.jobs.drain()

    listed = await api.client.get("/v1/events", params={"limit": 200}, headers=api.auth("ops"))
    assert listed.status_code == 200, listed.text
    events = [e["id"] for e in listed.json()["data"]][:8]
    assert events
    payments = [p["id"] for p in (card, konbini, old, usd)]
    return {
        "payment_id": payments,
        "refund_id": refunds,
        "event_id": events,
        "after": events,
        "reconciliation_id": [uploaded.json()["id"]],
        "pse_dispute_id": ["dp_seed_open", "dp_seed_won"],
        "pse_account": ["fake_jp", "other"],
        "currency": ["JPY", "USD"],
        "settlement_currency": ["JPY", "USD"],
        "settlement_rate": ["1", "151.25"],
    }


_fresh_keys = itertools.count(1)

# Values at the edges of what the contract admits, which random generation
# reaches only by luck: instants whose UTC form leaves years 1-9999 (for
# `date-time` fields), and text carrying a NUL (for free-text fields: valid
# JSON, valid in a URL, refused by PostgreSQL).
EDGE_INSTANTS = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _edge_kind(schema: dict[str, Any], spec: dict[str, Any]) -> str | None:
    schema = _resolve(schema, spec)
    for option in schema.get("anyOf") or [schema]:
        option = _resolve(option, spec)
        if option.get("type") != "string" or {"enum", "const", "pattern"} & option.keys():
            continue
        if option.get("format") == "date-time":
            return "instant"
        if "format" not in option:
            return "text"
    return None


def edge_kinds(operation: Any) -> dict[str, str]:
    """Path, query and top-level body fields that take free text or an instant."""
    spec, raw = operation.schema.raw_schema, operation.definition.raw
    fields = {p["name"]: p.get("schema", {}) for p in raw.get("parameters", [])}
    for media in raw.get("requestBody", {}).get("content", {}).values():
        fields.update(_resolve(media.get("schema", {}), spec).get("properties", {}))
    return {name: kind for name, field in fields.items() if (kind := _edge_kind(field, spec))}


def takes_idempotency_key(operation: Any) -> bool:
    parameters = operation.definition.raw.get("parameters", [])
    return any(p["name"] == "Idempotency-Key" for p in parameters)


def aim(
    case: Case,
    data: st.DataObject,
    known: dict[str, list[str]],
    edges: dict[str, str],
    idempotent: bool,
) -> None:
    """Steer a generated case deeper: swap a generated id or code (path, query or
    top-level body field) for a real one, a generated Idempotency-Key for a
    fresh one (past the replays), and a value for an edge value of its kind,
    each only some of the time. Hypothesis tries the first choice of a draw
    most: real ids first, edge values last."""
    containers = [case.path_parameters, case.query]
    if isinstance(case.body, dict):
        containers.append(case.body)
    for container in containers:
        if not container:
            continue
        for name in list(container):
            if name in known:
                choice = data.draw(st.sampled_from([*known[name], None]))
                if choice is not None:
                    container[name] = choice
            value = container[name]
            if not isinstance(value, str) or name not in edges:
                continue
            if data.draw(st.integers(0, 3)) == 3:
                if edges[name] == "instant":
                    container[name] = data.draw(st.sampled_from(EDGE_INSTANTS))
                else:  # in place of the last character: the length stays valid
                    container[name] = value[:-1] + "\x00"
    if idempotent and data.draw(st.booleans()):
        case.headers = {**(case.headers or {}), "Idempotency-Key": f"fuzz-{next(_fresh_keys)}"}


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "…"


def fuzz(app: OnLoop, keys: dict[str, str], known: dict[str, list[str]]) -> list[Finding]:
    """Runs in a worker thread: every operation, every role, positive and negative
    data, plus the schema's own examples."""
    # Reports show requests as sent; only the API keys are masked, below.
    config = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    masks = {secret: f"<{role} key>" for role, secret in keys.items()}
    findings: dict[tuple[str, str, str], Finding] = {}
    answered: dict[str, Counter[int]] = defaultdict(Counter)

    def mask(text: str) -> str:
        for secret, label in masks.items():
            text = text.replace(secret, label)
        return text

    def sent(response: Any) -> str:
        request = response.request
        body = request.body
        if isinstance(body, str):
            body = body.encode()
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in ("user-agent", "accept", "accept-encoding", "connection")
            and not name.lower().startswith("x-schemathesis")
        }
        text = f"{request.method} {request.url} headers={headers}"
        if body:
            text += f" body={_excerpt(repr(body))}"
        return mask(text)

    def record(case: Case, role: str, mode: str, problem: str, status: str, sample: str) -> None:
        key = (case.operation.label, problem.split(":")[0], status)
        found = findings.setdefault(key, Finding(case.operation.label, problem, status))
        found.roles.add(role)
        found.modes.add(mode)
        found.count += 1
        if len(found.samples) < SAMPLES and sample not in found.samples:
            found.samples.append(sample)

    def exercise(case: Case, role: str | None, mode: str) -> None:
        headers = {"Authorization": f"Bearer {keys[role]}"} if role else None
        label = role or "anonymous"
        try:
            response = case.call(headers=headers, timeout=REQUEST_TIMEOUT)
        except Exception as exc:
            problem = f"the request raised {type(exc).__name__}: {_excerpt(str(exc))}"
            record(case, label, mode, problem, "-", mask(case.as_curl_command(headers=headers)))
            return
        answered[case.operation.label][response.status_code] += 1
        if case.operation.path.startswith("/v1/webhooks/") and response.status_code < 400:
            problem = "an unsigned webhook was not refused"
            record(case, label, mode, problem, str(response.status_code), sent(response))
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            content_type = (response.headers.get("content-type") or ["-"])[0]
            body = _excerpt(response.content.decode("utf-8", "replace"))
            sample = f"{sent(response)}\n      => {content_type} {body}"
            for failure in group.exceptions:
                if isinstance(failure, UndefinedStatusCode) and response.status_code >= 500:
                    continue  # reported once, as the server error it is
                message = _excerpt(failure.message)
                problem = f"{failure.title}: {message}" if message else failure.title
                record(case, label, mode, problem, str(response.status_code), sample)

    def fuzz_one(operation: Any, role: str | None, mode: GenerationMode) -> None:
        auth = {"Authorization": f"Bearer {keys[role]}"} if role else None
        strategy = operation.as_strategy(generation_mode=mode, headers=auth)
        edges, idempotent = edge_kinds(operation), takes_idempotency_key(operation)

        @FUZZ_SETTINGS
        @given(case=strategy, data=st.data())
        def run(case: Case, data: st.DataObject) -> None:
            aim(case, data, known, edges, idempotent)
            exercise(case, role, mode.value)

        run()

    def try_example(strategy: st.SearchStrategy[Case], role: str | None) -> None:
        @EXAMPLE_SETTINGS
        @given(case=strategy)
        def run(case: Case) -> None:
            exercise(case, role, "schema example")

        run()

    for result in schema.get_all_operations():
        if not hasattr(result, "ok"):
            error = _excerpt(str(result.err()))
            findings[("schema", error, "-")] = Finding("the schema", f"unreadable: {error}", "-")
            continue
        operation = result.ok()
        # Operations that take a key are fuzzed with each role's key, fixed
        # rather than generated so that negative data stays authenticated, and
        # with positive data and no key; /healthz, /readyz, /metrics and the
        # PSE webhooks take none and are fuzzed without one.
        passes: list[tuple[str | None, tuple[GenerationMode, ...]]] = [(None, MODES)]
        if operation.definition.raw.get("security"):
            passes = [(role, MODES) for role in ROLES] + [(None, MODES[:1])]
        examples = operation.get_strategies_from_examples()
        for role, modes in passes:
            for mode in modes:
                try:
                    fuzz_one(operation, role, mode)
                except Unsatisfiable:
                    # Nothing to make invalid (no parameter or body but the key).
                    assert mode == GenerationMode.NEGATIVE, operation.label
            for example in examples:
                try_example(example, role)
    # Shown with the findings: how deep the run got, per operation.
    for label, statuses in answered.items():
        print(f"{label}: {dict(sorted(statuses.items()))}")
    return list(findings.values())


@contextmanager
def production_logs() -> Iterator[None]:
    """JSON log lines, as in production, warnings and errors only, for the run:
    the default console renderer draws every 5xx's traceback with its locals,
    which takes seconds, and thousands of access lines would bury the errors."""
    configured, saved = structlog.is_configured(), structlog.get_config()
    configure_logging("json", "warning")
    try:
        yield
    finally:
        if configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


async def test_no_operation_answers_5xx_or_contradicts_its_schema(make_api):
    # Limits high enough that the fuzzer explores the routes rather than the
    # 429 in front of them (tests/api/test_abuse.py proves the limits).
    api = await make_api(
        rate_limits={"per_key": "100000/second", "failed_auth_per_address": "100000/minute"}
    )
    try:
        known = await seed(api)
        app = OnLoop(create_app(api.container), asyncio.get_running_loop())
        keys = {role: api.keys[name] for role, name in ROLES.items()}
        with production_logs():
            findings = await asyncio.to_thread(fuzz, app, keys, known)
    finally:
        await api.settle()
        await api.container.jobs.drain()
    if findings:
        report = "\n\n".join(str(finding) for finding in findings)
        pytest.fail(f"{len(findings)} contract violation(s):\n\n{report}", pytrace=False)
