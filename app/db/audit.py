"""The hash-chained audit log: each entry's hash covers its content and the previous hash.

hash_n = sha256(prev_hash ‖ seq ‖ created_at ‖ batch_id ‖ payload), with prev_hash of the
first entry = 64 zeros. Editing, removing or reordering any entry breaks every hash after it;
`verify_chain` names the first entry that does not check out.

A chain alone cannot show that its tail was cut, or that it was rewritten with every later hash
recomputed. Two anchors can: the ledger (each request's audit_seq and each model version must
name an entry that is there), and a head (SEQ:HASH) that an operator exported earlier and kept
elsewhere (`unlearnd audit head`), which the chain must still contain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import AuditEntry, DeletionRequest, Head, ModelVersion

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
    """Append inside the caller's transaction. The head row's lock (taken here if the caller's compare-and-set
    has not taken it) serialises appends on PostgreSQL, also for entries that move no version (an erasure, a
    failed consolidation): two of them no longer race for the same seq. SQLite serialises writers anyway."""
    session.execute(select(Head.id).where(Head.id == 1).with_for_update())
    last = head(session)
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
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


def head(session: Session) -> tuple[int, str] | None:
    """The last entry's (seq, hash): what an operator exports to detect a later truncation or rewrite."""
    last = session.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
    return (last.seq, last.hash) if last else None


def parse_head(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isascii() or not seq.isdigit() or len(digest) != 64 or \
            any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"a head is SEQ:HASH (an integer and 64 hex digits), got {text!r}")
    return int(seq), digest


def verify_chain(session: Session, *, expect_head: tuple[int, str] | None = None) -> ChainReport:
    """The chain's own hashes, then its anchors: the ledger, and EXPECT_HEAD when given. One pass over the log."""
    walk = _walk(session, expect_head[0] if expect_head else None)
    if not walk.report.ok:
        return walk.report
    n = walk.report.entries
    problem = _ledger_anchor(session, n, walk.model_shas) or _head_anchor(expect_head, walk.hash_at_expected, n)
    return ChainReport(False, n, None, problem) if problem else walk.report


def _ledger_anchor(session: Session, n: int, named: set[str]) -> str | None:
    top = session.scalar(select(func.max(DeletionRequest.audit_seq)))
    if top is not None and top > n:
        return f"truncated: a deletion request names audit entry {top}, the chain ends at {n}"
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.seq))
    missing = [v.seq for v in versions if v.sha256 not in named]
    if missing:
        return (f"truncated or rewritten: model version {missing[0]} has no audit entry "
                f"({len(missing)} versions lack one)")
    return None


def _head_anchor(expect: tuple[int, str] | None, found: str | None, n: int) -> str | None:
    if expect is None:
        return None
    seq, digest = expect
    if found is None:
        return f"truncated: the exported head is entry {seq}, the chain ends at {n}"
    if found != digest:
        return f"rewritten: entry {seq} has hash {found[:16]}…, the exported head says {digest[:16]}…"
    return None


@dataclass
class _Walk:
    report: ChainReport
    hash_at_expected: str | None = None  # the hash of the entry an exported head names, if the chain has it
    model_shas: set[str] = field(default_factory=set)  # every model_sha256 the payloads name


def _walk(session: Session, head_seq: int | None) -> _Walk:
    """Check every link; on the way, note the hash at HEAD_SEQ and the model sha256s the payloads name."""
    out = _Walk(ChainReport(True, 0))
    prev, expected_seq, n = GENESIS, 1, 0
    for e in session.scalars(select(AuditEntry).order_by(AuditEntry.seq)):
        n += 1
        if e.seq != expected_seq:
            return _Walk(ChainReport(False, n, e.seq, f"entry {expected_seq} is missing (next is {e.seq})"))
        if e.prev_hash != prev:
            return _Walk(ChainReport(False, n, e.seq,
                                     "prev_hash does not match the previous entry (removed or reordered)"))
        if entry_hash(prev_hash=e.prev_hash, seq=e.seq, created_at=e.created_at, batch_id=e.batch_id,
                      payload=e.payload) != e.hash:
            return _Walk(ChainReport(False, n, e.seq, "content does not match its hash (edited)"))
        try:
            payload = json.loads(e.payload)
        except json.JSONDecodeError:
            return _Walk(ChainReport(False, n, e.seq, "payload is not JSON"))
        sha = payload.get("model_sha256") if isinstance(payload, dict) else None
        if isinstance(sha, str):
            out.model_shas.add(sha)
        if e.seq == head_seq:
            out.hash_at_expected = e.hash
        prev, expected_seq = e.hash, expected_seq + 1
    out.report = ChainReport(True, n)
    return out
