"""The API's outer guard, a pure ASGI middleware, before any route reads a body:

- a request with a body to an endpoint that needs a key is refused (401) unless it carries a valid one:
  an anonymous client cannot make the API read and buffer its upload;
- a body larger than `max_body_bytes` is refused (413): on its Content-Length before reading, and, for a
  streamed body, as soon as the bytes read pass the limit;
- every response says it must not be framed or sniffed.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import AppState, api_key
from app.api.problems import is_oip, problem

WITH_BODY = {"POST", "PUT", "PATCH"}
OPEN_PATHS = {"/ui/login", "/ui/logout"}  # the login form carries its key in the body; logout needs none
FORM_LIMIT = 16 * 1024  # what a login form could ever need
SECURITY_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff")]


class TooLarge(Exception):
    pass


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v).decode("latin-1")
    return None


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = [False]

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        if scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send_secured)
            return
        state: AppState = scope["app"].state.unlearnd
        path = scope["path"]
        refusal = await self._refuse(state, scope, path)
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        limit = min(state.settings.max_body_bytes, FORM_LIMIT) if path.startswith("/ui/") else \
            state.settings.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(path, limit)(scope, receive, send_secured)
            return
        seen = [0]

        async def counted() -> Message:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise TooLarge
            return message

        try:
            await self.app(scope, counted, send_secured)
        except TooLarge:
            if started[0]:
                raise
            await _too_large(path, limit)(scope, receive, send_secured)

    async def _refuse(self, state: AppState, scope: Scope, path: str) -> Response | None:
        if path in OPEN_PATHS or (state.settings.predict_open and (path == "/predict" or
                                                                  (is_oip(path) and path.endswith("/infer")))):
            return None
        key = api_key(_header(scope, b"authorization"), _header(scope, b"x-api-key"))
        if key is None:
            return problem(401, "unauthorized", "A valid API key is required",
                           "send an API key as `Authorization: Bearer <key>` or `X-API-Key`", path)
        if await run_in_threadpool(state.principal, key) is None:
            return problem(401, "unauthorized", "A valid API key is required", "unknown or revoked API key", path)
        return None  # a key without the endpoint's scope is the route's to refuse (403)


def _too_large(path: str, limit: int) -> Response:
    return problem(413, "payload-too-large", "The body is too large", f"request bodies are limited to {limit} bytes",
                   path, max_body_bytes=limit)
