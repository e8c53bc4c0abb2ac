"""The bare stack: Starlette routes on the service's Hypercorn that read the body and
answer a constant, the ceiling of a request (`--modes bare` of the load harness).

It serves the routes the k6 script and the harness touch: `POST /v1/events` and
`POST /v1/batch` read the whole body and answer `{"accepted": 1, ...}` (a constant, not a
count: the harness counts what it answered instead), `GET /v1/metrics` answers an empty
series, `GET /healthz` and `/readyz` answer 200. Nothing else: no `/metrics` and no
`/debug/stalls` (there is no loop watchdog to report), so the harness shows no loop figures
for it rather than faked ones. No middleware, no lifespan work.
"""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ACCEPTED = orjson.dumps({"accepted": 1, "duplicates": 0, "rejected": []})
NO_SERIES = orjson.dumps({"series": []})


async def ingest(request: Request) -> Response:
    await request.body()
    return Response(ACCEPTED, media_type="application/json")


async def metrics_query(request: Request) -> Response:
    return Response(NO_SERIES, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b"ok", media_type="text/plain")


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/events", ingest, methods=["POST"]),
            Route("/v1/batch", ingest, methods=["POST"]),
            Route("/v1/metrics", metrics_query, methods=["GET"]),
            Route("/healthz", ready, methods=["GET"]),
            Route("/readyz", ready, methods=["GET"]),
        ]
    )
