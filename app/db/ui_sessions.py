"""Operator page sessions: the cookie holds a random id; the ledger keeps its digest, the key it stands for,
an expiry and a revocation. Logging out revokes the session; revoking the key ends every session of it."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.db.keys import Principal
from app.db.models import ApiKey, UiSession
from app.db.session import as_utc


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, *, api_key_id: str, now: datetime, hours: float) -> str:
    """A new session for API_KEY_ID; returns the token for the cookie (stored only as its digest)."""
    token = secrets.token_urlsafe(32)
    session.add(UiSession(id_sha256=_digest(token), api_key_id=api_key_id, created_at=now,
                          expires_at=now + timedelta(hours=hours)))
    # expired sessions are not kept: they say who looked at the page when, which nobody needs afterwards
    session.execute(delete(UiSession).where(UiSession.expires_at < now - timedelta(days=1)))
    return token


def principal(session: Session, *, token: str, now: datetime) -> Principal | None:
    """The key behind a live session; None if unknown, expired, revoked, or its key is revoked."""
    if not token or len(token) > 128:
        return None
    row = session.get(UiSession, _digest(token))
    if row is None or row.revoked_at is not None or as_utc(row.expires_at) <= now:  # type: ignore[operator]
        return None
    key = session.get(ApiKey, row.api_key_id)
    if key is None or key.revoked_at is not None:
        return None
    return Principal(key_id=key.id, scopes=frozenset(key.scopes.split()))


def revoke(session: Session, *, token: str, now: datetime) -> bool:
    res = session.execute(update(UiSession).where(UiSession.id_sha256 == _digest(token),
                                                  UiSession.revoked_at.is_(None)).values(revoked_at=now))
    return bool(res.rowcount)  # type: ignore[attr-defined]
