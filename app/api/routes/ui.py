"""/ui: the read-only operator page. Server-rendered (Jinja2, autoescaped), no JavaScript, charts as inline SVG.

Access needs the audit scope: the key in the usual headers, or entered once in the login form, which opens a
server-side session (app/db/ui_sessions.py): the cookie (HttpOnly, SameSite=Strict, Secure over https) holds a
random session id, never the key; logging out revokes it. The login and logout forms refuse a foreign Origin,
and no page can be framed. The key never appears in a URL.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.api import svg
from app.api.deps import AppState, authorize
from app.db import ui_sessions, views
from app.db.audit import ChainReport, parse_head, verify_chain
from app.db.audit import head as audit_head
from app.db.keys import Principal
from app.db.session import transaction, utcnow
from app.errors import Forbidden, Unauthorized

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


@router.get("/ui", response_class=HTMLResponse)
def ui(request: Request, state: str | None = None, offset: int = 0, batch: int | None = None) -> Response:
    who = _principal(request)
    if isinstance(who, HTMLResponse):
        return who
    app: AppState = request.app.state.unlearnd
    state = state if state in views.STATES else None
    offset = max(0, min(offset, 2**62))
    batch = batch if batch is not None and 0 < batch < 2**62 else None  # the ledger's integers are 64-bit
    with transaction(app.conn.read) as s:
        ctx = _page(s, app, state=state, offset=offset, batch=batch)
    return _render("ui.html", key_id=who.key_id, **ctx)


def _due(row: views.RequestRow, now: datetime) -> dict[str, Any]:
    """The row, with whether it is (or was) late and by how much, for the page."""
    done = row.completed_at if row.state in ("completed", "failed", "rejected") else None
    left = (row.due_at - (done or now)).total_seconds()
    late = left < 0
    span = _span(abs(left))
    if done is not None:
        text = f"late by {span}" if late else f"met with {span} to spare"
    else:
        text = f"overdue by {span}" if late else f"due in {span}"
    return {**asdict(row), "overdue": late, "due_text": text}


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _page(s: Any, app: AppState, *, state: str | None, offset: int, batch: int | None) -> dict[str, Any]:
    now = utcnow()
    versions = views.versions(s, limit=200)
    head = versions[-1] if versions else None
    first_acc = versions[0].metrics.get("holdout_acc") if versions and versions[0].seq == 1 else None
    floor = app.settings.accuracy_floor if app.settings.accuracy_floor is not None else (
        first_acc - app.settings.max_accuracy_drop if isinstance(first_acc, int | float) else None)
    entries = views.audit_entries(s, offset=offset, limit=PAGE)
    chosen = views.audit_entry(s, seq=batch) if batch else next(
        (e for e in entries if e["payload"].get("verification", {}).get("after")), None)
    last = audit_head(s)
    acc = [(float(v.seq), float(v.metrics["holdout_acc"])) for v in versions
           if isinstance(v.metrics.get("holdout_acc"), int | float)]
    return {
        "head": head, "versions": versions[-20:], "floor": floor, "state": state,
        "counts": views.request_counts(s),
        "requests": [_due(r, now) for r in views.requests(s, state=state, limit=PAGE)],
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

