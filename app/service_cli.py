"""The service sub-commands of `unlearnd`: serve, worker, db, keys, audit, requests."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from app.core.config import Settings
from app.db import keys as keys_mod
from app.db import ledger
from app.db.audit import head, parse_head, verify_chain
from app.db.migrate import upgrade
from app.db.session import transaction, utcnow
from app.errors import ConfigError, InvalidRequest, NotFound
from app.service.ledger_conn import LedgerConn
from app.service.supervisor import SERVE_PID_ENV, Child, Supervisor, die_with_parent

if TYPE_CHECKING:
    from app.ml.models.meta import ModelMeta


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _admin_key(settings: Settings, conn: LedgerConn) -> str:
    """Where the admin key is, for the start banner. The key itself is shown only on the start that made it:
    a log is kept, copied and shipped; a key in it is a key leaked."""
    if settings.bootstrap_admin_key:
        with transaction(conn.write) as s:
            what = keys_mod.ensure_bootstrap_key(s, key=settings.bootstrap_admin_key)
        return "UNLEARND_BOOTSTRAP_ADMIN_KEY" + (" (new: the previous bootstrap key is revoked)"
                                                 if what == "rotated" else "")
    path = settings.home / "admin.key"
    if path.is_file():
        return f"in {path}"
    with transaction(conn.write) as s:
        key = keys_mod.create_key(s, scopes=["admin"], name="first-start")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return f"{key} (shown once; also in {path}, mode 0600)"


def _worker_child(settings: Settings, conn: LedgerConn) -> Child:
    """The worker `serve` supervises, under one id for all its restarts: when it dies, its claims go back to
    pending at once (no wait for the lease) and its next incarnation's first sweep enqueues them."""
    from app.db import workers as workers_mod

    worker_id = f"serve:{socket.gethostname()[:40]}:{os.getpid()}"
    env = {**os.environ, "UNLEARND_WORKER_ID": worker_id}

    def released(code: int) -> None:
        with transaction(conn.write) as s:
            n = workers_mod.stop(s, worker_id=worker_id, now=utcnow(), max_deaths=settings.max_worker_deaths)
        if n:
            logging.getLogger("unlearnd.supervisor").warning("released %d requests the dead worker held", n)

    # its own process group: a terminal's Ctrl-C reaches `serve` only, which stops the worker before its Redis
    return Child("worker", lambda: subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                                                    preexec_fn=die_with_parent, process_group=0),
                 on_death=released)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal after its graceful shutdown; the default action would kill this process
    # before `serve`'s clean-up stops the worker and Redis
    raise SystemExit(0)


