"""API keys: only a sha256 of each key is stored, found by that digest. A key's id is random: no part
of the secret is stored or shown. Keys are at least 32 characters, so the unsalted digest of one
cannot be reversed by search."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey
from app.db.session import utcnow
from app.errors import InvalidRequest

SCOPES = ("predict", "delete", "audit", "admin")
MIN_KEY_LEN = 32
BOOTSTRAP = "bootstrap"


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


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def create_key(session: Session, *, scopes: list[str], name: str | None = None, key: str | None = None) -> str:
    """Store a key (a new random one unless KEY is given) and return it: the only time it is shown."""
    key = key or "ulk_" + secrets.token_urlsafe(32)
    check_key(key)
    if session.scalar(select(ApiKey.id).where(ApiKey.key_sha256 == _digest(key))) is not None:
        raise InvalidRequest("this key exists already")
    session.add(ApiKey(id=new_key_id(), key_sha256=_digest(key), scopes=" ".join(parse_scopes(scopes)),
                       name=name, created_at=utcnow()))
    session.flush()
    return key


def check_key(key: str) -> None:
    if len(key) < MIN_KEY_LEN:
        raise InvalidRequest(f"an API key needs at least {MIN_KEY_LEN} characters")


def ensure_bootstrap_key(session: Session, *, key: str) -> str:
    """Make KEY the one bootstrap admin key: a new one revokes the previous (rotation), the same one is kept
    (restarts). Returns "kept", "created" or "rotated"."""
    check_key(key)
    digest = _digest(key)
    current = list(session.scalars(select(ApiKey).where(ApiKey.name == BOOTSTRAP, ApiKey.revoked_at.is_(None))))
    if any(hmac.compare_digest(row.key_sha256, digest) for row in current):
        return "kept"
    for row in current:
        row.revoked_at = utcnow()
    create_key(session, scopes=["admin"], name=BOOTSTRAP, key=key)
    return "rotated" if current else "created"


def authenticate(session: Session, *, key: str) -> Principal | None:
    if len(key) < MIN_KEY_LEN:
        return None
    # found by its digest: an index lookup on a value an attacker cannot steer towards a stored key
    row = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == _digest(key)))
    if row is None or row.revoked_at is not None:
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
