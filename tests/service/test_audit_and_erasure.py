"""Issue 15 on one live service: the anchored audit (D7), erasure that leaves no byte behind, an audit entry for
every request, and the backlog gauges. The hostile corpus (D4-D6, D10, strict parsing) is test_hostile_corpus.py,
run on both databases."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.db.audit import entry_hash
from tests.service_harness import Service, running_sqlite_service, strict_json, wait_until


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, digits_model_dir: Path, redis_url: str) -> Iterator[Service]:
    with running_sqlite_service(tmp_path_factory.mktemp("hardening"), digits_model_dir, redis_url) as s:
        yield s


def test_a_huge_but_finite_row_is_never_an_invalid_200(svc: Service) -> None:
    """3e38 fits float32, yet the forward pass overflows: the answer must not be NaN in a 200."""
    rows = [[3e38 if j % 2 else -3e38 for j in range(64)]]
    r = httpx.post(svc.url + "/predict", json={"instances": rows}, headers={"X-API-Key": svc.key})
    assert r.status_code in (200, 422)
    strict_json(r.text)


def test_every_request_gets_an_audit_entry(svc: Service) -> None:
    ids = svc.train_ids()[10:12]
    with svc.client() as c:
        first = svc.wait_request(c.post("/delete", json={"sample_ids": ids}).json()["id"])
        again = svc.wait_request(c.post("/delete", json={"sample_ids": ids}).json()["id"])
        assert first["state"] == again["state"] == "completed"
        assert again["already_forgotten"] == sorted(ids) and again["audit_entry"] > first["audit_entry"]
        entry = c.get("/audit", params={"offset": again["audit_entry"] - 1, "limit": 1}).json()["items"][0]
    assert entry["payload"]["event"] == "already_forgotten" and again["id"] in entry["payload"]["request_ids"]


def _gauges(svc: Service) -> dict[str, float]:
    return {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in httpx.get(svc.url + "/metrics").text.splitlines()
            if ln.startswith("unlearnd_") and "{" not in ln}


def test_backlog_and_worker_gauges(svc: Service) -> None:
    # run alone, this test can come before the module's worker has beaten once (a heartbeat every 2 s)
    values = wait_until(lambda: (v := _gauges(svc))["unlearnd_live_workers"] >= 1 and v, timeout=30) or _gauges(svc)
    for name in ("unlearnd_pending_requests", "unlearnd_oldest_pending_age_seconds", "unlearnd_failed_batches",
                 "unlearnd_seconds_to_nearest_due", "unlearnd_live_workers", "unlearnd_worker_heartbeat_age_seconds"):
        assert name in values, name
    assert values["unlearnd_live_workers"] >= 1 and values["unlearnd_worker_heartbeat_age_seconds"] < 15
    ready = httpx.get(svc.url + "/readyz").json()
    assert ready["worker"].startswith("ok: 1 live")


# --- the anchored audit (D7)


def _snapshot(svc: Service, dst: Path) -> Path:
    """A consistent copy of the ledger (the live one is in WAL mode), to tamper with."""
    src = sqlite3.connect(svc.settings.db_url.removeprefix("sqlite:///"))
    out = sqlite3.connect(dst)
    src.backup(out)
    src.close()
    out.close()
    return dst


def _verify(svc: Service, db: Path, *extra: str) -> tuple[int, str]:
    r = svc.cli("audit", "verify", *extra, DATABASE_URL=f"sqlite:///{db}")
    return r.returncode, r.stdout + r.stderr


def test_truncation_and_rewrites_are_detected(svc: Service, tmp_path: Path) -> None:
    with svc.client() as c:
        svc.wait_request(c.post("/delete", json={"sample_ids": svc.train_ids()[20:21]}).json()["id"])
    head = svc.cli("audit", "head").stdout.strip()
    seq = int(head.split(":")[0])
    clean = _snapshot(svc, tmp_path / "clean.db")
    assert _verify(svc, clean, "--expect-head", head)[0] == 0
    # an entry no request or version names (a failed consolidation is one): only the exported head shows its loss
    db = sqlite3.connect(clean)
    last = db.execute("SELECT hash FROM audit_entries WHERE seq = ?", (seq,)).fetchone()[0]
    payload = '{"event":"consolidate_failed","why":"test"}'
    db.execute("INSERT INTO audit_entries VALUES (?, ?, ?, ?, ?, ?)",
               (seq + 1, "2026-01-01T00:00:00", "consolidate", payload, last,
                entry_hash(prev_hash=last, seq=seq + 1, created_at="2026-01-01T00:00:00", batch_id="consolidate",
                           payload=payload)))
    db.commit()
    db.close()
    longer = svc.cli("audit", "head", DATABASE_URL=f"sqlite:///{clean}").stdout.strip()
    cases = {"last": f"seq > {seq}", "last three": f"seq > {seq - 2}", "all": "1 = 1"}
    for name, where in cases.items():
        bad = shutil.copy(clean, tmp_path / f"{name}.db")
        with sqlite3.connect(bad) as db:
            db.execute(f"DELETE FROM audit_entries WHERE {where}")
        code, out = _verify(svc, Path(bad), "--expect-head", longer)
        assert code == 1 and "truncated" in out, (name, out)
    # the tail that only the head anchors: without it the cut is invisible, with it it is caught
    assert _verify(svc, tmp_path / "last.db")[0] == 0
    # edit an early entry and recompute every later hash: the chain checks out, the head does not
    bad = Path(shutil.copy(clean, tmp_path / "rewritten.db"))
    with sqlite3.connect(bad) as db:
        rows = db.execute("SELECT seq, created_at, batch_id, payload FROM audit_entries ORDER BY seq").fetchall()
        prev = "0" * 64
        for k, (s, created, batch, text) in enumerate(rows):
            if k == 1:
                text = text.replace('"event":', '"forged":true,"event":')
            h = entry_hash(prev_hash=prev, seq=s, created_at=created, batch_id=batch, payload=text)
            db.execute("UPDATE audit_entries SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (text, prev, h, s))
            prev = h
    assert _verify(svc, bad)[0] == 0, "a full rewrite passes the chain alone: that is why heads are exported"
    code, out = _verify(svc, bad, "--expect-head", longer)
    assert code == 1 and "rewritten" in out
    assert _verify(svc, clean, "--expect-head", "12:xyz")[0] == 2


# --- erasure


def _files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def _read_all(home: Path) -> tuple[dict[Path, bytes], bool]:
    """Every file's bytes, and whether none vanished between listing and reading.

    Background jobs (the verifier's rebuild) write a temporary file and rename it; a listing that
    saw one of those is read again rather than trusted, so a renamed file is never skipped unread.
    """
    blobs: dict[Path, bytes] = {}
    for p in _files(home):
        try:
            blobs[p] = p.read_bytes()
        except FileNotFoundError:
            return blobs, False
    return blobs, True


def test_no_byte_of_a_forgotten_sample_remains(svc: Service) -> None:
    store = svc.settings.store_dir
    x = np.load(store / "x.npy")
    train = svc.train_ids()
    subject = "person-37"  # the harness's subjects: person-(id mod 50); no other subject contains this text
    ids = [i for i in train if i % 50 == 37]
    rows = {i: x[i].tobytes() for i in ids if x[i].any()}
    assert len(rows) >= 5 and any(subject.encode() in b for b in _read_all(svc.home)[0].values())
    with svc.client() as c:
        done = svc.wait_request(c.post("/delete", json={"subject_id": subject}).json()["id"])
    assert done["state"] == "completed"
    deadline = time.monotonic() + 30
    while True:
        blobs, whole = _read_all(svc.home)
        left = [(str(p), what) for p, b in blobs.items()
                for what, needle in ((subject, subject.encode()), *((f"features of {i}", r) for i, r in rows.items()))
                if needle in b]
        if (whole and not left) or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the purge and the WAL truncation follow the commit
    assert whole and not left, left[:5]
    assert (np.load(store / "y.npy")[ids] == -1).all(), "forgotten labels must be overwritten"


def test_samples_of_every_split_can_be_deleted(svc: Service) -> None:
    from app.ml.data.dataset import Splits
    from app.ml.verify.store import load_verifier

    splits = Splits.load(svc.model_dir / "splits.json")
    picks = {"val": int(splits.val[0]), "test": int(splits.test[-1]), "shadow": int(splits.shadow[0])}
    x = np.load(svc.settings.store_dir / "x.npy")
    assert all(x[i].any() for i in picks.values())
    with svc.client() as c:
        done = svc.wait_request(c.post("/delete", json={"sample_ids": list(picks.values())}).json()["id"])
        assert done["state"] == "completed" and not done["already_forgotten"]
        entry = c.get("/audit", params={"offset": done["audit_entry"] - 1, "limit": 1}).json()["items"][0]["payload"]
        assert entry["event"] == "erase" and entry["erased_by_split"] == {"val": 1, "test": 1, "shadow": 1}
        assert c.get("/predict", params={"sample_id": picks["test"]}).status_code == 410
        deadline = time.monotonic() + 120  # the verifier's references are retrained
        while not any(i["payload"].get("event") == "rebuild_derived"
                      for i in c.get("/audit", params={"offset": done["audit_entry"], "limit": 20}).json()["items"]):
            assert time.monotonic() < deadline, "the models trained on the deleted shadow sample were not rebuilt"
            time.sleep(0.5)
        v = load_verifier(svc.home / "verifier")
        for i in picks.values():
            assert i not in v.calib_ids and i not in v.eval_ids and i not in v.ref_ids
        assert picks["shadow"] in v.info["shadow_excluded"]
        assert not (svc.home / "attack").exists(), "the paper's Shokri attack is not part of the service"
        settled = wait_until(lambda: c.get(f"/requests/{done['id']}").json()["forgetting"]["exact"], timeout=30)
        assert settled and not c.get(f"/requests/{done['id']}").json()["forgetting"]["derived_pending"]
        x = np.load(svc.settings.store_dir / "x.npy")
        assert not any(x[i].any() for i in picks.values())
        # the service still forgets training samples with the rebuilt verifier
        after = svc.wait_request(c.post("/delete", json={"sample_ids": svc.train_ids()[30:32]}).json()["id"])
        assert after["state"] == "completed" and after["forgetting"]["verdict"] != "unverified"


def test_model_answers_name_no_host_path(svc: Service) -> None:
    """Issue 23: /models/current showed `"reused_from": "/…/verifier"`."""
    with svc.client() as c:
        for path in ("/models/current", "/models"):
            text = c.get(path).text
            assert str(svc.home) not in text and str(svc.model_dir) not in text, (path, text[:500])
