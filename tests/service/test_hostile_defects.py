"""Issue 22, hardening round two: each defect found by hostile testing, reproduced against live services.

D1 derived-model rebuilds (the repro, a kill mid-rebuild, a rebuild longer than the job timeout), D2 a lost
ledger, D5 one Idempotency-Key on two API processes, D6 bodies before authentication, D7 a stopped worker's
claims, D9 a copied home, D10 the operator page, D11 digests, Host and leaks. D3 is in test_supervision.py;
D4 and the rest of the corpus run on both databases in test_hostile_corpus.py; D8 in test_transient_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.ml.verify.store import load_verifier
from tests.service_harness import PG_URL, Service, db_url_for, wait_until


def _audit(c: httpx.Client, after: int = 0) -> list[dict]:  # type: ignore[type-arg]
    return [i["payload"] for i in c.get("/audit", params={"offset": after, "limit": 500}).json()["items"]]


def _splits(svc: Service) -> dict[str, list[int]]:
    return json.loads((svc.model_dir / "splits.json").read_text())  # type: ignore[no-any-return]


# --- D1: derived-model rebuilds


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def two_workers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, digits_model_dir: Path,
                redis_url: str) -> Iterator[Service]:
    """Two workers on one ledger: on PostgreSQL the issue saw 80 of 80 concurrent deletions fail, then 772 more."""
    if request.param == "postgres" and not PG_URL:
        pytest.skip("no test PostgreSQL")
    tmp = tmp_path_factory.mktemp(f"d1-{request.param}")
    s = Service(tmp, digits_model_dir, db_url=db_url_for(request.param, tmp / "home"), redis_url=redis_url,
                UNLEARND_DEBUG_REBUILD_DELAY_S=4)
    try:
        s.start_api()
        s.start_worker()
        s.start_worker()
        yield s
    finally:
        s.stop()


def test_the_repro_shadow_then_calibration_then_training_samples(two_workers: Service) -> None:
    """The issue's repro: a shadow sample, then a test sample the verifier calibrates on, then training samples.
    The erased rows' labels are -1 in the store while the references are rebuilt; a batch that verified against
    them failed with `index -1 is out of bounds`, and so did every later one."""
    svc = two_workers
    v = load_verifier(svc.home / "verifier")
    shadow, calib = _splits(svc)["shadow"][0], int(v.calib_ids[0])
    with svc.client() as c:
        first = svc.wait_request(c.post("/delete", json={"sample_ids": [shadow, calib]}).json()["id"])
        assert first["state"] == "completed"
        assert first["forgetting"]["derived_pending"] and not first["forgetting"]["exact"]
        # while one worker retrains the references, the other forgets training samples
        later = [c.post("/delete", json={"sample_ids": svc.train_ids()[k:k + 2]}).json()["id"] for k in (0, 2, 4)]
        for rid in later:
            done = svc.wait_request(rid)
            assert done["state"] == "completed", done["reason"]
            assert done["forgetting"]["verdict"] != "unverified"
        exact = wait_until(lambda: c.get(f"/requests/{first['id']}").json()["forgetting"]["exact"], timeout=90)
        assert exact, "the shadow sample's request never became exact"
        rebuilt = [p for p in _audit(c) if p.get("event") == "rebuild_derived"]
        assert rebuilt and first["id"] in rebuilt[-1]["settled_request_ids"] and rebuilt[-1]["time_s"] >= 4
    v = load_verifier(svc.home / "verifier")
    assert shadow in v.info["shadow_excluded"] and calib not in v.calib_ids and calib not in v.ref_ids


def test_a_rebuild_killed_half_way_is_redone(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    """The worker dies inside the rebuild, which here also outlasts the RQ job timeout (3 s against 8 s): nothing
    is swapped in, the request stays not exact, and the next worker redoes it from the ledger."""
    s = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url,
                UNLEARND_JOB_TIMEOUT_S=3, UNLEARND_DEBUG_REBUILD_DELAY_S=8)
    try:
        s.start_api()
        first = s.start_worker()
        shadow = _splits(s)["shadow"][:2]
        with s.client() as c:
            rid = s.wait_request(c.post("/delete", json={"sample_ids": shadow}).json()["id"])["id"]
            log = s.home / "worker0.log"
            assert wait_until(lambda: b"retraining the verifier's reference models" in log.read_bytes(), timeout=60)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            body = c.get(f"/requests/{rid}").json()
            assert body["state"] == "completed" and not body["forgetting"]["exact"]
            assert body["forgetting"]["derived_pending"]
            assert not [p for p in _audit(c) if p.get("event") == "rebuild_derived"]
            assert not set(shadow) & set(load_verifier(s.home / "verifier").info.get("shadow_excluded", []))
            s.start_worker()
            assert wait_until(lambda: c.get(f"/requests/{rid}").json()["forgetting"]["exact"], timeout=120)
            entry = [p for p in _audit(c) if p.get("event") == "rebuild_derived"][-1]
            assert entry["time_s"] > 3 and rid in entry["settled_request_ids"]
            # a training deletion still completes through the fast path and its verdict
            done = s.wait_request(c.post("/delete", json={"sample_ids": s.train_ids()[:2]}).json()["id"])
            assert done["state"] == "completed" and done["forgetting"]["verdict"] != "unverified"
        assert set(shadow) <= set(load_verifier(s.home / "verifier").info["shadow_excluded"])
    finally:
        s.stop()


# --- D2: a lost or corrupt ledger


def _serve_once(svc: Service, **env: str) -> tuple[int, str]:
    r = svc.cli("serve", "--model", str(svc.model_dir), "--port", str(svc.port), "--no-worker", **env)
    return r.returncode, r.stdout + r.stderr


def test_a_lost_ledger_does_not_bring_forgotten_data_back(tmp_path: Path, digits_model_dir: Path,
                                                          redis_url: str) -> None:
    s = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url)
    try:
        s.start_api()
        s.start_worker()
        with s.client() as c:
            assert s.wait_request(c.post("/delete", json={"sample_ids": s.train_ids()[:3]}).json()["id"])[
                "state"] == "completed"
            assert wait_until(lambda: (np.load(s.settings.store_dir / "y.npy")[s.train_ids()[:3]] == -1).all(),
                              timeout=30)
    finally:
        s.stop()
    for f in s.home.glob("ledger.db*"):
        f.unlink()
    code, out = _serve_once(s)
    assert code == 2, out
    assert "unlearnd: error:" in out and "erased rows" in out and "restore" in out and "Traceback" not in out
    assert not (s.home / "ledger.db").exists(), "nothing is written: not even an empty ledger"
    # the store alone is enough to refuse
    shutil.rmtree(s.settings.models_dir)
    for f in s.home.glob("ledger.db*"):
        f.unlink()
    assert _serve_once(s)[0] == 2


def test_erased_rows_are_never_training_data(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    """Whatever the ledger says: a row erased in the store stays out of a consolidation's retrain."""
    from app.service.ledger_conn import LedgerConn
    from app.service.store import open_store, purge
    from worker.consolidate import consolidate

    s = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url)
    try:
        s.start_api()
    finally:
        s.stop()
    victim = s.train_ids()[7]
    purge(open_store(s.settings.store_dir, writable=True), [victim])  # the ledger still calls it active
    settings = s.settings.model_copy(update={"verify_refs": 0})
    conn = LedgerConn.open(settings)
    try:
        from app.db import ledger
        from app.db.session import transaction, utcnow

        with transaction(conn.write) as sess:  # an approximately forgotten request for the retrain to make exact
            head = ledger.head(sess)
            assert head is not None
            rid = ledger.create_request(sess, sample_ids=[s.train_ids()[8]], subject_id=None, idempotency_key=None,
                                        api_key_id=None, now=utcnow(), retention_days=30, max_ids=10).request.id
            ledger.claim_batch(sess, batch_id="b", max_samples=10, now=utcnow())
            ledger.complete_batch(sess, batch_id="b", request_ids=[rid], version_id=head.id,
                                  forget_ids=[s.train_ids()[8]], audit_seq=None, now=utcnow(), already={},
                                  subject_key=b"k" * 32)
        out = consolidate(settings, conn, reason="test")
        assert out.state == "completed", out.info
        with transaction(conn.read) as sess:
            head = ledger.head(sess)
            assert head is not None
        trained = json.loads((settings.models_dir / head.id / "splits.json").read_text())["train"]
        assert victim not in trained and len(trained) == len(s.train_ids()) - 2
    finally:
        conn.close()


