"""The handlers' typed view of the worker's services."""

from __future__ import annotations

from starlette.requests import Request

from analytics.pipeline.services import Services


def services_of(request: Request) -> Services:
    """The services the lifespan built for this app (`app.state.services`)."""
    return request.app.state.services
