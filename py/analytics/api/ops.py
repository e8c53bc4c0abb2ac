"""Operations endpoints: liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from analytics.api.contract import operation
from analytics.api.errors import error_response, json_response
from analytics.api.state import services_of
from analytics.runtime import prometheus
from analytics.store.pool import ping


@operation("GET", "Liveness: the process and its loop answer", result="Status", tags=["ops"])
async def healthz(request: Request) -> Response:
    """The process is alive and its loop answers."""
    return json_response({"status": "ok"})


#: Above this fraction of its capacity the writer inbox makes the worker unready, so a load
#: balancer sends new traffic elsewhere before requests start getting 503s.
INBOX_HIGH_WATER = 0.8


@operation(
    "GET",
    "Readiness: no loop stall, writer inbox below 80 %, database answering",
    result="Status",
    codes=("loop_stalled", "writer_saturated", "database_unreachable"),
    tags=["ops"],
)
async def readyz(request: Request) -> Response:
    """Ready to take traffic: no loop stall in progress, the writer inbox below its
    high-water mark, and the database answering within a second."""
    svc = services_of(request)
    if svc.watchdog is not None and svc.watchdog.in_stall:
        return error_response(503, "loop_stalled", "the event loop is stalled")
    if svc.writer.saturation > INBOX_HIGH_WATER:
        return error_response(503, "writer_saturated", "the writer inbox is nearly full")
    if not await ping(svc.pool, timeout_s=1.0):
        return error_response(503, "database_unreachable", "the database does not answer")
    return json_response({"status": "ready"})


@operation(
    "GET",
    "Prometheus metrics (all workers)",
    result={"type": "string"},
    result_media="text/plain",
    tags=["ops"],
)
async def scrape(request: Request) -> Response:
    """Prometheus exposition (aggregated over workers in multiprocess mode). Rendering reads
    files (/proc, and the multiprocess files), so it runs under the `scrape` limiter."""
    body, content_type = await services_of(request).offload.run("scrape", prometheus.render)
    return Response(body, media_type=content_type)
