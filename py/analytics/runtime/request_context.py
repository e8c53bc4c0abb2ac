"""Which request the event loop is serving, readable from another thread (the watchdog's).

Loop-agnostic: plain dict operations keyed by frames, no event loop, no lock.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any


class RequestContext:
    """Which request the loop is serving, readable from the watchdog thread.

    Many requests interleave on one loop, so a single "current request" slot names the wrong
    one whenever a request blocks after an `await`. Instead each request ties its fields to
    its own coroutine frame, and the watchdog looks for such frames on the blocked stack:

        request_context.enter(request_id=rid, route=route, scenario=scenario)
        try:
            await app(scope, receive, send)
        finally:
            request_context.exit()  # from the same function as `enter`

    or `with request_context.bind(...):`. Do it in the task that runs the handler (a pure
    ASGI middleware); Starlette's `BaseHTTPMiddleware` runs the app in another task, whose
    stack does not include the middleware's frame. `enter`/`exit` are plain dict operations
    on the loop thread; the lookup (`__call__`, in the watchdog thread) only reads the dict,
    so an instance is the `context` callable a `LoopWatchdog` takes.
    """

    def __init__(self) -> None:
        self._by_frame: dict[int, dict[str, Any]] = {}

    def enter(self, **fields: Any) -> None:
        # Keyed by the caller's frame: a live frame's id is unique, and `exit` pops it.
        self._by_frame[id(sys._getframe(1))] = fields

    def exit(self) -> None:
        self._by_frame.pop(id(sys._getframe(1)), None)

    @contextlib.contextmanager
    def bind(self, **fields: Any) -> Iterator[None]:
        key = id(sys._getframe(2))  # the frame running the `with` (1 is contextmanager's)
        self._by_frame[key] = fields
        try:
            yield
        finally:
            self._by_frame.pop(key, None)

    def __call__(self, frame: FrameType) -> dict[str, Any]:
        """The fields tied to the innermost such frame in `frame`'s chain, or `{}`."""
        f: FrameType | None = frame
        while f is not None:
            fields = self._by_frame.get(id(f))
            if fields is not None:
                return dict(fields)
            f = f.f_back
        return {}
