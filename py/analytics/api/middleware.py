"""ASGI middleware: a deadline on every request.

A request that runs past `request_timeout_s` is cancelled and, if nothing was sent yet,
answered `504 {"code": "deadline_exceeded"}`. Cancelling an ingest request that is waiting
for its commit does not cancel the commit: its rows may still be stored, and a retry is then
reported as duplicates.
"""

from __future__ import annotations

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Deadline:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        timeout = self.timeout_s
        with anyio.move_on_after(timeout) as scope_:
            await self.app(scope, receive, send_tracked)
        if scope_.cancelled_caught and not started:
            body = orjson.dumps(
                {"code": "deadline_exceeded", "message": f"request took over {timeout}s"}
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 504,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
