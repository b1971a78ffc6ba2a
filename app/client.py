"""A client for apps: delete and wait, predict, with retries and typed errors (httpx; sync and async).

    from app.client import Client
    with Client("https://unlearnd.example", api_key=KEY) as c:
        r = c.delete(subject_id="alice")          # an Idempotency-Key is made for you, so a retry never duplicates
        r.wait(timeout=600)                       # until completed (until="exact": until no model holds them)
        c.predict(open("cat.png", "rb").read())   # or rows: c.predict([[0.1, ...], ...])

503s and connection errors are retried with exponential back-off (Retry-After honoured); a 4xx never is.
Problem+json answers raise the service's own exceptions (app.errors: NotFound, Gone, RetiredVersion, …);
a service unreachable after the retries raises Unavailable, and a wait that runs out WaitTimedOut.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.errors import ConfigError, ServiceError, Unavailable, WaitTimedOut

RETRY_STATUS = 503
UNTIL = ("completed", "exact")


def _tree(cls: type[ServiceError]) -> list[type[ServiceError]]:
    """CLS's subclasses, parents before their children."""
    return [c for sub in cls.__subclasses__() for c in (sub, *_tree(sub))]


_BY_SLUG = {c.slug: c for c in _tree(ServiceError)}  # every error the service can answer, as app.errors has it
_BY_STATUS: dict[int, type[ServiceError]] = {}
for _cls in _tree(ServiceError):
    _BY_STATUS.setdefault(_cls.status, _cls)  # a status alone: the parent (Gone, not RetiredVersion)


def raise_for_problem(response: httpx.Response) -> None:
    """An error answer as the service's exception: by the problem's slug, else by its status."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    slug = str(body.get("type", "")).rsplit("/", 1)[-1]
    cls = _BY_SLUG.get(slug) or _BY_STATUS.get(response.status_code) or ServiceError
    detail = str(body.get("detail") or body.get("error") or response.text or response.reason_phrase)
    extra = {k: v for k, v in body.items() if k not in ("type", "title", "status", "detail", "instance")}
    exc = cls(detail, **extra)
    if cls is ServiceError:
        exc.status = response.status_code
    raise exc


@dataclass
class Retry:
    tries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        after = response.headers.get("retry-after") if response is not None else None
        if after is not None and after.isdigit():
            return min(float(after), self.max_backoff_s)
        return min(self.backoff_s * 2 ** attempt, self.max_backoff_s)


def _predict_args(data: bytes | Sequence[Sequence[float]] | Any, version: str | None) -> dict[str, Any]:
    """predict()'s input as request arguments: an encoded image, or feature rows (lists or an array)."""
    params = {"params": {"version": version}} if version else {}
    if isinstance(data, bytes | bytearray):
        kind = "image/png" if bytes(data[:8]) == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return {"content": bytes(data), "headers": {"content-type": kind}, **params}
    rows = data.tolist() if hasattr(data, "tolist") else [list(r) for r in data]
    return {"json": {"instances": rows}, **params}


def _delete_args(sample_ids: Sequence[int | str] | None, subject_id: str | None,
                 idempotency_key: str | None) -> dict[str, Any]:
    """delete()'s request arguments; an Idempotency-Key is made when none is given, so a retry never duplicates."""
    body = {"sample_ids": list(sample_ids)} if sample_ids is not None else {"subject_id": subject_id}
    return {"json": body, "headers": {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}}


@dataclass
class _Base:
    url: str
    api_key: str | None = None
    timeout: float = 30.0
    retry: Retry = field(default_factory=Retry)

    def _headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key else {}

    def _after(self, attempt: int, response: httpx.Response | None) -> float | None:
        """None: RESPONSE is the answer (a problem is raised); else the seconds to wait before the next try."""
        if response is not None and response.status_code != RETRY_STATUS:
            raise_for_problem(response)
            return None
        return self.retry.delay(attempt, response) if attempt + 1 < self.retry.tries else 0.0

    def _give_up(self, method: str, path: str, error: Exception | None, response: httpx.Response | None) -> None:
        if response is not None:
            raise_for_problem(response)
        raise Unavailable(f"{method} {path}: the service could not be reached after {self.retry.tries} tries "
                          f"({type(error).__name__}: {error})")


