"""Keyword-only ledger functions: every state change of samples, requests and versions.

Callers own the transaction (see `session.transaction`); these functions never commit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.models import DeletionRequest, Head, ModelVersion, RequestSample, Sample
from app.db.session import as_utc
from app.errors import AlreadyForgotten, Conflict, InvalidRequest, NotFound
from app.ids import PublicId, public, text

OPEN_STATES = ("pending", "processing")


# --- samples and versions ------------------------------------------------------------------

def add_samples(session: Session, *, ids: Sequence[int], subjects: dict[int, str] | None = None,
                split: str = "train", keys: Sequence[str] | None = None) -> None:
    """IDS are the store's rows; KEYS the data's own ids for them (default: the row numbers)."""
    subjects = subjects or {}
    keys = keys if keys is not None else [str(int(i)) for i in ids]
    session.bulk_insert_mappings(Sample, [{"id": int(i), "key": k, "subject_id": subjects.get(int(i)),
                                           "state": "active", "split": split}
                                          for i, k in zip(ids, keys, strict=True)])  # type: ignore[arg-type]


def has_split_samples(session: Session) -> bool:
    """Whether the samples of the val, test and shadow splits are in the ledger (publishes before they were
    are backfilled from the served version's splits)."""
    return session.scalar(select(Sample.id).where(Sample.split != "train").limit(1)) is not None


def active_ids(session: Session, *, split: str = "train") -> list[int]:
    return list(session.scalars(select(Sample.id).where(Sample.state == "active", Sample.split == split)
                                .order_by(Sample.id)))


def active_split_of(session: Session, *, ids: Sequence[int]) -> dict[int, str]:
    """id → split for the active ones among IDS."""
    rows = session.execute(select(Sample.id, Sample.split).where(Sample.id.in_(list(ids)), Sample.state == "active"))
    return {int(i): str(sp) for i, sp in rows}


def forgotten_ids(session: Session, *, split: str | None = None) -> list[int]:
    q = select(Sample.id).where(Sample.state == "forgotten")
    if split is not None:
        q = q.where(Sample.split == split)
    return list(session.scalars(q.order_by(Sample.id)))


def sample_state(session: Session, *, sample_id: int) -> str | None:
    return session.scalar(select(Sample.state).where(Sample.id == sample_id))


def sample_by_key(session: Session, *, key: str) -> tuple[int, str] | None:
    """(the store's row, state) of the sample the data calls KEY."""
    row = session.execute(select(Sample.id, Sample.state).where(Sample.key == key)).first()
    return (int(row[0]), str(row[1])) if row else None


def keys_of_rows(session: Session, *, rows: Sequence[int]) -> dict[int, PublicId]:
    """The data's own id of each row, as clients see it."""
    found = session.execute(select(Sample.id, Sample.key).where(Sample.id.in_([int(r) for r in rows])))
    return {int(i): public(k if k is not None else str(i)) for i, k in found}


def head(session: Session) -> ModelVersion | None:
    row = session.get(Head, 1)
    return session.get(ModelVersion, row.version_id) if row else None


def add_version(session: Session, *, sha256: str, parent_id: str | None, path: str, now: datetime,
                metrics: dict[str, Any]) -> ModelVersion:
    seq = (session.scalar(select(func.max(ModelVersion.seq))) or 0) + 1
    v = ModelVersion(id=sha256[:16], seq=seq, sha256=sha256, parent_id=parent_id, path=path, created_at=now,
                     weights_present=True, metrics=metrics)
    session.add(v)
    session.flush()
    return v


def set_head(session: Session, *, version_id: str, expected: str | None, now: datetime) -> bool:
    """Compare-and-set the served version; False when another batch moved it first."""
    if expected is None:
        if session.get(Head, 1) is not None:
            return False
        session.add(Head(id=1, version_id=version_id, updated_at=now))
        session.flush()
        return True
    res = session.execute(update(Head).where(Head.id == 1, Head.version_id == expected)
                          .values(version_id=version_id, updated_at=now))
    return res.rowcount == 1  # type: ignore[attr-defined]


def first_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).order_by(ModelVersion.seq).limit(1)).first()


def versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.seq.desc())))


@dataclass(frozen=True)
class Retirement:
    """Why a version no longer answers: samples it was trained on were forgotten in version `in_version`,
    by `request_id` (None only if that request's row is gone)."""

    in_version: str
    request_id: str | None
    completed_at: datetime | None