def test_a_corrupt_ledger_is_one_line(tmp_path: Path, digits_model_dir: Path) -> None:
    s = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url="redis://x")
    (s.home / "ledger.db").write_bytes(b"this is not a database" * 100)
    for args in (("serve", "--no-worker", "--port", str(s.port)), ("audit", "head"), ("db", "upgrade")):
        r = s.cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
        assert len(lines) == 1 and lines[0].startswith("unlearnd: error: the ledger at"), r.stderr
        assert "restore" in lines[0] and "Traceback" not in r.stderr


# --- D5 and D11: idempotency across API processes and keys


@pytest.mark.skipif(not PG_URL, reason="no test PostgreSQL")
def test_one_idempotency_key_on_two_api_processes(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    db = db_url_for("postgres", tmp_path)
    a = Service(tmp_path, digits_model_dir, db_url=db, redis_url=redis_url)
    b = Service(tmp_path, digits_model_dir, db_url=db, redis_url=redis_url, key=a.key)  # one deployment, one home
    try:
        a.start_api()
        b.start_api()
        train = a.train_ids()

        def pair(k: int) -> list[httpx.Response]:
            body, key = {"sample_ids": [train[k]]}, f"race-{k}"
            with ThreadPoolExecutor(2) as pool:
                futs = [pool.submit(httpx.post, svc.url + "/delete", json=body, timeout=30,
                                    headers={"X-API-Key": a.key, "Idempotency-Key": key}) for svc in (a, b)]
                return [f.result() for f in futs]

        for k in range(20):
            r1, r2 = pair(k)
            assert (r1.status_code, r2.status_code) == (202, 202), (r1.text, r2.text)
            assert r1.json()["id"] == r2.json()["id"]
            replayed = {r1.headers.get("idempotent-replayed"), r2.headers.get("idempotent-replayed")}
            assert replayed == {None, "true"}, replayed  # one made it, the other was told it is a replay
        # another client's key with the same Idempotency-Key is another request, not a replay or a 409
        made = a.cli("keys", "create", "--scopes", "delete", "--name", "other")
        assert made.returncode == 0, made.stderr
        key2 = made.stdout.strip()
        r = httpx.post(a.url + "/delete", json={"sample_ids": [train[0]]}, timeout=30,
                       headers={"X-API-Key": key2, "Idempotency-Key": "race-0"})
        assert r.status_code == 202 and "idempotent-replayed" not in r.headers
        assert r.json()["id"] != pair(0)[0].json()["id"]
    finally:
        a.stop()
        b.stop()


# --- D6: bodies


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, digits_model_dir: Path, redis_url: str) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("d6")
    s = Service(tmp, digits_model_dir, db_url=db_url_for("sqlite", tmp / "home"), redis_url=redis_url,
                UNLEARND_VERIFY_REFS=0, UNLEARND_MAX_BODY_BYTES=65536)
    try:
        s.start_api()
        s.start_worker()
        yield s
    finally:
        s.stop()


