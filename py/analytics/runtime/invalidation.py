"""A query cache that never serves a count older than the read, across worker processes.

Commits announce what they touched with `NOTIFY analytics_invalidate` (sent in the writer's
transaction, so delivered only if it commits, and in commit order). Every worker LISTENs on
its own direct connection (a pooled connection runs `UNLISTEN *` on release, and
transaction-mode poolers cannot LISTEN at all) and drops the cached results those commits
could have changed.

Notifications arrive asynchronously, so before a read trusts the cache it runs a *barrier*:
it sends a `ping` notification of its own and waits until its listener has seen it. Anything
committed before the read began was delivered before the ping, so by then its invalidation
has been applied. If the listener is down or slow, the barrier fails and the read bypasses
the cache.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import anyio
import asyncpg
from anyio.abc import TaskStatus

log = logging.getLogger(__name__)

CHANNEL = "analytics_invalidate"


@dataclass
class _Entry:
    customer_id: int
    name: str
    start_us: int
    end_us: int
    body: bytes


class QueryCache:
    """An LRU of rendered query results, each tagged with the range of event time it covers."""

    def __init__(self, size: int = 2048) -> None:
        self._size = size
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._generation: dict[tuple[int, str], int] = {}
        self._epoch = 0
        self.hits = 0
        self.misses = 0

    def generation(self, customer_id: int, name: str) -> tuple[int, int]:
        return self._epoch, self._generation.get((customer_id, name), 0)

    def get(self, key: tuple) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.body

    def put(self, key: tuple, entry: _Entry, generation: tuple[int, int]) -> None:
        """Store unless an invalidation for the same event arrived since `generation`."""
        if self.generation(entry.customer_id, entry.name) != generation:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def invalidate(self, customer_id: int, name: str, start_us: int, end_us: int) -> None:
        ident = (customer_id, name)
        self._generation[ident] = self._generation.get(ident, 0) + 1
        stale = [
            k
            for k, e in self._entries.items()
            if (e.customer_id, e.name) == ident and e.start_us <= end_us and start_us < e.end_us
        ]
        for k in stale:
            del self._entries[k]

    def clear(self) -> None:
        """Forget everything (invalidations may have been missed); racing `put`s are dropped."""
        self._entries.clear()
        self._epoch += 1


def entry(customer_id: int, name: str, start: datetime, end: datetime, body: bytes) -> _Entry:
    return _Entry(customer_id, name, int(start.timestamp() * 1e6), int(end.timestamp() * 1e6), body)


class Invalidator:
    """The LISTEN side: owns a direct connection and applies invalidations to a cache."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        cache: QueryCache,
        notify: Callable[[str], Awaitable[object]],
    ) -> None:
        self._connect = connect
        self._notify = notify
        self.cache = cache
        self._pings: dict[str, anyio.Event] = {}
        self._listening = False

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
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

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting with backoff; started once the first LISTEN
        is in place (or failed: the cache is then bypassed until it works)."""
        started = False
        backoff = 0.1
        while True:
            try:
                conn = await self._connect()
            except (OSError, asyncpg.PostgresError, TimeoutError) as e:
                log.warning("invalidation listener cannot connect: %r", e)
            else:
                closed = anyio.Event()
                conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
                try:
                    await conn.add_listener(CHANNEL, self._on_notification)
                    self._listening = True
                    backoff = 0.1
                    if not started:
                        started = True
                        task_status.started()
                    await closed.wait()
                finally:
                    self._listening = False
                    # Invalidations may be missed while deaf: start over once listening again.
                    self.cache.clear()
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await conn.close()
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def barrier(self, timeout_s: float = 1.0) -> bool:
        """True once every invalidation committed before this call has been applied."""
        if not self._listening:
            return False
        token = f"ping:{uuid.uuid4().hex}"
        event = self._pings[token] = anyio.Event()
        try:
            with anyio.move_on_after(timeout_s):
                await self._notify(token)
                await event.wait()
                return True
            return False
        finally:
            del self._pings[token]