class Deletion:
    """A deletion request's handle: `wait()` polls its status until it is done (or exact)."""

    def __init__(self, client: Client, accepted: dict[str, Any]) -> None:
        self.client, self.id, self.accepted = client, str(accepted["id"]), accepted
        self.status: dict[str, Any] = accepted

    def refresh(self) -> dict[str, Any]:
        self.status = self.client.request(self.id)
        return self.status

    def wait(self, timeout: float = 600.0, *, poll_s: float = 0.5, until: str = "completed") -> dict[str, Any]:
        """The request's status once completed (or failed/rejected), or, UNTIL="exact", once no model the service
        keeps was trained on its samples. Raises WaitTimedOut after TIMEOUT seconds."""
        end = time.monotonic() + timeout
        while True:
            status = self.refresh()
            if _reached(status, until):
                return status
            if time.monotonic() >= end:
                raise WaitTimedOut(f"request {self.id} is {status.get('state')} after {timeout} s", status)
            time.sleep(poll_s)


def _reached(status: dict[str, Any], until: str) -> bool:
    if until not in UNTIL:
        raise ConfigError(f"until must be one of {', '.join(UNTIL)}, not {until!r}")
    if status.get("state") in ("failed", "rejected"):
        return True
    if until == "exact":
        return bool((status.get("forgetting") or {}).get("exact"))
    return status.get("state") == "completed"


class Client(_Base):
    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0, retry: Retry | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url.rstrip("/"), api_key, timeout, retry or Retry())
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One API call, retried on 503 and connection errors; a 4xx or 5xx problem raises its exception."""
        headers = {**self._headers(), **kw.pop("headers", {})}
        error: Exception | None = None
        response: httpx.Response | None = None
        for attempt in range(self.retry.tries):
            try:
                response, error = self._http.request(method, path, headers=headers, **kw), None
            except httpx.TransportError as e:
                response, error = None, e
            wait = self._after(attempt, response)
            if wait is None:
                return response  # type: ignore[return-value]
            time.sleep(wait)
        self._give_up(method, path, error, response)
        raise AssertionError("unreachable")

    def delete(self, *, sample_ids: Sequence[int | str] | None = None, subject_id: str | None = None,
               idempotency_key: str | None = None) -> Deletion:
        r = self.call("POST", "/delete", **_delete_args(sample_ids, subject_id, idempotency_key))
        return Deletion(self, r.json())

    def request(self, request_id: str) -> dict[str, Any]:
        return self.call("GET", f"/requests/{request_id}").json()  # type: ignore[no-any-return]

    def predict(self, data: bytes | Sequence[Sequence[float]] | Any, *, version: str | None = None) -> dict[str, Any]:
        return self.call("POST", "/predict", **_predict_args(data, version)).json()  # type: ignore[no-any-return]


class AsyncDeletion:
    def __init__(self, client: AsyncClient, accepted: dict[str, Any]) -> None:
        self.client, self.id, self.accepted = client, str(accepted["id"]), accepted
        self.status: dict[str, Any] = accepted

    async def refresh(self) -> dict[str, Any]:
        self.status = await self.client.request(self.id)
        return self.status

    async def wait(self, timeout: float = 600.0, *, poll_s: float = 0.5, until: str = "completed") -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            status = await self.refresh()
            if _reached(status, until):
                return status
            if time.monotonic() >= end:
                raise WaitTimedOut(f"request {self.id} is {status.get('state')} after {timeout} s", status)
            await asyncio.sleep(poll_s)


class AsyncClient(_Base):
    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0, retry: Retry | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url.rstrip("/"), api_key, timeout, retry or Retry())
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self._headers(), **kw.pop("headers", {})}
        error: Exception | None = None
        response: httpx.Response | None = None
        for attempt in range(self.retry.tries):
            try:
                response, error = await self._http.request(method, path, headers=headers, **kw), None
            except httpx.TransportError as e:
                response, error = None, e
            wait = self._after(attempt, response)
            if wait is None:
                return response  # type: ignore[return-value]
            await asyncio.sleep(wait)
        self._give_up(method, path, error, response)
        raise AssertionError("unreachable")

    async def delete(self, *, sample_ids: Sequence[int | str] | None = None, subject_id: str | None = None,
                     idempotency_key: str | None = None) -> AsyncDeletion:
        r = await self.call("POST", "/delete", **_delete_args(sample_ids, subject_id, idempotency_key))
        return AsyncDeletion(self, r.json())

    async def request(self, request_id: str) -> dict[str, Any]:
        return (await self.call("GET", f"/requests/{request_id}")).json()  # type: ignore[no-any-return]

    async def predict(self, data: bytes | Sequence[Sequence[float]] | Any, *,
                      version: str | None = None) -> dict[str, Any]:
        return (await self.call("POST", "/predict", **_predict_args(data, version))).json()  # type: ignore[no-any-return]
