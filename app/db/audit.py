"""The hash-chained audit log: each entry's hash covers its content and the previous hash.

hash_n = sha256(prev_hash ‖ seq ‖ created_at ‖ batch_id ‖ payload), with prev_hash of the
first entry = 64 zeros. Editing, removing or reordering any entry breaks every hash after it;
`verify_chain` names the first entry that does not check out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import AuditEntry

GENESIS = "0" * 64


def canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def entry_hash(*, prev_hash: str, seq: int, created_at: str, batch_id: str, payload: str) -> str:
    h = hashlib.sha256()
    for part in (prev_hash, str(seq), created_at, batch_id, payload):
        h.update(part.encode())
        h.update(b"\x1f")  # a separator no field contains, so fields cannot shift into each other
    return h.hexdigest()


def append_entry(session: Session, *, batch_id: str, created_at: str, payload: dict[str, Any]) -> AuditEntry:
    """Append inside the caller's transaction (which also holds the head's CAS, so appends serialise)."""
    last = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
    seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
    text = canonical(payload)
    entry = AuditEntry(seq=seq, created_at=created_at, batch_id=batch_id, payload=text, prev_hash=prev,
                       hash=entry_hash(prev_hash=prev, seq=seq, created_at=created_at, batch_id=batch_id,
                                       payload=text))
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_chain(session: Session) -> ChainReport:
    prev, expected_seq, n = GENESIS, 1, 0
    for e in session.scalars(select(AuditEntry).order_by(AuditEntry.seq)):
        n += 1
        if e.seq != expected_seq:
            return ChainReport(False, n, e.seq, f"entry {expected_seq} is missing (next is {e.seq})")
        if e.prev_hash != prev:
            return ChainReport(False, n, e.seq, "prev_hash does not match the previous entry (removed or reordered)")
        if entry_hash(prev_hash=e.prev_hash, seq=e.seq, created_at=e.created_at, batch_id=e.batch_id,
                      payload=e.payload) != e.hash:
            return ChainReport(False, n, e.seq, "content does not match its hash (edited)")
        try:
            json.loads(e.payload)
        except json.JSONDecodeError:
            return ChainReport(False, n, e.seq, "payload is not JSON")
        prev, expected_seq = e.hash, expected_seq + 1
    return ChainReport(True, n)
