"""RFC 9457 problem+json: every error leaves the API in this one shape, mapped here once."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app.api.schemas import Problem
from app.errors import ForgetSetError, ServiceError, UnknownNameError, UnlearndError

log = logging.getLogger("unlearnd.api")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
TYPE_BASE = "https://unlearnd.dev/problems/"


def is_oip(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def problem(status: int, slug: str, title: str, detail: str, instance: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if is_oip(instance):  # the Open Inference Protocol's own error shape; a bad request is its 400
        return JSONResponse({"error": detail}, status_code=400 if status == 422 else status, headers=headers)
    body = {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail, "instance": instance,
            **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def _service(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return problem(exc.status, exc.slug, exc.title, exc.detail, request.url.path, **exc.extra)


def _core(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ForgetSetError):
        return problem(422, "invalid-request", "The request is not valid", str(exc), request.url.path,
                       bad_ids=exc.bad_ids[:100])
    if isinstance(exc, UnknownNameError):
        return problem(422, "unknown-name", "Unknown name", str(exc), request.url.path, valid=exc.valid)
    log.error("unexpected core error on %s: %s", request.url.path, exc)
    return problem(500, "internal", "Internal error", str(exc), request.url.path)


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem(400, "malformed-json", "The body is not valid JSON", "the request body could not be parsed",
                       request.url.path, errors=errors)
    return problem(422, "invalid-request", "The request is not valid", "the request does not match the schema",
                   request.url.path, errors=errors)


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    out = problem(exc.status_code, slug, str(exc.detail), str(exc.detail), request.url.path)
    out.headers.update(exc.headers or {})
    if exc.status_code == 405:  # RFC 9110 §15.5.6: every method of the path, not only its first route's
        out.headers["Allow"] = ", ".join(allowed_methods(request))
    return out


def allowed_methods(request: Request) -> list[str]:
    out = []
    for method in METHODS:
        scope = {**request.scope, "method": method}
        if any(r.matches(scope)[0] == Match.FULL for r in request.app.router.routes):
            out.append(method)
    return out


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return problem(500, "internal", "Internal error", "an unexpected error occurred", request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service)
    app.add_exception_handler(UnlearndError, _core)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)


PROBLEM = {"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the problem codes an endpoint can answer."""
    words = {400: "Malformed JSON", 401: "Missing or unknown API key", 403: "The key lacks the scope",
             404: "Not found", 409: "Conflict", 410: "The sample was forgotten, or the named version retired",
             413: "The body is larger than UNLEARND_MAX_BODY_BYTES (1 MiB by default)", 415: "The body is not JSON",
             422: "Invalid request", 503: "Not ready"}
    return {c: {"description": words.get(c, "Error"), "model": Problem, **PROBLEM} for c in codes}