def serve(ns: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.core.embedded_redis import EmbeddedRedis
    from app.ml.common.device import resolve
    from app.ml.training.recipe import recipe_note
    from app.service.bootstrap import publish_initial, refuse_used_home, served_meta

    _logging()
    resolve(settings.device)  # a GPU asked for and absent stops here, before anything starts
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings.home.mkdir(parents=True, exist_ok=True)
    url = settings.db_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        refuse_used_home(settings)  # before the migration writes an empty ledger
    upgrade(settings.db_url)
    children = Supervisor()
    conn = None
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis(settings.embedded_redis_port, settings.home / "redis")
            children.add(Child("embedded Redis", lambda: embedded.start(preexec_fn=die_with_parent).proc))
            os.environ["UNLEARND_REDIS_URL"] = embedded.url  # for the API factory and the worker
            settings = settings.model_copy(update={"redis_url": embedded.url})
        conn = LedgerConn.open(settings)
        version = publish_initial(settings, conn, model_dir=ns.model)
        admin = _admin_key(settings, conn)
        if not ns.no_worker:
            children.add(_worker_child(settings, conn))
        children.start()
        os.environ[SERVE_PID_ENV] = str(os.getpid())
        url = f"http://{ns.host}:{ns.port}"
        meta = served_meta(settings, conn)
        note = recipe_note(meta)
        print(f"\nunlearnd serving version {version} at {url}  (docs: {url}/docs)\n"
              + (f"note: {note}\n" if note else "") + splits_line(meta) +
              f"admin API key: {admin}\nstate: {settings.home}  ledger: {settings.db_url.split('@')[-1]}  "
              f"redis: {settings.redis_url}\nCtrl-C stops.\n", flush=True)
        uvicorn.run("app.api.main:create_app", factory=True, host=ns.host, port=ns.port, workers=ns.workers,
                    log_level="warning", access_log=False)
    finally:
        children.stop()
        if conn is not None:
            conn.close()
        print("unlearnd stopped", flush=True)
    return 0


def worker(ns: argparse.Namespace, settings: Settings) -> int:
    from app.ml.common.device import check_spec, resolve
    from worker.main import run_worker

    _logging()
    if ns.device:
        # the RQ jobs read their settings from the environment: one worker process per GPU
        os.environ["UNLEARND_DEVICE"] = check_spec(ns.device)
        settings = settings.model_copy(update={"device": ns.device})
    resolve(settings.device)
    return run_worker(settings)


def splits_line(meta: ModelMeta | None) -> str:
    """The start banner's line on where each split came from (meta.json's split_origin), when it was recorded."""
    from app.ml.data.dataset import describe_origin

    origin = meta.split_origin if meta else None
    return f"splits: {describe_origin(origin)}\n" if isinstance(origin, dict) else ""


def consolidate_now(ns: argparse.Namespace, settings: Settings) -> int:
    """Retrain exactly on the active samples now; the worker's announcements and clean-up follow."""
    from worker.consolidate import consolidate, exact_words
    from worker.housekeeping import purge_forgotten, refresh_cache

    if ns.nproc is not None:
        if ns.nproc < 1:
            raise ConfigError(f"--nproc must be ≥ 1, got {ns.nproc}")
        settings = settings.model_copy(update={"exact_nproc": ns.nproc})
    _logging()
    conn = LedgerConn.open(settings)
    try:
        result = consolidate(settings, conn, reason="on demand (unlearnd consolidate)")
        if result.state == "completed":
            purge_forgotten(settings, conn)
            refresh_cache(settings, conn)
            if settings.redis_url:
                from app.service.queue import announce, connect

                announce(settings, connect(settings.redis_url), version_id=result.version_id or "")
            info = result.info or {}
            print(f"consolidated: version {result.version_id} retrained on {info['n_train']} samples in "
                  f"{info['train_s']:.1f} s (held-out {info['holdout_acc_after']:.4f}); "
                  f"{exact_words(info['n_exact'], info['n_waiting_derived'])}")
            return 0
        print(f"consolidation {result.state}: {(result.info or {}).get('why')}")
        return 0 if result.state == "nothing" else 1
    finally:
        conn.close()


def db_upgrade(ns: argparse.Namespace, settings: Settings) -> int:
    settings.home.mkdir(parents=True, exist_ok=True)
    before, after = upgrade(settings.db_url)
    where = settings.db_url.split("@")[-1]
    if before == after:
        print(f"ledger at {where} was already at the newest revision ({after})")
    else:
        print(f"ledger at {where} migrated from {before or 'an empty database'} to revision {after}")
    return 0


def keys_create(ns: argparse.Namespace, settings: Settings) -> int:
    conn = LedgerConn.open(settings)
    with transaction(conn.write) as s:
        key = keys_mod.create_key(s, scopes=keys_mod.parse_scopes(ns.scopes), name=ns.name)
    print(key)
    return 0


def keys_list(ns: argparse.Namespace, settings: Settings) -> int:
    conn = LedgerConn.open(settings)
    with transaction(conn.read) as s:
        for k in keys_mod.list_keys(s):
            print(f"{k.id}  scopes={k.scopes}  name={k.name}  created={k.created_at:%Y-%m-%d %H:%M}"
                  + ("  REVOKED" if k.revoked_at else ""))
    return 0


def keys_revoke(ns: argparse.Namespace, settings: Settings) -> int:
    conn = LedgerConn.open(settings)
    with transaction(conn.write) as s:
        ok = keys_mod.revoke_key(s, key_id=ns.key_id)
    if not ok:
        raise NotFound(f"no key {ns.key_id!r} (`unlearnd keys list` shows the ids)")
    print("revoked")
    return 0


def audit_verify(ns: argparse.Namespace, settings: Settings) -> int:
    try:
        expect = parse_head(ns.expect_head) if ns.expect_head else None
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    conn = LedgerConn.open(settings)
    with transaction(conn.read) as s:
        report = verify_chain(s, expect_head=expect)
    if report.ok:
        anchored = f", contains the exported head {expect[0]}" if expect else " (no exported head given)"
        print(f"audit chain OK: {report.entries} entries, every request and model version has its entry{anchored}")
        return 0
    where = f" at entry {report.first_bad_seq}" if report.first_bad_seq else ""
    print(f"audit chain BROKEN{where}: {report.reason}")
    return 1


def audit_head(ns: argparse.Namespace, settings: Settings) -> int:
    """Print SEQ:HASH of the last entry: store it outside this host; `audit verify --expect-head` checks it."""
    conn = LedgerConn.open(settings)
    with transaction(conn.read) as s:
        last = head(s)
    if last is None:
        print("the audit log is empty")
        return 1
    print(f"{last[0]}:{last[1]}")
    return 0


def requests_retry(ns: argparse.Namespace, settings: Settings) -> int:
    from app.db import jobs
    from app.service.queue import connect, notify

    if (ns.request_id is None) != ns.rebuild:
        raise ConfigError("give a failed request's id, or --rebuild (not both)")
    conn = LedgerConn.open(settings)
    if ns.rebuild:
        with transaction(conn.write) as s:
            failing = jobs.retry_now(s, name=jobs.REBUILD)
        print("the derived models' rebuild is tried again at the worker's next sweep" if failing
              else "the derived models' rebuild is not failing; nothing to retry")
        return 0
    with transaction(conn.write) as s:
        ledger.retry_failed(s, request_id=ns.request_id)
    if settings.redis_url:
        notify(settings, connect(settings.redis_url), reason=f"retry {ns.request_id}", force=True)
    print(f"request {ns.request_id} is pending again")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("serve", help="run the API (+ a worker, + an embedded Redis without REDIS_URL)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="API processes")
    s.add_argument("--model", type=Path, help="a model directory made by `unlearnd train` or `unlearnd import` "
                                              "(default: train on digits)")
    s.add_argument("--no-worker", action="store_true", help="API only; run `unlearnd worker` separately")
    s.set_defaults(func=serve)
    w = sub.add_parser("worker", help="process deletion requests (needs REDIS_URL)")
    w.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: UNLEARND_DEVICE, auto); run one worker "
                                    "per GPU")
    w.set_defaults(func=worker)
    cons = sub.add_parser("consolidate", help="retrain exactly on the remaining samples now: every approximately "
                                              "forgotten request becomes exact")
    cons.add_argument("--nproc", type=int, metavar="N",
                      help="retrain in N processes (a torchrun job; default UNLEARND_EXACT_NPROC)")
    cons.set_defaults(func=consolidate_now)
    d = sub.add_parser("db", help="ledger schema").add_subparsers(dest="db_command", required=True)
    d.add_parser("upgrade", help="migrate the ledger to the newest revision").set_defaults(func=db_upgrade)
    k = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    kc = k.add_parser("create", help="create a key and print it (shown once)")
    kc.add_argument("--scopes", required=True, help=f"comma-separated: {', '.join(keys_mod.SCOPES)}")
    kc.add_argument("--name")
    kc.set_defaults(func=keys_create)
    k.add_parser("list").set_defaults(func=keys_list)
    kr = k.add_parser("revoke")
    kr.add_argument("key_id")
    kr.set_defaults(func=keys_revoke)
    a = sub.add_parser("audit", help="audit log").add_subparsers(dest="audit_command", required=True)
    av = a.add_parser("verify", help="check the hash chain and its anchors; names the first bad entry")
    av.add_argument("--expect-head", metavar="SEQ:HASH",
                    help="a head exported earlier by `audit head`: the chain must still contain it")
    av.set_defaults(func=audit_verify)
    a.add_parser("head", help="print the last entry as SEQ:HASH, to keep outside this host").set_defaults(
        func=audit_head)
    r = sub.add_parser("requests", help="deletion requests").add_subparsers(dest="req_command", required=True)
    rr = r.add_parser("retry", help="put a failed request back to pending, or (--rebuild) retry the derived "
                                    "models' rebuild now instead of after its backoff")
    rr.add_argument("request_id", nargs="?")
    rr.add_argument("--rebuild", action="store_true", help="retry the verifier's reference models' rebuild now")
    rr.set_defaults(func=requests_retry)
