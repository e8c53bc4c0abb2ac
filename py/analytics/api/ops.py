"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response

from analytics.api.errors import error_response, json_response


async def healthz(request: Request) -> Response:
    """The process is alive and its loop answers."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready to take traffic: the database answers within a second."""
    rt = request.app.state.runtime
    try:
        with anyio.fail_after(1.0):
            await rt.pool.fetchval("SELECT 1")
    except Exception:
        return error_response(503, "database_unreachable", "the database does not answer")
    return json_response({"status": "ready"})
