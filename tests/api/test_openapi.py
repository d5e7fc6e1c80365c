"""The OpenAPI document is the contract ops and integrators read at /docs."""

from __future__ import annotations

import re

import pytest


async def test_every_operation_is_documented_with_summary_description_and_errors(api):
    spec = (await api.client.get("/openapi.json")).json()
    operations = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    assert len(operations) >= 13
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        assert op.get("summary"), where
        assert op.get("description"), where
        if path.startswith("/v1/") and not path.startswith("/v1/webhooks"):
            assert "401" in op["responses"], where
            assert "application/problem+json" in op["responses"]["401"]["content"], where


async def test_request_bodies_and_answers_carry_examples(api):
    spec = (await api.client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name in ("PaymentIn", "PaymentOut", "RefundIn", "RefundOut", "OfflinePayoutIn"):
        assert schemas[name].get("examples"), name


async def test_the_refund_creation_documents_its_rules_and_codes(api):
    spec = (await api.client.get("/openapi.json")).json()
    op = spec["paths"]["/v1/refunds"]["post"]
    text = str(op["responses"])
    for code in (
        "amount_exceeds_refundable",
        "amount_exceeds_limit",
        "idempotency_key_reused",
        "idempotency_key_in_use",
        "idempotency_key_required",
    ):
        assert code in text, code
    assert any(p["name"] == "Idempotency-Key" for p in op["parameters"])


async def test_swagger_and_redoc_are_served(api):
    assert (await api.client.get("/docs")).status_code == 200
    assert (await api.client.get("/redoc")).status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_load_nothing_from_another_host(api, page):
    # On a closed network a page that pulls its script from a CDN stays blank.
    html = (await api.client.get(page)).text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources, html
    for source in sources:
        assert source.startswith("/"), source
        r = await api.client.get(source)
        assert r.status_code == 200 and len(r.content) > 1000, source
    assert "googleapis" not in html and "cdn." not in html
