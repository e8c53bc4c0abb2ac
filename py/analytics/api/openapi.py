"""`GET /openapi.json` (OpenAPI 3.1) generated from the app's routes, and `GET /docs`.

The document is built from the app itself: every `Route` and the `Operation`s its handler
declares (api/contract.py), the schemas with the limits the services use, the error codes of
both registries (api/codes.py) with their statuses, and a preflight (`OPTIONS`) for each
route declared `cors=True`. `undeclared` lists the routes without a declaration: the test
suite requires it to be empty. `/docs` is a self-contained page (api/docs.html, packaged:
no CDN) that renders the document in the browser.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib.resources import files
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from analytics import __version__
from analytics.api.codes import ALL_CODES, API_CODES
from analytics.api.contract import COMMON_CODES, SECURITY_SCHEMES, Operation, declared, operation
from analytics.api.contract import components as schemas
from analytics.normalize import Limits
from analytics.settings import Settings

Schema = dict[str, Any]

_DESCRIPTION = """A real-time event analytics API: producers POST events, dashboards GET
metrics. Errors are JSON `{"code", "message"}`; `code` is stable (see the ErrorCode schema:
`x-codes` gives each code's status and meaning). A route that does not exist answers 404
`not_found` with the list of routes and the nearest one."""


def undeclared(routes: Iterable[BaseRoute]) -> list[str]:
    """`METHOD path` of every route method without an `@operation` declaration."""
    return [
        f"{method} {route.path}"
        for route in routes
        if isinstance(route, Route)
        for method in sorted((route.methods or set()) - {"HEAD"})
        if method not in declared(route.endpoint)
    ]


def cors_paths(routes: Iterable[BaseRoute]) -> list[str]:
    """The paths of routes with an operation declared `cors=True` (api/cors.py serves them)."""
    return [
        route.path
        for route in routes
        if isinstance(route, Route) and any(op.cors for op in declared(route.endpoint).values())
    ]


def _ref(schema: str | Schema) -> Schema:
    return {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema


def _errors(codes: Sequence[str]) -> dict[str, Schema]:
    """One response per status, its `code` limited to the codes this operation answers."""
    by_status: dict[int, list[str]] = {}
    for code in dict.fromkeys([*codes, *COMMON_CODES]):
        by_status.setdefault(ALL_CODES[code], []).append(code)
    return {
        str(status): {
            "description": ", ".join(f"`{c}`" for c in listed),
            "content": {
                "application/json": {
                    "schema": {
                        "allOf": [{"$ref": "#/components/schemas/Error"}],
                        "properties": {"code": {"enum": listed}},
                    }
                }
            },
        }
        for status, listed in sorted(by_status.items())
    }


def _path_id(path: str) -> str:
    """A path as part of an operationId: `/v1/batch` -> `v1_batch`; a trailing slash kept
    apart (`/batch/` -> `batch_slash`), since PostHog's SDKs send to both forms."""
    slash = "_slash" if path.endswith("/") and path != "/" else ""
    return (path.strip("/").replace("/", "_") or "root") + slash


def _operation(op: Operation, method: str, path: str, settings: Settings) -> Schema:
    doc: Schema = {
        "operationId": f"{method.lower()}_{_path_id(path)}",
        "summary": op.summary,
        "tags": list(op.tags),
        "responses": {
            "200": {
                "description": op.summary,
                "content": {op.result_media: {"schema": _ref(op.result)}},
            },
            **_errors(op.codes),
        },
    }
    if op.description:
        doc["description"] = op.description
    parameters = op.parameters(settings) if callable(op.parameters) else op.parameters
    if parameters:
        doc["parameters"] = [
            {
                "name": name,
                "in": "query",
                "description": text,
                "required": required,
                "schema": schema,
            }
            for name, (text, schema, required) in parameters.items()
        ]
    if op.body:
        doc["requestBody"] = {
            "required": True,
            "content": {media: {"schema": _ref(s)} for media, s in op.body.items()},
        }
    if op.security:
        # Each scheme alone, or with a signature (keys created with --signing).
        doc["security"] = [{name: []} for name in op.security]
    return doc


def _preflight(path: str) -> Schema:
    return {
        "operationId": f"preflight_{_path_id(path)}",
        "summary": "CORS preflight (browsers send it by themselves)",
        "description": "Answered for origins listed by an active publishable key"
        " (`keys create --publishable --origin ...`).",
        "tags": ["cors"],
        "parameters": [
            {"name": "Origin", "in": "header", "required": True, "schema": {"type": "string"}},
            {
                "name": "Access-Control-Request-Method",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "enum": ["POST"]},
            },
        ],
        "responses": {
            "204": {"description": "allowed: Access-Control-Allow-* headers"},
            **_errors(
                (
                    "cors_origin_not_allowed",
                    "cors_method_not_allowed",
                    "cors_header_not_allowed",
                    "database_unavailable",
                )
            ),
        },
    }


def build_document(
    routes: Iterable[BaseRoute], settings: Settings, event: Limits, batch: Limits
) -> Schema:
    paths: dict[str, Schema] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        ops = declared(route.endpoint)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if method in ops:
                item = paths.setdefault(route.path, {})
                item[method.lower()] = _operation(ops[method], method, route.path, settings)
        if any(op.cors for op in ops.values()):
            paths.setdefault(route.path, {})["options"] = _preflight(route.path)
    components = schemas(settings, event, batch)
    components["ErrorCode"]["x-codes"] = {
        code: {"status": status, **({"when": API_CODES[code][1]} if code in API_CODES else {})}
        for code, status in sorted(ALL_CODES.items())
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "analytics", "version": __version__, "description": _DESCRIPTION},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


_DOCS_HTML = files("analytics.api").joinpath("docs.html").read_bytes()
_DOCS_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"
)


@operation("GET", "This document (OpenAPI 3.1)", result={"type": "object"}, tags=["meta"])
async def openapi_json(request: Request) -> Response:
    state = request.app.state
    body = getattr(state, "openapi_body", None)
    if body is None:  # built once per worker, from the app's own routes
        svc = state.services
        document = build_document(
            request.app.routes, svc.settings, svc.event_limits, svc.batch_limits
        )
        body = state.openapi_body = orjson.dumps(document)
    return Response(body, media_type="application/json")


@operation(
    "GET",
    "A page that renders /openapi.json",
    result={"type": "string"},
    result_media="text/html",
    tags=["meta"],
)
async def docs(request: Request) -> Response:
    return Response(
        _DOCS_HTML, media_type="text/html", headers={"Content-Security-Policy": _DOCS_POLICY}
    )
