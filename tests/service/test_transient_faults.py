"""Issue 22, D8 and the ledger side of D1/D11 on both databases: transient faults back off without spending a
request's attempts, a batch that keeps killing its worker fails with the reason, exactness waits for the
derived models, subject digests are keyed, idempotency keys belong to their API key."""

from __future__ import annotations

import errno
import hashlib
import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from app.db import ledger, workers
from app.db.models import DeletionRequest, Sample
from app.db.session import transaction, utcnow
from app.errors import InvalidRequest, Unavailable, public_reason
from app.service.deletions import LedgerContext
from app.service.faults import is_transient
from app.service.ledger_pool import guarded
from tests.service.conftest import KEY
from tests.service.conftest import make_request as _request


def test_transient_faults_are_recognised() -> None:
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full")))
    assert is_transient(RedisConnectionError("Connection refused"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("could not write the version") from e
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(ValueError("index -1 is out of bounds"))
    assert not is_transient(OSError(errno.ENOENT, "No such file"))


def test_a_transient_fault_at_the_api_is_a_503_and_a_bad_request_stays_a_4xx(conn) -> None:  # type: ignore[no-untyped-def]
    settings, c = conn
    ctx = LedgerContext(settings, c, None)

    def disk_full(ctx: LedgerContext) -> None:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    def invalid(ctx: LedgerContext) -> None:
        raise InvalidRequest("no")

    with pytest.raises(Unavailable, match="retry"):
        guarded(disk_full, ctx, {})
    with pytest.raises(InvalidRequest):
        guarded(invalid, ctx, {})


def test_transient_faults_spend_no_attempt_and_errors_fail_after_max_attempts(conn) -> None:  # type: ignore[no-untyped-def]
    from worker.batch import abandon, claim

    settings, c = conn
    settings = settings.model_copy(update={"max_attempts": 3})
    rid = _request(c, [1, 2])
    for _ in range(5):  # a full disk, again and again: never a failure, never an attempt spent
        claimed = claim(settings, c)
        assert claimed is not None
        out = abandon(settings, c, claimed, OSError(errno.ENOSPC, "No space left on device"))
        assert out.state == "released" and out.info["transient"]
    with transaction(c.read) as s:
        req = s.get(DeletionRequest, rid)
        assert req.state == "pending" and req.attempts == 0
    for k in range(3):
        claimed = claim(settings, c)
        assert claimed is not None
        out = abandon(settings, c, claimed, ValueError(f"bad weights in {settings.home}/models/x (try {k})"))
    assert out.state == "failed"
    with transaction(c.read) as s:
        req = s.get(DeletionRequest, rid)
        assert req.state == "failed" and "after 3 attempts" in req.reason and str(settings.home) not in req.reason


def test_a_batch_that_kills_its_worker_fails_after_max_deaths(conn) -> None:  # type: ignore[no-untyped-def]
    _settings, c = conn
    rid = _request(c, [3])
    t = utcnow()
    for death in range(1, 6):
        with transaction(c.write) as s:
            workers.register(s, worker_id="w", host="h", pid=1, device="cpu", now=t)
            assert ledger.claim_batch(s, batch_id=f"b{death}", max_samples=10, now=t, worker_id="w")
        t += timedelta(seconds=60)  # silent past the timeout: dead
        with transaction(c.write) as s:
            workers.release_dead(s, now=t, timeout_s=15, max_deaths=5)
            req = s.get(DeletionRequest, rid)
            assert req.state == ("failed" if death == 5 else "pending"), (death, req.state)
    assert "died 5 times" in req.reason


def test_exact_waits_for_the_derived_models(conn) -> None:  # type: ignore[no-untyped-def]
    _settings, c = conn
    r_shadow, r_train = _request(c, [10, 11]), _request(c, [4, 12])
    with transaction(c.write) as s:
        head = ledger.head(s)
        assert head is not None
        ledger.claim_batch(s, batch_id="e", max_samples=2, now=utcnow())
        ledger.complete_batch(s, batch_id="e", request_ids=[r_shadow], version_id=head.id, forget_ids=[10, 11],
                              audit_seq=None, now=utcnow(), already={}, subject_key=KEY, exact=True,
                              derived_pending=True)
        ledger.claim_batch(s, batch_id="u", max_samples=2, now=utcnow())
        ledger.complete_batch(s, batch_id="u", request_ids=[r_train], version_id=head.id, forget_ids=[4, 12],
                              audit_seq=None, now=utcnow(), already={}, subject_key=KEY, exact=False,
                              derived_pending=True)
    with transaction(c.write) as s:
        # the served model never held the shadow samples: only the approximate request waits for a retrain
        assert [r.id for r in ledger.approximate_requests(s)] == [r_train]
        ledger.mark_exact(s, request_ids=[r_train], now=utcnow())  # the consolidation
        assert s.get(DeletionRequest, r_train).exact_at is None  # still inside the references
        assert ledger.settle_derived(s, excluded=[10, 11], now=utcnow()) == [r_shadow]  # 12 is not excluded yet
        assert s.get(DeletionRequest, r_shadow).exact_at is not None
        assert ledger.settle_derived(s, excluded=[10, 11, 12], now=utcnow()) == [r_train]
        assert s.get(DeletionRequest, r_train).exact_at is not None
        assert ledger.forgotten_ids(s, split="shadow") == [10, 11, 12]


def test_subject_digests_are_keyed(conn) -> None:  # type: ignore[no-untyped-def]
    _settings, c = conn
    with transaction(c.write) as s:
        s.get(Sample, 5).subject_id = "subject-0100"
    with transaction(c.write) as s:
        rid = ledger.create_request(s, sample_ids=None, subject_id="subject-0100", idempotency_key=None,
                                    api_key_id=None, now=utcnow(), retention_days=30, max_ids=10).request.id
        ledger.claim_batch(s, batch_id="b", max_samples=10, now=utcnow())
        head = ledger.head(s)
        assert head is not None
        ledger.complete_batch(s, batch_id="b", request_ids=[rid], version_id=head.id, forget_ids=[5],
                              audit_seq=None, now=utcnow(), already={}, subject_key=KEY)
    with transaction(c.read) as s:
        stored = s.get(DeletionRequest, rid).subject_id
    assert stored == ledger.subject_digest("subject-0100", KEY)
    # the 10,000-entry dictionary attack that reversed the old unkeyed digest finds nothing without the key
    plain = {"sha256:" + hashlib.sha256(f"subject-{k:04d}".encode()).hexdigest()[:32] for k in range(10_000)}
    assert stored not in plain and ledger.subject_digest("subject-0100", b"x" * 32) != stored


def test_idempotency_keys_belong_to_their_api_key(conn) -> None:  # type: ignore[no-untyped-def]
    _settings, c = conn
    a = _request(c, [1], key="same", api_key="key_a")
    assert _request(c, [1], key="same", api_key="key_a") == a  # a replay
    b = _request(c, [1], key="same", api_key="key_b")  # another client: another request, not a 409
    assert b != a


def test_public_reasons_carry_no_paths() -> None:
    text = "ModelLoadError: version x: /srv/unlearnd/var/models/0123abcd/model.safetensors is truncated"
    assert public_reason(text) == "ModelLoadError: version x: <path> is truncated"
    assert public_reason("accuracy 0.91 < 0.95 (after 3 attempts)") == "accuracy 0.91 < 0.95 (after 3 attempts)"


def test_a_verifier_without_deleted_ids_never_scores_them(digits, digits_model_dir) -> None:  # type: ignore[no-untyped-def]
    """Verification never indexes a forgotten sample: an erased row raises a clear error, not index -1."""
    from app.errors import VerifierError
    from app.ml.models.checkpoint import load_model_dir
    from app.ml.training.recipe import train_config_from_meta
    from app.ml.verify.base import BuildInputs, VerifierConfig
    from app.ml.verify.store import load_verifier
    from app.ml.workflows.pipeline import attach_verifier

    md = load_model_dir(digits_model_dir)
    home = Path(str(digits_model_dir) + "-verifier")
    attach_verifier(home, BuildInputs(md.model, digits, md.splits, md.model_cfg, train_config_from_meta(md.meta),
                                      3), "lira", VerifierConfig(n_refs=2), progress=False)
    v = load_verifier(home / "verifier")
    erased = np.asarray([int(v.calib_ids[0]), int(v.ref_ids[-1])])
    store = type(digits)(name=digits.name, x=digits.x.copy(), y=digits.y.copy(), num_classes=digits.num_classes,
                         n_pool=digits.n_pool)
    store.y[erased] = -1
    with pytest.raises(VerifierError, match="erased"):
        v.assess(md.model, store, np.sort(md.splits.train)[:20])
    slim = v.without(erased)
    out = slim.assess(md.model, store, np.sort(md.splits.train)[:20])
    assert out["n"] == 20 and not np.isin(erased, slim.calib_ids).any() and not np.isin(erased, slim.ref_ids).any()
