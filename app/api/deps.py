"""Dependencies: the app's state, and API-key auth with scopes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request
from redis import Redis

from app.api.keycache import KeyCache
from app.api.metrics import Metrics
from app.api.serving import ModelHolder
from app.core.config import Settings
from app.db.keys import Principal, authenticate
from app.db.session import transaction
from app.errors import Forbidden, Unauthorized
from app.ml.data.dataset import Dataset
from app.service.ledger_conn import LedgerConn
from app.service.ledger_pool import LedgerPool


@dataclass
class AppState:
    settings: Settings
    conn: LedgerConn
    store: Dataset
    holder: ModelHolder
    redis: Redis | None
    metrics: Metrics
    ledger_pool: LedgerPool
    model_name: str = "unlearnd"  # in the OIP v2 routes
    keys: KeyCache = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyCache(self._authenticate)

    def _authenticate(self, key: str) -> Principal | None:
        with transaction(self.conn.read) as s:
            return authenticate(s, key=key)

    def principal(self, key: str) -> Principal | None:
        return self.keys.get(key)


async def get_state(request: Request) -> AppState:  # async: sync dependencies cost a thread hop
    return request.app.state.unlearnd  # type: ignore[no-any-return]


State = Annotated[AppState, Depends(get_state)]


def api_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def authorize(state: AppState, *, authorization: str | None, x_api_key: str | None, scopes: tuple[str, ...],
              open_if_predict_open: bool = False) -> Principal | None:
    """The key's principal if it holds any of SCOPES (admin holds all); raises 401 / 403."""
    key = api_key(authorization, x_api_key)
    if key is None:
        if open_if_predict_open and state.settings.predict_open:
            return None
        raise Unauthorized("send an API key as `Authorization: Bearer <key>` or `X-API-Key`")
    p = state.principal(key)
    if p is None:
        raise Unauthorized("unknown or revoked API key")
    if not any(p.allows(s) for s in scopes):
        raise Forbidden(f"this endpoint needs one of the scopes: {', '.join(scopes)}")
    return p


def require(*scopes: str, open_if_predict_open: bool = False) -> Callable[..., Principal | None]:
    """A dependency that admits a key holding any of SCOPES."""

    async def dep(state: State, authorization: Annotated[str | None, Header()] = None,
                  x_api_key: Annotated[str | None, Header()] = None) -> Principal | None:
        return authorize(state, authorization=authorization, x_api_key=x_api_key, scopes=scopes,
                         open_if_predict_open=open_if_predict_open)

    return dep
