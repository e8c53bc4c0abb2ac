"""Errors as JSON with a stable machine-readable `code`: `{"code": ..., "message": ...}`.

The codes and statuses of normalization and signature errors are the Rust crate's registry
(`analytics.normalize.ERROR_CODES`); a raised `NormalizeError`/`SignatureError` carries its
`.status`, so nothing here maps them again. The HTTP layer's own codes are in `api/codes.py`.
A request for a route that does not exist is told which exist (and the nearest one).
"""

from __future__ import annotations

import difflib
import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from analytics.api.codes import ALL_CODES
from analytics.runtime import prometheus

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    @classmethod
    def of(cls, code: str, message: str, headers: dict[str, str] | None = None) -> ApiError:
        """An error whose code is registered (`api/codes.py`: the normalizer's and the HTTP
        layer's), with the status declared there."""
        return cls(ALL_CODES[code], code, message, headers)


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"code": code, "message": message}, status, headers)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    prometheus.rejections.labels(exc.code).inc()
    return error_response(exc.status, exc.code, exc.message, exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code in _HTTP_CODES:
        message = _wrong_endpoint(request, exc.status_code)
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def _wrong_endpoint(request: Request, status: int) -> str:
    """What to send instead: the route's methods (405), or the nearest route and the list (404)."""
    routes = {
        r.path: sorted((r.methods or set()) - {"HEAD"})
        for r in request.app.routes
        if isinstance(r, Route)
    }
    path = request.url.path
    if status == 405 and path in routes:
        return f"{path} takes {' or '.join(routes[path])}, not {request.method}"
    listed = ", ".join(f"{'/'.join(m)} {p}" for p, m in routes.items())
    near = difflib.get_close_matches(path.rstrip("/") or "/", list(routes), n=1, cutoff=0.6)
    hint = f"did you mean {'/'.join(routes[near[0]])} {near[0]}? " if near else ""
    return (
        f"no route {request.method} {path[:200]}; {hint}routes: {listed}"
        " (described at /openapi.json, readable at /docs)"
    )


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


EXCEPTION_HANDLERS = {ApiError: api_error, HTTPException: http_error, Exception: internal_error}