def retirement(session: Session, *, version: ModelVersion) -> Retirement | None:
    """The first deletion after VERSION that forgot samples it was trained on, or None: a version answers by
    name only while it holds no forgotten sample."""
    later = select(ModelVersion.id).where(ModelVersion.seq > version.seq)
    vid = session.scalar(select(Sample.forgotten_in).join(ModelVersion, ModelVersion.id == Sample.forgotten_in)
                         .where(Sample.forgotten_in.in_(later)).order_by(ModelVersion.seq).limit(1))
    if vid is None:
        return None
    req = session.scalars(select(DeletionRequest).where(DeletionRequest.model_version_id == vid,
                                                        DeletionRequest.state == "completed")
                          .order_by(DeletionRequest.completed_at, DeletionRequest.id).limit(1)).first()
    return Retirement(vid, req.id if req else None, req.completed_at if req else None)


def answerable_versions(session: Session) -> list[str]:
    """Versions that may answer by name, newest first: none older than the last one that forgot samples (see
    retirement), and with their weights on disk."""
    last = session.scalar(select(func.max(ModelVersion.seq)).join(Sample, Sample.forgotten_in == ModelVersion.id))
    return list(session.scalars(select(ModelVersion.id).where(ModelVersion.seq >= (last or 0),
                                                              ModelVersion.weights_present.is_(True))
                                .order_by(ModelVersion.seq.desc())))


# --- deletion requests ---------------------------------------------------------------------

@dataclass(frozen=True)
class NewRequest:
    request: DeletionRequest
    created: bool  # False: an earlier request with the same Idempotency-Key
    already_forgotten: list[PublicId]


SUBJECT_DIGEST = "hmac-sha256:"


def subject_digest(subject: str, key: bytes) -> str:
    """What a completed request keeps of the subject it named: a keyed digest, so a dictionary of likely
    subject ids cannot reverse it without the deployment's key."""
    return SUBJECT_DIGEST + hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()[:32]


def _body_hash(sample_ids: Sequence[PublicId] | None, subject_id: str | None) -> str:
    ids = sorted({text(i) for i in sample_ids}, key=lambda t: (len(t), t)) if sample_ids is not None else None
    body = {"sample_ids": [public(t) for t in ids] if ids is not None else None, "subject_id": subject_id}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _resolve(session: Session, *, sample_ids: Sequence[PublicId] | None, subject_id: str | None,
             max_ids: int, subject_key: bytes) -> list[int]:
    """The store's rows the request names (by the data's own ids, or by subject)."""
    if (sample_ids is None) == (subject_id is None):
        raise InvalidRequest("give exactly one of sample_ids or subject_id")
    if subject_id is not None:
        ids = list(session.scalars(select(Sample.id).where(Sample.subject_id == subject_id).order_by(Sample.id)))
        if not ids:
            _forgotten_subject(session, subject_id, subject_key)
            raise NotFound(f"no samples belong to subject {subject_id!r}")
        return ids
    assert sample_ids is not None
    miswritten = [i for i in sample_ids if type(public(text(i))) is not type(i) or public(text(i)) != i]
    if miswritten:  # "1" for the integer id 1, or " a" for "a": the data does not call any sample that
        raise InvalidRequest(f"{len(miswritten)} sample ids are not written as the data names them (integer ids "
                             f"as JSON numbers, string ids exactly): {miswritten[:5]}", invalid_ids=miswritten[:100])
    wanted = sorted({text(i) for i in sample_ids})
    if not wanted:
        raise InvalidRequest("sample_ids is empty")
    if len(wanted) > max_ids:
        raise InvalidRequest(f"{len(wanted)} sample ids; at most {max_ids} per request", max_ids=max_ids)
    found = {str(k): int(i) for k, i in session.execute(select(Sample.key, Sample.id).where(Sample.key.in_(wanted)))}
    unknown = [public(k) for k in wanted if k not in found]
    if unknown:
        raise InvalidRequest(f"{len(unknown)} unknown sample ids", unknown_ids=unknown[:100])
    return sorted(int(found[k]) for k in wanted)


def _forgotten_subject(session: Session, subject_id: str, subject_key: bytes) -> None:
    """A subject with no samples left whom a completed request named: say so, and which request it was."""
    done = session.scalar(select(DeletionRequest).where(
        DeletionRequest.subject_id.in_([subject_digest(subject_id, subject_key), subject_id]),
        DeletionRequest.state == "completed").order_by(DeletionRequest.completed_at).limit(1))
    if done is not None:
        raise AlreadyForgotten(f"subject {subject_id!r} was already forgotten by request {done.id}",
                               request_id=done.id, status_url=f"/requests/{done.id}")


