"""Keeps this worker's feature flags equal to the `feature_flags` table.

Reloads when `analytics flags set` notifies (`store.notify.FLAGS`), whenever the listener
(re)connects (a notification may have been missed while it was away), and every `refresh_s`
as a safety net.
"""

from __future__ import annotations

import anyio

from analytics.runtime.flags import Flags
from analytics.store import db
from analytics.store.flag_overrides import load_overrides


class FlagSync:
    """The worker's flags, kept equal to the table: `on_notice` and `on_up` are the listener's
    (one per worker, shared with the cache invalidation: store/notify.py), `run` the reloads."""

    def __init__(self, flags: Flags, pool: db.Pool, *, refresh_s: float = 30.0) -> None:
        self.flags = flags
        self.pool = pool
        self.refresh_s = refresh_s
        self._reload = anyio.Event()

    def on_notice(self, _payload: str) -> None:
        """A `FLAGS` notification: reload."""
        self._reload.set()

    async def load(self) -> None:
        """Apply the table's flags now (the listener's `on_up`: it may have missed notices)."""
        self.flags.apply(await load_overrides(self.pool))

    async def run(self) -> None:
        """Until cancelled: reload on every change notice, and every `refresh_s` anyway."""
        while True:
            with anyio.move_on_after(self.refresh_s):
                await self._reload.wait()
            self._reload = anyio.Event()
            await self.load()
