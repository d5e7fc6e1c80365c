"""The tamper-evident audit trail: records, their canonical form and the hash chain.

Each record's hash covers the previous record's hash and the record's own
canonical serialisation, so editing, deleting or reordering any record breaks
every hash after it. Pure functions: writing and reading are the adapters'.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What happened, before it is placed in the chain."""

    at: datetime
    kind: str
    data: dict[str, Any]
    request_id: str | None = None
    refund_id: str | None = None
    payment_id: str | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An entry sealed in the chain: `body` is exactly what the hash covers."""

    seq: int
    at: datetime
    kind: str
    request_id: str | None
    refund_id: str | None
    payment_id: str | None
    actor: str | None
    body: str
    prev_hash: str
    hash: str

    def data(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def canonical(entry: AuditEntry, seq: int) -> str:
    """One fixed serialisation: sorted keys, no spaces, UTF-8, times in UTC."""
    return json.dumps(
        {
            "seq": seq,
            "at": _iso(entry.at),
            "kind": entry.kind,
            "request_id": entry.request_id,
            "refund_id": entry.refund_id,
            "payment_id": entry.payment_id,
            "actor": entry.actor,
            "data": entry.data,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def seal(entry: AuditEntry, seq: int, prev_hash: str) -> AuditRecord:
    body = canonical(entry, seq)
    return AuditRecord(
        seq=seq,
        at=entry.at,
        kind=entry.kind,
        request_id=entry.request_id,
        refund_id=entry.refund_id,
        payment_id=entry.payment_id,
        actor=entry.actor,
        body=body,
        prev_hash=prev_hash,
        hash=chain_hash(prev_hash, body),
    )


@dataclass(frozen=True, slots=True)
class Break:
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.reason}"


def check(record: AuditRecord, expected_seq: int, expected_prev: str) -> Break | None:
    """Why `record` does not continue the chain, or None when it does."""
    if record.seq != expected_seq:
        if record.seq > expected_seq:
            return Break(expected_seq, f"missing (the next record is {record.seq})")
        return Break(record.seq, f"out of order (expected {expected_seq})")
    if record.prev_hash != expected_prev:
        return Break(record.seq, "does not follow the previous record (deleted or reordered)")
    if chain_hash(record.prev_hash, record.body) != record.hash:
        return Break(record.seq, "its content was changed")
    try:
        fields = json.loads(record.body)
    except ValueError:
        return Break(record.seq, "its content was changed")
    if (
        fields.get("seq") != record.seq
        or fields.get("kind") != record.kind
        or fields.get("refund_id") != record.refund_id
        or fields.get("payment_id") != record.payment_id
        or fields.get("request_id") != record.request_id
        or fields.get("actor") != record.actor
        or fields.get("at") != _iso(record.at)
    ):
        return Break(record.seq, "its columns differ from its sealed content")
    return None