def create_request(session: Session, *, sample_ids: Sequence[PublicId] | None, subject_id: str | None,
                   idempotency_key: str | None, api_key_id: str | None, now: datetime, retention_days: int,
                   max_ids: int, subject_key: bytes = b"") -> NewRequest:
    body = _body_hash(sample_ids, subject_id)
    if idempotency_key is not None:
        owner = (DeletionRequest.api_key_id.is_(None) if api_key_id is None
                 else DeletionRequest.api_key_id == api_key_id)
        prior = session.scalar(select(DeletionRequest).where(DeletionRequest.idempotency_key == idempotency_key,
                                                             owner))
        if prior is not None:
            if prior.body_sha256 != body:
                raise Conflict("this Idempotency-Key was used with a different body")
            return NewRequest(prior, False, list(prior.already_forgotten or []))
    ids = _resolve(session, sample_ids=sample_ids, subject_id=subject_id, max_ids=max_ids, subject_key=subject_key)
    gone_rows = list(session.scalars(select(Sample.id).where(Sample.id.in_(ids), Sample.state == "forgotten")))
    gone = _sorted_ids(keys_of_rows(session, rows=gone_rows).values())
    req = DeletionRequest(id=str(uuid.uuid4()), state="pending", subject_id=subject_id,
                          idempotency_key=idempotency_key, body_sha256=body, api_key_id=api_key_id,
                          received_at=now, due_at=now + timedelta(days=retention_days), attempts=0,
                          already_forgotten=gone)
    session.add(req)
    session.flush()
    session.bulk_insert_mappings(RequestSample, [{"request_id": req.id, "sample_id": i} for i in ids])  # type: ignore[arg-type]
    return NewRequest(req, True, gone)


def _sorted_ids(ids: Iterable[PublicId]) -> list[PublicId]:
    return sorted(ids, key=lambda i: (isinstance(i, str), i if isinstance(i, int) else 0, str(i)))


def request_sample_keys(session: Session, *, request_id: str) -> list[PublicId]:
    """The data's own ids of a request's samples, as clients see them."""
    rows = request_sample_ids(session, request_ids=[request_id])[request_id]
    return _sorted_ids(keys_of_rows(session, rows=rows).values())


def get_request(session: Session, *, request_id: str) -> DeletionRequest:
    req = session.get(DeletionRequest, request_id)
    if req is None:
        raise NotFound(f"no deletion request {request_id!r}")
    return req


