"""/ui: the read-only operator page. Server-rendered (Jinja2, autoescaped), no JavaScript, charts as inline SVG.

Access needs the audit scope: the key in the usual headers, or entered once in the login form, which opens a
server-side session (app/db/ui_sessions.py): the cookie (HttpOnly, SameSite=Strict, Secure over https) holds a
random session id, never the key; logging out revokes it. The login and logout forms refuse a foreign Origin,
and no page can be framed. The key never appears in a URL.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.api import svg
from app.api.deps import AppState, authorize
from app.core.config import Settings
from app.core.secrets import subject_key
from app.db import jobs, ui_sessions, views, workers
from app.db.audit import ChainReport, parse_head, verify_chain
from app.db.audit import head as audit_head
from app.db.keys import Principal
from app.db.ledger import subject_digest
from app.db.session import transaction, utcnow
from app.errors import Forbidden, Unauthorized
from app.ml.forgetting.policy import Budget
from app.ml.forgetting.record import ForgettingRecord
from app.service.schedule import exact_by
from app.service.versions import accuracy_budget

router = APIRouter(include_in_schema=False)
# The last /ui/verify of this API process: the page shows it without reading the whole log on every load.
LAST_VERIFY: dict[str, Any] = {}
COOKIE = "unlearnd_ui_session"
# X-Frame-Options is on every response (app/api/guard.py); frame-ancestors says the same to newer browsers
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'")
PAGE = 50  # audit rows and requests per page
ENV = Environment(loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
                  autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def _pct(v: object) -> str:
    return f"{100 * float(v):.2f}%" if isinstance(v, int | float) else "—"  # type: ignore[arg-type]


def _when(v: object) -> str:
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime) else "—"


ENV.filters.update(pct=_pct, when=_when)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _render(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    return HTMLResponse(ENV.get_template(name).render(**ctx), status_code=status,
                        headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP})


def _login(status: int, message: str | None) -> HTMLResponse:
    return _render("login.html", status, message=message)


def _principal(request: Request) -> Principal | HTMLResponse:
    state: AppState = request.app.state.unlearnd
    h = request.headers
    token = request.cookies.get(COOKIE)
    if token and not (h.get("x-api-key") or h.get("authorization")):
        with transaction(state.conn.read) as s:
            p = ui_sessions.principal(s, token=token, now=utcnow())
        if p is None:
            return _login(401, "The session has ended: log in again.")
        return p if p.allows("audit") else _login(403, "This key lacks the audit scope.")
    try:
        p = authorize(state, authorization=h.get("authorization"), x_api_key=h.get("x-api-key"), scopes=("audit",))
    except Unauthorized:
        return _login(401, "Unknown or revoked key." if h.get("x-api-key") or h.get("authorization") else None)
    except Forbidden:
        return _login(403, "This key lacks the audit scope.")
    assert p is not None
    return p


def foreign_origin(request: Request) -> bool:
    """A form posted from another site (CSRF): its Origin is not this service's. Browsers send Origin on every
    cross-origin POST; a missing one is a non-browser client, which carries no ambient cookie to abuse."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    public = request.app.state.unlearnd.settings.public_url
    ours = urlsplit(public) if public else urlsplit(f"{request.url.scheme}://{request.headers.get('host', '')}")
    theirs = urlsplit(origin)
    return (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc)


def _refused() -> HTMLResponse:
    return _login(403, "This form was sent from another site.")


def _bounded(v: int, hi: int = 2**62) -> int:
    return max(0, min(v, hi))  # the ledger's integers are 64-bit


@router.get("/ui", response_class=HTMLResponse)
def ui(request: Request, state: str | None = None, offset: int = 0, batch: int | None = None, roffset: int = 0,
       q: str | None = None, refresh: int | None = None) -> Response:
    who = _principal(request)
    if isinstance(who, HTMLResponse):
        return who
    app: AppState = request.app.state.unlearnd
    state = state if state in views.STATES else None
    batch = batch if batch is not None and 0 < batch < 2**62 else None
    q = (q or "").strip()[:128] or None
    if q and UUID.fullmatch(q.lower()):  # a request id: its own page
        return RedirectResponse(f"/ui/requests/{q.lower()}", status_code=303)
    with transaction(app.conn.read) as s:
        ctx = _page(s, app, state=state, offset=_bounded(offset), batch=batch, roffset=_bounded(roffset), q=q)
    return _render("ui.html", key_id=who.key_id, refresh=_refresh(refresh), **ctx)


