"""ASGI middleware: request id, scenario, per-section timings, metrics and the access log.

- `X-Request-ID` is taken from the request (when sane) or generated, and echoed back.
- `X-Scenario` (a load-test or client label) goes into the access log as sent (when sane);
  the metric label is one of `SCENARIOS`, "none" or "other", so clients cannot create series.
- Handlers add section timings with `timed(request, "normalize")`; the access line carries
  them with the total, so a slow section is visible by name.
- While the request runs, the watchdog's request context names it, so a loop stall report
  says which request was being served.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from analytics.runtime import prometheus
from analytics.runtime.request_context import RequestContext

access_log = logging.getLogger("analytics.access")

_TOKEN = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")

#: Scenario labels kept in metrics: the load harness's scenarios (benches/harness/plan.py),
#: their freshness probes (`<scenario>_probe`) and its scrapes. Any other value is "other".
_HARNESS = ("ingest_single", "ingest_batch", "mixed", "burst")
SCENARIOS = frozenset({*_HARNESS, *(f"{s}_probe" for s in _HARNESS), "loadtest_scrape"})
#: Method labels kept in metrics; an invented method is "other".
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


#: Request ids are for correlating logs, not secrets: 128 bits from a generator seeded once
#: from the OS, instead of `uuid4()`'s system call for 16 random bytes on every request.
_ids = random.Random(uuid.uuid4().int)


def _new_id() -> str:
    return f"{_ids.getrandbits(128):032x}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


@contextmanager
def timed(request: Request, section: str) -> Iterator[None]:
    """Adds the time spent in the block to the request's `section` timing."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings = request.state.timings
        timings[section] = timings.get(section, 0.0) + time.perf_counter() - started


def scenario_label(scenario: str) -> str:
    """`scenario` if it is one of SCENARIOS (or "none"), else "other": a bounded label."""
    return scenario if scenario in SCENARIOS or scenario == "none" else "other"


def method_label(method: str) -> str:
    """`method` if it is one of METHODS, else "other": a bounded label."""
    return method if method in METHODS else "other"


def route_label(scope: Scope) -> str:
    """The path template of the route the router matched (set in the scope by Starlette's
    router), or "other": a bounded label, whatever paths clients invent."""
    route = scope.get("route")
    return getattr(route, "path", None) or "other"


class Observe:
    def __init__(self, app: ASGIApp, context: RequestContext | None = None) -> None:
        self.app = app
        #: The watchdog's request context: names the request being served in stall reports.
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _TOKEN.match(given) else _new_id()
        scenario = _header(scope, b"x-scenario") or "none"
        if not _TOKEN.match(scenario):
            scenario = "invalid"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["timings"] = timings = {}
        status = 500
        watchdog = self.context

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        started = time.perf_counter()
        prometheus.http_in_flight.inc()
        if watchdog is not None:
            # Routing happens further in: a stall report names the request's path (truncated).
            watchdog.enter(request_id=request_id, route=scope["path"][:200], scenario=scenario)
        try:
            await self.app(scope, receive, send_observed)
        finally:
            if watchdog is not None:
                watchdog.exit()
            total = time.perf_counter() - started
            prometheus.http_in_flight.dec()
            method = scope["method"]
            labels = (route_label(scope), method_label(method))
            prometheus.http_requests.labels(*labels, str(status), scenario_label(scenario)).inc()
            prometheus.http_duration.labels(*labels, scenario_label(scenario)).observe(total)
            access_log.info(
                "access",
                extra={
                    "request_id": request_id,
                    "scenario": scenario,
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "total_ms": round(total * 1000, 3),
                    "timings_ms": {k: round(v * 1000, 3) for k, v in timings.items()},
                },
            )
