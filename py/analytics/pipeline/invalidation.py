"""A query cache that never serves a count older than the read, across worker processes.

Commits announce what they touched with `NOTIFY analytics_invalidate` (sent in the writer's
transaction, so delivered only if it commits, and in commit order). Every worker listens
(`store.notify.listen`) and drops the cached results those commits could have changed.

Notifications arrive asynchronously, so before a read trusts the cache it runs a *barrier*:
it sends a `ping` notification of its own and waits until its listener has seen it. Anything
committed before the read began was delivered before the ping, so by then its invalidation
has been applied. If the listener is down or slow, the barrier fails and the read bypasses
the cache; while the listener is away the cache is emptied (it may have missed notices).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable

import anyio

from analytics.runtime.querycache import QueryCache
from analytics.store.notify import INVALIDATE

log = logging.getLogger(__name__)


class Invalidator:
    """The LISTEN side: applies invalidations to `cache`, and runs read barriers. The worker's
    listener (app.py, `store.notify.listen`) calls `on_notification`, `on_up` and `on_down`."""

    def __init__(self, cache: QueryCache, notify: Callable[[str, str], Awaitable[object]]) -> None:
        self._notify = notify
        self.cache = cache
        self._pings: dict[str, anyio.Event] = {}
        self._listening = False

    def on_notification(self, payload: str) -> None:
        """An `INVALIDATE` notification (the listener calls it on the loop)."""
        if payload.startswith("ping:"):
            event = self._pings.get(payload)
            if event is not None:
                event.set()
            return
        try:
            customer_id, name, start_us, end_us = json.loads(payload)
        except (ValueError, TypeError):
            log.warning("ignoring malformed invalidation %r", payload)
            return
        self.cache.invalidate(customer_id, name, start_us, end_us)

    def on_up(self) -> None:
        """The listener's LISTEN is in place."""
        self._listening = True

    def on_down(self) -> None:
        """The listener is deaf (lost or closed)."""
        self._listening = False
        # Invalidations may be missed while deaf: start over once listening again.
        self.cache.clear()

    async def barrier(self, timeout_s: float = 1.0) -> bool:
        """True once every invalidation committed before this call has been applied."""
        if not self._listening:
            return False
        token = f"ping:{uuid.uuid4().hex}"
        event = self._pings[token] = anyio.Event()
        try:
            with anyio.move_on_after(timeout_s):
                await self._notify(INVALIDATE, token)
                await event.wait()
                return True
            return False
        finally:
            del self._pings[token]