def _refresh(seconds: int | None) -> int | None:
    """The page reloads itself (a meta refresh: no JavaScript) every SECONDS, 5 to 3600."""
    return None if seconds is None or seconds <= 0 else max(5, min(seconds, 3600))


@router.get("/ui/requests/{request_id}", response_class=HTMLResponse)
def request_page(request: Request, request_id: str) -> Response:
    who = _principal(request)
    if isinstance(who, HTMLResponse):
        return who
    app: AppState = request.app.state.unlearnd
    with transaction(app.conn.read) as s:
        row = views.request_row(s, request_id=request_id[:64])
        entry = views.audit_entry(s, seq=row.audit_seq) if row and row.audit_seq else None
    if row is None:
        return _render("request.html", 404, key_id=who.key_id, row=None, request_id=request_id[:64])
    how = ForgettingRecord.from_payload(entry["payload"]).summary() if entry else None
    return _render("request.html", key_id=who.key_id, row=_due(row, utcnow(), app.settings), entry=entry, how=how,
                   payload=json.dumps(entry["payload"], indent=2, sort_keys=True) if entry else None)


EXPORT_FIELDS = ("id", "state", "received_at", "due_at", "completed_at", "exact_at", "derived_pending", "subject_id",
                 "n_samples", "method", "verdict", "audit_seq", "reason")


@router.get("/ui/export/{what}.{fmt}")
def export(request: Request, what: str, fmt: str) -> Response:
    """Every request, or the whole audit log, as CSV or JSON Lines, streamed (a chunk of rows at a time)."""
    who = _principal(request)
    if isinstance(who, HTMLResponse):
        return who
    if what not in ("requests", "audit") or fmt not in ("csv", "json"):
        return _render("login.html", 404, message="Exports: /ui/export/requests.csv|json, /ui/export/audit.csv|json")
    app: AppState = request.app.state.unlearnd
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return StreamingResponse(_export_rows(app, what, fmt), media_type=media, headers={
        "Content-Disposition": f'attachment; filename="unlearnd-{what}.{"csv" if fmt == "csv" else "jsonl"}"',
        "Cache-Control": "no-store"})


def _export_rows(app: AppState, what: str, fmt: str) -> Iterator[str]:
    with transaction(app.conn.read) as s:
        if what == "requests":
            rows: Iterator[dict[str, Any]] = ({k: getattr(r, k) for k in EXPORT_FIELDS} for r in views.all_requests(s))
            fields: tuple[str, ...] = EXPORT_FIELDS
        else:
            rows = (_flat(e) for e in views.all_audit_entries(s))
            fields = ("seq", "created_at", "batch_id", *AUDIT_COLUMNS, "prev_hash", "hash", "payload")
        if fmt == "csv":
            yield _csv_line(fields)
        for row in rows:
            if fmt == "json":
                yield json.dumps(row, default=_iso, sort_keys=True) + "\n"
            else:
                yield _csv_line([json.dumps(v, sort_keys=True) if isinstance(v, dict) else _iso(v) if v is not None
                                 else "" for v in (row[f] for f in fields)])


# the audit CSV's own columns, so a spreadsheet can filter on them; `payload` keeps the whole hashed entry
AUDIT_COLUMNS = ("event", "request_ids", "method", "exact", "verdict", "n_forget", "holdout_acc_before",
                 "holdout_acc_after", "unlearn_time_s", "parent_model_sha256", "model_sha256", "init_sha256", "freeze",
                 "frozen_check", "reason")


