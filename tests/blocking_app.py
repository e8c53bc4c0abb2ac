"""`analytics serve` whose app has one extra route that blocks the event loop on purpose, for
the watchdog's end-to-end test: `python -m blocking_app serve ...` (tests/ on the path).

Everything else is the real thing: the CLI, the supervisor, Hypercorn's worker of the chosen
class, the app with its lifespan and watchdog; only the application path is this module's.
"""

from __future__ import annotations

import sys
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from analytics import cli, serve
from analytics.app import app_from_env

#: How long the route blocks the loop (the watchdog's threshold is 0.05 s).
BLOCK_S = 0.4


async def block(request: Request) -> PlainTextResponse:
    time.sleep(BLOCK_S)  # noqa: ASYNC251 -- the blocking line the watchdog must name
    return PlainTextResponse("blocked")


def app():
    """The Hypercorn entry point (`blocking_app:app()`): the service plus `GET /test/block`."""
    application = app_from_env()
    application.router.routes.insert(0, Route("/test/block", block, methods=["GET"]))
    return application


def _config(settings, worker_class):
    config = _hypercorn_config(settings, worker_class)
    config.application_path = "blocking_app:app()"
    return config


_hypercorn_config = serve.hypercorn_config

if __name__ == "__main__":
    serve.hypercorn_config = _config
    sys.exit(cli.main(sys.argv[1:]))
