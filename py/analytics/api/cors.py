"""CORS for browser producers: preflights on the ingest routes, and which origin may read.

Only a request with an `Origin` header costs anything here: any other passes straight
through (ingest is the hot path). For the routes declared `cors=True` (api/contract.py):

- a preflight (`OPTIONS` with `Origin`) is answered here, before routing and auth (browsers
  send no key with it): 204 with the Access-Control-* headers when the origin is listed by an
  active publishable key (looked up once per origin, worker and 10 s), the method asked for is
  POST and the headers asked for are ones the API takes; else 403 with a code saying which;
- any other response carries `Access-Control-Allow-Origin` only when the origin may read it:
  the request's key (left in the scope by `authenticate`) is publishable and lists it, or, when
  no key was accepted (a 401), some publishable key lists it, so the page can read the error.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from analytics.api.auth import KEY_SCOPE
from analytics.api.dberrors import database_errors
from analytics.api.errors import ApiError, error_response
from analytics.store.keys import KeyInfo

#: What a preflight may ask for.
ALLOW_METHODS = "POST"
ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "content-encoding",
    "x-signature",
    "x-request-id",
)
#: Seconds a browser may reuse a preflight's answer (a removed origin stops passing
#: preflights at most this long after the key cache forgets it).
MAX_AGE_S = 600
#: What a page may read of a response besides the simple headers.
EXPOSE_HEADERS = b"Retry-After, X-Request-ID"


class Cors:
    def __init__(self, app: ASGIApp, paths: Iterable[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        origin = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
                break
        if origin is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await self._preflight(scope, origin, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((b"vary", b"Origin"))
                if await self._may_read(scope, origin):
                    headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                    headers.append((b"access-control-expose-headers", EXPOSE_HEADERS))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _may_read(self, scope: Scope, origin: str) -> bool:
        key: KeyInfo | None = scope.get(KEY_SCOPE)
        if key is not None:
            return key.publishable and origin in key.origins
        try:
            return await _listed(scope, origin)
        except ApiError:  # the database is away: the answer goes out, unreadable by the page
            return False

    async def _preflight(self, scope: Scope, origin: str, send: Send) -> None:
        asked: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in (b"access-control-request-method", b"access-control-request-headers"):
                asked[name] = value.decode("latin-1")
        method = asked.get(b"access-control-request-method", "")
        requested = asked.get(b"access-control-request-headers", "")
        extra = sorted(
            {h.strip().lower() for h in requested.split(",") if h.strip()} - set(ALLOW_HEADERS)
        )
        try:
            if not await _listed(scope, origin):
                raise ApiError.of(
                    "cors_origin_not_allowed",
                    f"no publishable key lists the origin {origin[:200]!r}; create one with"
                    " `analytics keys create --publishable --origin ORIGIN`",
                )
            if method != "POST":
                raise ApiError.of(
                    "cors_method_not_allowed",
                    f"{scope['path']} takes POST from browsers, not {method[:20] or 'nothing'}",
                )
            if extra:
                raise ApiError.of(
                    "cors_header_not_allowed",
                    f"headers not taken: {', '.join(extra)[:200]}; allowed:"
                    f" {', '.join(ALLOW_HEADERS)}",
                )
        except ApiError as e:
            response = error_response(e.status, e.code, e.message, {**e.headers, "Vary": "Origin"})
            await response(scope, _no_body, send)
            return
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ", ".join(ALLOW_HEADERS).encode()),
            (b"access-control-max-age", str(MAX_AGE_S).encode()),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


async def _listed(scope: Scope, origin: str) -> bool:
    """Whether an active publishable key lists `origin` (ApiError 503 while the database is
    unreachable and the answer is not cached)."""
    if len(origin) > 300:
        return False
    with database_errors("origin lookup"):
        return await scope["app"].state.services.origins.get(origin)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