def request_sample_ids(session: Session, *, request_ids: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {r: [] for r in request_ids}
    rows = session.execute(select(RequestSample.request_id, RequestSample.sample_id)
                           .where(RequestSample.request_id.in_(list(request_ids))).order_by(RequestSample.sample_id))
    for rid, sid in rows:
        out[rid].append(int(sid))
    return out


def pending_summary(session: Session) -> tuple[int, int, datetime | None]:
    """(requests, sample rows, oldest received_at) of pending requests."""
    n, oldest = session.execute(select(func.count(), func.min(DeletionRequest.received_at))
                                .where(DeletionRequest.state == "pending")).one()
    rows = session.scalar(select(func.count()).select_from(RequestSample).join(DeletionRequest)
                          .where(DeletionRequest.state == "pending")) or 0
    return int(n), int(rows), as_utc(oldest)


def backlog(session: Session, *, now: datetime) -> dict[str, float]:
    """What an operator alerts on: pending work, its age, the nearest deadline (negative: overdue), failures."""
    n, _, oldest = pending_summary(session)
    due = session.scalar(select(func.min(DeletionRequest.due_at))
                         .where(DeletionRequest.state.in_(("pending", "processing"))))
    failed = session.scalar(select(func.count(func.distinct(DeletionRequest.batch_id)))
                            .where(DeletionRequest.state == "failed")) or 0
    exact_due = session.scalar(select(func.min(DeletionRequest.due_at))
                               .where(DeletionRequest.state == "completed", DeletionRequest.exact_at.is_(None)))
    nan = float("nan")
    return {"pending": float(n),
            "seconds_to_nearest_approximate_due": (as_utc(exact_due) - now).total_seconds() if exact_due else nan,  # type: ignore[operator]
            "oldest_pending_age_s": (now - oldest).total_seconds() if oldest else 0.0,
            "seconds_to_nearest_due": (as_utc(due) - now).total_seconds() if due else nan,  # type: ignore[operator]
            "failed_batches": float(failed)}


def approximate_by_verdict(session: Session) -> dict[str, int]:
    """Completed requests that are not exact yet, by their batch's verdict (no verdict: "unverified")."""
    rows = session.execute(select(DeletionRequest.verdict, func.count())
                           .where(DeletionRequest.state == "completed", DeletionRequest.exact_at.is_(None))
                           .group_by(DeletionRequest.verdict))
    out: dict[str, int] = {}
    for verdict, n in rows:
        out[verdict or "unverified"] = out.get(verdict or "unverified", 0) + int(n)
    return out


def claim_batch(session: Session, *, batch_id: str, max_samples: int, now: datetime,
                worker_id: str | None = None) -> list[DeletionRequest]:
    """Move pending requests (oldest first, up to MAX_SAMPLES sample rows, at least one request) to
    processing under BATCH_ID. Each row is claimed by a conditional UPDATE, so of several workers
    exactly one wins it, on SQLite and PostgreSQL alike."""
    candidates = session.execute(
        select(DeletionRequest.id, func.count(RequestSample.sample_id)).join(RequestSample)
        .where(DeletionRequest.state == "pending").group_by(DeletionRequest.id, DeletionRequest.received_at)
        .order_by(DeletionRequest.received_at, DeletionRequest.id).limit(1000)).all()
    claimed, total = [], 0
    for rid, n in candidates:
        if claimed and total + n > max_samples:
            break
        res = session.execute(update(DeletionRequest)
                              .where(DeletionRequest.id == rid, DeletionRequest.state == "pending")
                              .values(state="processing", batch_id=batch_id, claimed_at=now, claimed_by=worker_id,
                                      attempts=DeletionRequest.attempts + 1))
        if res.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(rid)
            total += n
    return list(session.scalars(select(DeletionRequest).where(DeletionRequest.id.in_(claimed))))


def release_batch(session: Session, *, batch_id: str, count_attempt: bool) -> int:
    """Give a batch's requests back to pending. COUNT_ATTEMPT False (its commit lost the race for the
    head, no fault of its requests) takes back the attempt its claim counted: a request fails after
    MAX_ATTEMPTS errors, not after losing races to other workers."""
    res = session.execute(update(DeletionRequest)
                          .where(DeletionRequest.batch_id == batch_id, DeletionRequest.state == "processing")
                          .values(state="pending", batch_id=None, claimed_at=None, claimed_by=None,
                                  attempts=DeletionRequest.attempts - (0 if count_attempt else 1)))
    return int(res.rowcount)  # type: ignore[attr-defined]


def release_stale(session: Session, *, now: datetime, lease_s: float) -> int:
    """Requests whose worker died mid-batch (lease expired) go back to pending."""
    cutoff = now - timedelta(seconds=lease_s)
    res = session.execute(update(DeletionRequest)
                          .where(DeletionRequest.state == "processing", DeletionRequest.claimed_at < cutoff)
                          .values(state="pending", batch_id=None, claimed_at=None, claimed_by=None))
    return int(res.rowcount)  # type: ignore[attr-defined]


def complete_batch(session: Session, *, batch_id: str, request_ids: Sequence[str], version_id: str,
                   forget_ids: Sequence[int], audit_seq: int | None, now: datetime,
                   already: dict[str, list[int]], subject_key: bytes, method: str | None = None,
                   verdict: str | None = None, exact: bool = False, derived_pending: bool = False) -> None:
    """Requests → completed and samples → forgotten; raises Conflict if anything moved meanwhile. EXACT: the
    new served version was trained without the samples; DERIVED_PENDING: models derived from deleted shadow
    samples still have to be retrained, so the requests are not exact yet."""
    if forget_ids:
        res = session.execute(update(Sample).where(Sample.id.in_(list(forget_ids)), Sample.state == "active")
                              .values(state="forgotten", forgotten_at=now, forgotten_in=version_id,
                                      subject_id=None))  # the link to a person is personal data too
        if res.rowcount != len(forget_ids):  # type: ignore[attr-defined]
            raise Conflict("some samples of the batch were forgotten by another batch")
    for rid in request_ids:
        rows = already.get(rid, [])
        keys = _sorted_ids(keys_of_rows(session, rows=rows).values()) if rows else []
        res = session.execute(update(DeletionRequest)
                              .where(DeletionRequest.id == rid, DeletionRequest.batch_id == batch_id,
                                     DeletionRequest.state == "processing")
                              .values(state="completed", completed_at=now, model_version_id=version_id,
                                      audit_seq=audit_seq, already_forgotten=keys, method=method,
                                      verdict=verdict, model_exact_at=now if exact else None,
                                      derived_pending=derived_pending,
                                      exact_at=now if exact and not derived_pending else None))
        if res.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict(f"request {rid} is no longer held by batch {batch_id}")
    # a request by subject keeps only a digest of whom it named once done: the name is personal data
    for req in session.scalars(select(DeletionRequest).where(DeletionRequest.id.in_(list(request_ids)),
                                                             DeletionRequest.subject_id.is_not(None))):
        if not req.subject_id.startswith((SUBJECT_DIGEST, "sha256:")):  # type: ignore[union-attr]
            req.subject_id = subject_digest(req.subject_id, subject_key)  # type: ignore[arg-type]


def approximate_requests(session: Session) -> list[DeletionRequest]:
    """Completed requests whose samples the served model may still hold (no retrain without them was served
    yet), oldest due first."""
    return list(session.scalars(select(DeletionRequest)
                                .where(DeletionRequest.state == "completed", DeletionRequest.model_exact_at.is_(None))
                                .order_by(DeletionRequest.due_at, DeletionRequest.id)))


def mark_exact(session: Session, *, request_ids: Sequence[str], now: datetime) -> int:
    """A retrain without these requests' samples is served: the served model is exact for them; the requests are
    exact unless derived models still wait for their rebuild."""
    ids = list(request_ids)
    session.execute(update(DeletionRequest)
                    .where(DeletionRequest.id.in_(ids), DeletionRequest.model_exact_at.is_(None))
                    .values(model_exact_at=now))
    res = session.execute(update(DeletionRequest)
                          .where(DeletionRequest.id.in_(ids), DeletionRequest.exact_at.is_(None),
                                 DeletionRequest.derived_pending.is_(False))
                          .values(exact_at=now))
    return int(res.rowcount)  # type: ignore[attr-defined]


def derived_waiting_among(session: Session, *, request_ids: Sequence[str]) -> int:
    """How many of these requests still wait for the derived models' rebuild."""
    return int(session.scalar(select(func.count()).select_from(DeletionRequest).where(
        DeletionRequest.id.in_(list(request_ids)), DeletionRequest.derived_pending.is_(True))) or 0)


def derived_waiting(session: Session) -> bool:
    """Whether a completed request still waits for the derived models' rebuild."""
    return session.scalar(select(DeletionRequest.id).where(DeletionRequest.derived_pending.is_(True)).limit(1)) \
        is not None


def settle_derived(session: Session, *, excluded: Sequence[int], now: datetime) -> list[str]:
    """The derived models were rebuilt without the shadow samples EXCLUDED: every request waiting on them
    whose shadow samples are all excluded is settled (and exact, if its served model part is). Returns their
    ids."""
    gone = set(int(i) for i in excluded)
    waiting = list(session.scalars(select(DeletionRequest.id).where(DeletionRequest.derived_pending.is_(True))))
    if not waiting:
        return []
    shadow = session.execute(select(RequestSample.request_id, RequestSample.sample_id).join(Sample)
                             .where(RequestSample.request_id.in_(waiting), Sample.split == "shadow"))
    need: dict[str, set[int]] = {r: set() for r in waiting}
    for rid, sid in shadow:
        need[rid].add(int(sid))
    done = [r for r, ids in need.items() if ids <= gone]
    if done:
        session.execute(update(DeletionRequest).where(DeletionRequest.id.in_(done))
                        .values(derived_pending=False, derived_error=None))
        session.execute(update(DeletionRequest)
                        .where(DeletionRequest.id.in_(done), DeletionRequest.model_exact_at.is_not(None),
                               DeletionRequest.exact_at.is_(None))
                        .values(exact_at=now))
    return done


def exact_received(session: Session, *, request_ids: Sequence[str]) -> list[datetime]:
    """When the exact ones among REQUEST_IDS were received (their age at exactness, for the worker's metrics)."""
    return list(session.scalars(select(DeletionRequest.received_at).where(
        DeletionRequest.id.in_(list(request_ids)), DeletionRequest.exact_at.is_not(None))))


def fail_batch(session: Session, *, batch_id: str, reason: str, now: datetime) -> int:
    res = session.execute(update(DeletionRequest)
                          .where(DeletionRequest.batch_id == batch_id, DeletionRequest.state == "processing")
                          .values(state="failed", reason=reason, completed_at=now))
    return int(res.rowcount)  # type: ignore[attr-defined]


def retry_failed(session: Session, *, request_id: str) -> DeletionRequest:
    """Operator action: a failed request goes back to pending."""
    req = get_request(session, request_id=request_id)
    if req.state != "failed":
        raise Conflict(f"request {request_id} is {req.state}, not failed")
    req.state, req.reason, req.batch_id, req.claimed_at, req.completed_at = "pending", None, None, None, None
    return req