def _flat(entry: dict[str, Any]) -> dict[str, Any]:
    p = entry["payload"]
    p = {**{f"holdout_{k}": v for k, v in ((k, p.get(f"test_{k}")) for k in ("acc_before", "acc_after"))
            if v is not None}, **p}  # entries from before the held-out accuracies had their own name
    cols = {c: " ".join(map(str, p[c])) if isinstance(p.get(c), list) else p.get(c) for c in AUDIT_COLUMNS}
    cols["event"] = p.get("event", "unlearn" if "method" in p else None)
    return {**entry, **cols}


def _iso(v: object) -> str:
    return v.astimezone(UTC).isoformat() if isinstance(v, datetime) else str(v)


def _csv_line(values: Sequence[object]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue()


def _due(row: views.RequestRow, now: datetime, settings: Settings) -> dict[str, Any]:
    """The row, with whether it is (or was) late and by how much, for the page. A deletion is met when it is
    exact (no model the service keeps holds the samples), not when its fast update completed."""
    if row.state == "completed" and row.exact_at is not None:
        left = (row.due_at - row.exact_at).total_seconds()
        text = f"exact {_span(-left)} late" if left < 0 else f"exact with {_span(left)} to spare"
    elif row.state == "completed":
        left = (row.due_at - now).total_seconds()
        if row.derived_pending:
            wait = f"the derived models' rebuild due in {_span(left)}"
        else:  # the retrain is scheduled by the worker's rule: sooner than the due date for a partial batch
            by = exact_by(settings, due_at=row.due_at, completed_at=row.completed_at, verdict=row.verdict)
            wait = f"an exact retrain scheduled within {_span(max((by - now).total_seconds(), 0.0))}"
        text = f"approximate: overdue by {_span(-left)}" if left < 0 else f"approximate: {wait}"
        if row.derived_error:
            text += f"; the rebuild keeps failing ({row.derived_error})"
    elif row.state in ("failed", "rejected"):
        left = (row.due_at - (row.completed_at or now)).total_seconds()
        text = f"{row.state}; due in {_span(left)}" if left >= 0 else f"{row.state}; overdue by {_span(-left)}"
    else:
        left = (row.due_at - now).total_seconds()
        text = f"overdue by {_span(-left)}" if left < 0 else f"due in {_span(left)}"
    return {**asdict(row), "overdue": left < 0, "due_text": text}


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _budget(app: AppState, versions: list[Any]) -> Budget | None:
    """The floors the worker holds versions to, when the first version is among those read (or a floor is set)."""
    first = versions[0].metrics.get("holdout_acc") if versions and versions[0].seq == 1 else None
    if app.settings.accuracy_floor is None and not isinstance(first, int | float):
        return None
    return accuracy_budget(app.settings, versions[0].metrics if first is not None else None)


def _samples_text(p: dict[str, Any]) -> str:
    """What an audit row's batch took out: training samples, and the others by split."""
    parts = [f"{p['n_forget']} training"] if p.get("n_forget") else []
    parts += [f"{n} {split}" for split, n in sorted((p.get("erased_by_split") or {}).items())]
    if p.get("n_already_forgotten"):
        parts.append(f"{p['n_already_forgotten']} already forgotten")
    return ", ".join(parts)


ENV.globals.update(samples_text=_samples_text)


def _page(s: Any, app: AppState, *, state: str | None, offset: int, batch: int | None, roffset: int,
          q: str | None) -> dict[str, Any]:
    now = utcnow()
    versions = views.versions(s, limit=200)
    head = versions[-1] if versions else None
    budget = _budget(app, versions)
    floor = budget.floor if budget else None
    subjects = [q, subject_digest(q, subject_key(app.settings))] if q else []
    counts = views.request_counts(s)
    entries = views.audit_entries(s, offset=offset, limit=PAGE)
    chosen = views.audit_entry(s, seq=batch) if batch else next(
        (e for e in entries if e["payload"].get("verification", {}).get("after")), None)
    last = audit_head(s)
    acc = [(float(v.seq), float(v.metrics["holdout_acc"])) for v in versions
           if isinstance(v.metrics.get("holdout_acc"), int | float)]
    return {
        "head": head, "versions": versions[-20:], "floor": floor, "state": state, "q": q,
        "exact_floor": budget.exact_floor if budget else None,
        "stuck": [j for j in jobs.health(s) if j.failures >= app.settings.rebuild_max_failures],
        "dark": [w for w in workers.statuses(s, now=now) if w.dark(app.settings.worker_timeout_s)],
        "retry_now": jobs.RETRY_NOW,
        "counts": counts, "roffset": roffset,
        "rtotal": counts.get(state, 0) if state else sum(counts.values()),
        "requests": [_due(r, now, app.settings) for r in views.requests(s, state=state, limit=PAGE, offset=roffset,
                                                          subjects=subjects)],
        "entries": entries, "total": views.audit_total(s), "offset": offset, "limit": PAGE,
        "audit_head": f"{last[0]}:{last[1]}" if last else "empty",
        "batch": chosen, "last_verify": dict(LAST_VERIFY),
        "acc_chart": svg.line(acc, title="held-out accuracy by version", floor=floor,
                              x_lo=f"v{int(acc[0][0])}" if acc else "", x_hi=f"v{int(acc[-1][0])}" if acc else ""),
        "backlog_chart": _backlog(views.backlog_events(s, limit=2000), now),
        "hist_chart": svg.histogram(((chosen or {}).get("payload", {}).get("verification", {}).get("after") or {})
                                    .get("pvalue_hist") or [], title="p-values of D_f after the update"),
    }


def _backlog(events: list[tuple[datetime, datetime | None]], now: datetime) -> str:
    """Requests received and not yet done, over the span of the newest 2000 requests."""
    if not events:
        return svg.steps([], title="backlog")
    t0 = min(a for a, _ in events)
    deltas = sorted([(a, 1) for a, _ in events] + [(b, -1) for _, b in events if b is not None])
    points, level = [(0.0, 0.0)], 0
    for t, d in deltas:
        level += d
        points.append(((t - t0).total_seconds(), float(level)))
    points.append(((now - t0).total_seconds(), float(level)))
    return svg.steps(points, title="backlog: requests waiting or in progress", x_lo=_when(t0), x_hi=_when(now))


@router.post("/ui/login")
async def login(request: Request) -> Response:
    if foreign_origin(request):
        return _refused()
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=5)
    key = (form.get("key") or [""])[0].strip()
    state: AppState = request.app.state.unlearnd
    try:
        p = authorize(state, authorization=None, x_api_key=key or None, scopes=("audit",))
    except Unauthorized:
        return _login(401, "Unknown or revoked key.")
    except Forbidden:
        return _login(403, "This key lacks the audit scope.")
    assert p is not None
    hours = state.settings.ui_session_hours
    with transaction(state.conn.write) as s:
        token = ui_sessions.open_session(s, api_key_id=p.key_id, now=utcnow(), hours=hours)
    out = RedirectResponse("/ui", status_code=303)
    out.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                   path="/ui", max_age=int(hours * 3600))
    return out


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    if foreign_origin(request):
        return _refused()
    token = request.cookies.get(COOKIE)
    if token:
        state: AppState = request.app.state.unlearnd
        with transaction(state.conn.write) as s:
            ui_sessions.revoke(s, token=token, now=utcnow())
    out = RedirectResponse("/ui", status_code=303)
    out.delete_cookie(COOKIE, path="/ui")
    return out


@router.get("/ui/verify", response_class=HTMLResponse)
def verify(request: Request, expect_head: str | None = None) -> Response:
    who = _principal(request)
    if isinstance(who, HTMLResponse):
        return who
    app: AppState = request.app.state.unlearnd
    try:
        expect = parse_head(expect_head) if expect_head else None
    except ValueError as e:
        return _render("verify.html", 422, report=ChainReport(False, 0, None, str(e)), head="", expect=None,
                       expect_text="", seconds=0.0)
    t0 = time.perf_counter()
    with transaction(app.conn.read) as s:
        report, last = verify_chain(s, expect_head=expect), audit_head(s)
    LAST_VERIFY.update(at=utcnow(), ok=report.ok, entries=report.entries, reason=report.reason,
                       expect=expect_head or None)
    return _render("verify.html", report=report, head=f"{last[0]}:{last[1]}" if last else "empty", expect=expect,
                   expect_text=expect_head or "", seconds=time.perf_counter() - t0)