def _raw(svc: Service, head: bytes, timeout: float = 5.0) -> bytes:
    """Send request head only (a body announced but never sent) and read what comes back."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
        return data


@pytest.mark.parametrize("path", ["/delete", "/predict"])
def test_no_body_is_read_before_the_key_is_checked(api: Service, path: str) -> None:
    """100 MB announced, nothing sent: the 401 must come before the server waits for a byte of it."""
    for key in (b"", b"X-API-Key: " + b"n" * 40 + b"\r\n"):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000000\r\n").encode() + key + b"\r\n"
        t0 = time.monotonic()
        out = _raw(api, head)
        assert out.startswith(b"HTTP/1.1 401"), out[:200]
        assert time.monotonic() - t0 < 3


def test_bodies_over_the_limit_get_413(api: Service) -> None:
    headers = {"X-API-Key": api.key, "content-type": "application/json"}
    big = b'{"sample_ids": [' + b"1," * 40000 + b"1]}"
    r = httpx.post(api.url + "/delete", content=big, headers=headers, timeout=30)
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["max_body_bytes"] == 65536

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut while streaming
        yield b'{"instances": ['
        for _ in range(200):
            yield b"[" + b"1," * 500 + b"1],"
        yield b"[1]]}"

    r = httpx.post(api.url + "/predict", content=chunks(), headers=headers, timeout=30)
    assert r.status_code == 413, r.text
    r = httpx.post(api.url + "/ui/login", content=b"key=" + b"k" * 20000,
                   headers={"content-type": "application/x-www-form-urlencoded"}, timeout=30)
    assert r.status_code == 413
    # an ordinary request still passes
    assert httpx.post(api.url + "/delete", json={"sample_ids": api.train_ids()[:1]}, headers=headers).status_code == 202


# --- D10, D11 on the same service


def test_the_operator_page_cannot_be_framed_or_posted_to_from_elsewhere(api: Service) -> None:
    page = httpx.get(api.url + "/ui", headers={"X-API-Key": api.key})
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    form = {"key": api.key}
    evil = httpx.post(api.url + "/ui/login", data=form, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "set-cookie" not in evil.headers
    cross = httpx.post(api.url + "/ui/login", data=form, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    ok = httpx.post(api.url + "/ui/login", data=form, headers={"Origin": api.url})
    assert ok.status_code == 303
    token = ok.cookies["unlearnd_ui_session"]
    assert api.key not in ok.headers["set-cookie"] and len(token) >= 40
    assert httpx.get(api.url + "/ui", cookies=ok.cookies).status_code == 200
    assert httpx.post(api.url + "/ui/logout", cookies=ok.cookies,
                      headers={"Origin": "https://evil.example"}).status_code == 403
    assert httpx.get(api.url + "/ui", cookies=ok.cookies).status_code == 200  # the foreign logout did nothing
    out = httpx.post(api.url + "/ui/logout", cookies=ok.cookies, headers={"Origin": api.url})
    assert out.status_code == 303
    replay = httpx.get(api.url + "/ui", cookies=ok.cookies)  # the old cookie, kept by an attacker
    assert replay.status_code == 401 and "log in" in replay.text.lower()


def test_digests_host_and_405(api: Service) -> None:
    subject = "person-11"
    with api.client() as c:
        r = c.post("/delete", json={"subject_id": subject}, headers={"Host": "evil.example"})
        assert r.status_code == 202
        assert "evil.example" not in r.headers["location"] and "evil.example" not in r.json()["status_url"]
        assert r.json()["status_url"] == f"/requests/{r.json()['id']}" == r.headers["location"]
        done = api.wait_request(r.json()["id"])
    stored = done["subject_id"]
    assert stored.startswith("hmac-sha256:") and subject not in stored
    assert stored.split(":", 1)[1] != hashlib.sha256(subject.encode()).hexdigest()[:32]  # not a plain hash
    r = httpx.put(api.url + "/predict", headers={"X-API-Key": api.key})
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


def test_failure_reasons_name_no_server_path(tmp_path: Path) -> None:
    from app.core.config import Settings
    from app.db import ledger
    from app.db.migrate import upgrade
    from app.db.session import transaction, utcnow
    from app.service.deletions import LedgerContext, request_status
    from app.service.ledger_conn import LedgerConn

    settings = Settings(home=tmp_path)
    upgrade(settings.db_url)
    conn = LedgerConn.open(settings)
    with transaction(conn.write) as s:
        ledger.add_samples(s, ids=[1, 2])
        rid = ledger.create_request(s, sample_ids=[1], subject_id=None, idempotency_key=None, api_key_id=None,
                                    now=utcnow(), retention_days=30, max_ids=10).request.id
        ledger.claim_batch(s, batch_id="b", max_samples=10, now=utcnow())
        ledger.fail_batch(s, batch_id="b", reason=f"ModelLoadError: no model at {tmp_path}/models/abc", now=utcnow())
    out = request_status(LedgerContext(settings, conn, None), request_id=rid)
    assert out["reason"] == "ModelLoadError: no model at <path>" and str(tmp_path) not in json.dumps(out, default=str)
    conn.close()


# --- D7: a stopped worker's claims


def test_a_stopped_workers_claims_go_back_while_the_other_is_busy(tmp_path: Path, digits_model_dir: Path,
                                                                 redis_url: str) -> None:
    """One worker is SIGSTOPped holding a claim while the other is busy with a long batch: the claim goes back
    on the heartbeat timeout (4 s here), not at the other's next sweep or job, nor after the 300 s lease."""
    s = Service(tmp_path, digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "home"), redis_url=redis_url,
                UNLEARND_LEASE_S=300, UNLEARND_WORKER_TIMEOUT_S=4, UNLEARND_WORKER_HEARTBEAT_S=0.5,
                UNLEARND_SWEEP_INTERVAL_S=60, UNLEARND_DEBUG_COMMIT_DELAY_S=12)
    db = s.settings.db_url.removeprefix("sqlite:///")

    def row(rid: str) -> tuple[str, int | None]:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT r.state, w.pid FROM deletion_requests r LEFT JOIN workers w "
                               "ON w.id = r.claimed_by WHERE r.id = ?", (rid,)).fetchone()

    try:
        s.start_api()
        procs = [s.start_worker(), s.start_worker()]
        time.sleep(3)  # both listening
        with s.client() as c:
            r1 = c.post("/delete", json={"sample_ids": s.train_ids()[:2]}).json()["id"]
            s.wait_request(r1, states=("processing",), timeout_s=60)
            holder = next(p for p in procs if p.pid == row(r1)[1])
            os.kill(holder.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                r2 = c.post("/delete", json={"sample_ids": s.train_ids()[2:4]}).json()["id"]
                s.wait_request(r2, states=("processing",), timeout_s=60)  # the other worker is busy with r2
                assert time.monotonic() - t0 < 4, "r2 was claimed after the timeout: the test proves nothing"
                back = wait_until(lambda: row(r1)[0] == "pending", timeout=20, poll=0.2)
                assert back, row(r1)
                # the heartbeat timeout (4 s), not the other worker's next job (after its 12 s batch) or the lease
                assert time.monotonic() - t0 < 11
            finally:
                os.kill(holder.pid, signal.SIGCONT)
            assert s.wait_request(r1, timeout_s=180)["state"] == "completed"
    finally:
        s.stop()


# --- D9: a copied home


def test_a_copied_home_is_self_contained(tmp_path: Path, digits_model_dir: Path, redis_url: str) -> None:
    for d in ("orig", "copy"):
        (tmp_path / d).mkdir()
    s = Service(tmp_path / "orig", digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "orig" / "home"),
                redis_url=redis_url)
    try:
        s.start_api()
        s.start_worker()
        with s.client() as c:
            assert s.wait_request(c.post("/delete", json={"sample_ids": s.train_ids()[:2]}).json()["id"])[
                "state"] == "completed"
    finally:
        s.stop()
    with sqlite3.connect(s.home / "ledger.db") as con:
        paths = [p for (p,) in con.execute("SELECT path FROM model_versions")]
    assert paths and all(p.startswith("models/") for p in paths), paths
    before = sorted(p.name for p in s.settings.models_dir.iterdir())
    copy = Service(tmp_path / "copy", digits_model_dir, db_url=db_url_for("sqlite", tmp_path / "copy" / "home"),
                   redis_url=redis_url)
    shutil.rmtree(copy.home)
    shutil.copytree(s.home, copy.home, ignore=shutil.ignore_patterns("*.log"))
    try:
        copy.start_api()  # ready although the copied ledger's workers are all gone (issue 23: readiness is the API's)
        with copy.client() as c:
            assert c.get("/readyz").json()["worker"].startswith("error: no live worker")
            assert c.get("/healthz/worker").status_code == 503
        copy.start_worker()
        with copy.client() as c:
            assert wait_until(lambda: c.get("/healthz/worker").status_code == 200, timeout=30)
            for k in (2, 4):
                done = copy.wait_request(c.post("/delete", json={"sample_ids": copy.train_ids()[k:k + 2]}).json()["id"])
                assert done["state"] == "completed", done["reason"]
    finally:
        copy.stop()
    assert sorted(p.name for p in s.settings.models_dir.iterdir()) == before, "the copy touched the original"
