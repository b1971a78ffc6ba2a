"""API keys: only a sha256 of each key is stored; lookups compare digests in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey
from app.db.session import utcnow
from app.ml.errors import InvalidRequest

SCOPES = ("predict", "delete", "audit", "admin")
PREFIX_LEN = 12


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str | list[str]) -> list[str]:
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    bad = [s for s in items if s not in SCOPES]
    if bad or not items:
        raise InvalidRequest(f"scopes must be some of {', '.join(SCOPES)}; got {items}")
    return sorted(set(items))


def create_key(session: Session, *, scopes: list[str], name: str | None = None, key: str | None = None) -> str:
    """Store a key (a new random one unless KEY is given) and return it: the only time it is shown."""
    key = key or "ulk_" + secrets.token_urlsafe(32)
    if len(key) < 16:
        raise InvalidRequest("an API key needs at least 16 characters")
    session.add(ApiKey(id=key[:PREFIX_LEN], key_sha256=_digest(key), scopes=" ".join(parse_scopes(scopes)),
                       name=name, created_at=utcnow()))
    session.flush()
    return key


def ensure_key(session: Session, *, key: str, scopes: list[str], name: str) -> None:
    """Insert KEY unless a key with its prefix exists (bootstrap keys survive restarts)."""
    if session.get(ApiKey, key[:PREFIX_LEN]) is None:
        create_key(session, scopes=scopes, name=name, key=key)


def authenticate(session: Session, *, key: str) -> Principal | None:
    row = session.get(ApiKey, key[:PREFIX_LEN]) if len(key) >= 16 else None
    # compare against a dummy digest when no row exists, so a miss costs the same as a mismatch
    stored = row.key_sha256 if row is not None else "0" * 64
    ok = hmac.compare_digest(_digest(key), stored)
    if row is None or not ok or row.revoked_at is not None:
        return None
    return Principal(key_id=row.id, scopes=frozenset(row.scopes.split()))


def revoke_key(session: Session, *, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None:
        return False
    row.revoked_at = utcnow()
    return True


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))
