"""Errors as JSON with a stable machine-readable `code`: `{"code": ..., "message": ...}`.

The codes and statuses of normalization and signature errors are the Rust crate's registry
(`analytics.normalize.ERROR_CODES`); a raised `NormalizeError`/`SignatureError` carries its
`.status`, so nothing here maps them again.
"""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from analytics.normalize import ERROR_STATUS
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
        """An error whose code is in the normalizer's registry, with the status declared there."""
        return cls(ERROR_STATUS[code], code, message, headers)


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
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


EXCEPTION_HANDLERS = {ApiError: api_error, HTTPException: http_error, Exception: internal_error}
